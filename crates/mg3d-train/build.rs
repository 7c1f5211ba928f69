//! Bakes libtorch's directory into the rpath of this package's tests and examples, so they run
//! without LD_LIBRARY_PATH; where libtorch has CUDA, links libtorch_cuda explicitly (the linker's
//! --as-needed would drop it, and CUDA would then report unavailable). In mg3d-cli only the
//! `mg3d-torch` binary gets them: `mg3d` must not load libtorch.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let to = match std::env::var("CARGO_PKG_NAME").as_deref() {
            Ok("mg3d-cli") => "-bin=mg3d-torch",
            _ => "",
        };
        println!("cargo:rustc-link-arg{to}=-Wl,-rpath,{dir}");
        if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg{to}=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
