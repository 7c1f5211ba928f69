//! `inspect` on files nobody here wrote: pydicom's bundled DICOM test files and nibabel's bundled
//! NIfTI test data (installed into .venv by `make setup`), compared with pydicom+numpy / nibabel
//! reference values computed by scripts/reference_inspect.py in the same run. Files we cannot decode
//! must come back as rejects with a reason, never as a panic. Skipped (with a message) without the
//! Python environment unless MG3D_REQUIRE_PYTHON=1.

use std::path::{Path, PathBuf};
use std::process::Command;

use mg3d_testkit::repo_root as root;
use serde_json::Value;

fn python() -> Option<PathBuf> {
    mg3d_testkit::python_with(&["pydicom", "nibabel", "numpy"])
}

fn data_dirs(py: &Path) -> (PathBuf, PathBuf) {
    let out = Command::new(py)
        .args(["-c", "import os, pydicom, nibabel; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files')); print(os.path.join(os.path.dirname(nibabel.__file__), 'tests', 'data'))"])
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    let mut l = s.lines();
    (
        PathBuf::from(l.next().unwrap()),
        PathBuf::from(l.next().unwrap()),
    )
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

/// Files that must decode and match the reference (several transfer syntaxes, CT and MR).
const REQUIRED: [&str; 13] = [
    "CT_small.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_16.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "image_dfl.dcm",
    "MR_small_padded.dcm",
    "anatomical.nii",
    "example4d.nii.gz",
    "standard.nii.gz",
];

#[test]
fn inspect_matches_pydicom_and_nibabel_on_their_own_test_files() {
    let Some(py) = python() else { return };
    let (dcm_dir, nii_dir) = data_dirs(&py);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dcm_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.extend(
        std::fs::read_dir(&nii_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".nii")),
    );
    files.sort();
    let out = Command::new(&py)
        .arg(root().join("scripts/reference_inspect.py"))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let (mut compared, mut ours_only, mut rejected) = (vec![], vec![], vec![]);
    let mut mismatches = vec![];
    for (f, r) in files.iter().zip(&refs) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let ours = mg3d_volume::inspect::inspect(f);
        match (&ours, r["ok"].as_bool().unwrap()) {
            (Ok(o), true) => {
                let mut bad = vec![];
                if o["shape"] != r["shape"] {
                    bad.push(format!("shape {} vs {}", o["shape"], r["shape"]));
                }
                if r["single_frame_geometry"].as_bool().unwrap() {
                    for i in 0..3 {
                        for j in 0..4 {
                            let (a, b) = (
                                o["affine"][i][j].as_f64().unwrap(),
                                r["affine"][i][j].as_f64().unwrap(),
                            );
                            if (a - b).abs() > 1e-4 {
                                bad.push(format!("affine[{i}][{j}] {a} vs {b}"));
                            }
                        }
                    }
                }
                for k in ["min", "max", "mean", "sum"] {
                    let (a, b) = (
                        o["values"][k].as_f64().unwrap(),
                        r["values"][k].as_f64().unwrap(),
                    );
                    if !close(a, b, 1e-3) {
                        bad.push(format!("{k} {a} vs {b}"));
                    }
                }
                if bad.is_empty() {
                    compared.push(name);
                } else {
                    mismatches.push(format!("{name}: {}", bad.join("; ")));
                }
            }
            (Ok(_), false) => ours_only.push(name),
            (Err(rej), _) => {
                assert!(
                    !rej.code.is_empty() && rej.code != "internal_error",
                    "{name}: {rej}"
                );
                rejected.push(format!("{name}: {}", rej.code));
            }
        }
    }
    eprintln!(
        "matched {}: {:?}\nread only by us {}: {:?}\nrejected {}: {:?}",
        compared.len(),
        compared,
        ours_only.len(),
        ours_only,
        rejected.len(),
        rejected
    );
    assert!(
        mismatches.is_empty(),
        "values differ from the reference:\n{}",
        mismatches.join("\n")
    );
    for req in REQUIRED {
        assert!(
            compared.iter().any(|c| c == req),
            "{req} must decode and match (rejected: {rejected:?})"
        );
    }
    assert!(compared.len() >= 20, "{}", compared.len());
}
