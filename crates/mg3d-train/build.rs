//! Bakes libtorch's directory into the rpath of this package's tests and examples, so they run
//! without LD_LIBRARY_PATH; where libtorch has CUDA, links libtorch_cuda explicitly (the linker's
//! --as-needed would drop it, and CUDA would then report unavailable).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
