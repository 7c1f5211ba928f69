//! Compiles the c10d shim (`src/shim.cpp`) against the libtorch that tch links (torch-sys's
//! `DEP_TCH_LIBTORCH_LIB`) and Debian's gloo headers (`libgloo-dev`: the wheel omits them), links
//! libtorch_cpu and c10, and bakes libtorch's directory into the rpath of this package's tests.
fn main() {
    println!("cargo:rerun-if-changed=src/shim.cpp");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys gives libtorch's lib directory (DEP_TCH_LIBTORCH_LIB)");
    let root = std::path::Path::new(&lib)
        .parent()
        .expect("libtorch's lib directory has a parent")
        .to_path_buf();
    if !std::path::Path::new("/usr/include/gloo/algorithm.h").exists() {
        panic!(
            "the gloo headers are missing: install Debian's libgloo-dev (`make setup` does), \
             which the c10d headers of the torch wheel include"
        );
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .define("USE_C10D_GLOO", None)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .file("src/shim.cpp")
        .compile("mg3d_dist_shim");
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
}
