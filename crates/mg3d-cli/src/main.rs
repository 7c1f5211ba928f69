//! `mg3d`: every command, without libtorch; what needs libtorch is handed to `mg3d-torch`
//! (see the library's docs).

fn main() -> std::process::ExitCode {
    mg3d_cli::main(None)
}
