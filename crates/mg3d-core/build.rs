//! Embeds every `schemas/*.json` of the workspace into the core crate, so the binary carries the
//! table contracts and a new schema file needs no code change.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = manifest.join("../../schemas");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|s| s.to_str()) == Some("json") {
                println!("cargo:rerun-if-changed={}", p.display());
                let stem = p.file_stem().unwrap().to_string_lossy().to_string();
                names.push((stem, p.canonicalize().unwrap()));
            }
        }
    }
    names.sort();
    let mut out = String::from(
        "/// (table name, schema JSON) for every file in `schemas/`.\npub static EMBEDDED: &[(&str, &str)] = &[\n",
    );
    for (n, p) in &names {
        out.push_str(&format!(
            "    ({n:?}, include_str!({:?})),\n",
            p.display().to_string()
        ));
    }
    out.push_str("];\n");
    fs::write(
        PathBuf::from(env::var("OUT_DIR").unwrap()).join("schemas.rs"),
        out,
    )
    .unwrap();
}
