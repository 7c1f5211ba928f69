//! `inspect` on files nobody here wrote: pydicom's bundled DICOM test files, the larger set of the
//! pydicom-data package, deid-data's CT, MR, ultrasound and animal images, and nibabel's bundled
//! NIfTI and DICOM test data (installed into .venv by `make setup`), compared with pydicom+numpy / nibabel
//! reference values computed by scripts/reference_inspect.py in the same run. Files we cannot decode
//! must come back as rejects with a reason, never as a panic. Skipped (with a message) without the
//! Python environment unless MG3D_REQUIRE_PYTHON=1.

use std::path::{Path, PathBuf};
use std::process::Command;

use mg3d_testkit::repo_root as root;
use serde_json::Value;

fn python() -> Option<PathBuf> {
    mg3d_testkit::python_with(&["pydicom", "nibabel", "numpy", "data_store", "deid_data"])
}

/// The folders of DICOM and NIfTI files the packages ship: pydicom's test files and character-set
/// files, pydicom-data's files, deid-data's images, nibabel's test data and its DICOM (nicom)
/// test data.
fn data_dirs(py: &Path) -> Vec<PathBuf> {
    let out = Command::new(py)
        .args(["-c", "import os, pydicom, nibabel as n, data_store, deid_data; d = os.path.dirname; p = d(pydicom.__file__); b = d(n.__file__); print(os.path.join(p, 'data', 'test_files')); print(os.path.join(p, 'data', 'charset_files')); print(os.path.join(d(data_store.__file__), 'data')); print(os.path.join(d(deid_data.__file__), 'data')); print(os.path.join(b, 'tests', 'data')); print(os.path.join(b, 'nicom', 'tests', 'data'))"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

/// Files that must decode and match the reference (several transfer syntaxes, CT and MR).
const REQUIRED: [&str; 21] = [
    "rtdose_rle.dcm",
    "rtdose_rle_1frame.dcm",
    "MR2_UNCR.dcm",
    "MR2_J2KR.dcm",
    "liver.dcm",
    "explicit_VR-UN.dcm",
    "emri_small_big_endian.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
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
    let mut files: Vec<PathBuf> = data_dirs(&py)
        .iter()
        .flat_map(|d| mg3d_testkit::all_files(d))
        .filter(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".dcm") || n.ends_with(".nii") || n.ends_with(".nii.gz")
        })
        .collect();
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
    // Read by pydicom/nibabel but rejected here: the differences the notes list with reasons.
    let mut read_only_by_reference = vec![];
    for (f, r) in files.iter().zip(&refs) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let ours = mg3d_ingest::inspect::inspect(f);
        match (&ours, r["ok"].as_bool().unwrap()) {
            (Ok(o), true) => {
                let mut bad = vec![];
                if o["shape"] != r["shape"] {
                    bad.push(format!("shape {} vs {}", o["shape"], r["shape"]));
                }
                // Every dimension of a NIfTI (a 4D file is not reported as 3D).
                if r.get("dims").is_some() && o["dims"] != r["dims"] {
                    bad.push(format!("dims {} vs {}", o["dims"], r["dims"]));
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
                if r["ok"].as_bool().unwrap() {
                    read_only_by_reference.push(format!("{name}: {}", rej.message));
                }
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
    eprintln!(
        "read by the reference, rejected here {}:\n{}",
        read_only_by_reference.len(),
        read_only_by_reference.join("\n")
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
    assert!(compared.len() >= 80, "{}", compared.len());
}

/// The same real files as an archive: one ingest run over the packages' folders (DICOM roots, and
/// nibabel's test data as a NIfTI root) accounts for every file exactly once, as part of a volume
/// or in a reject row, and never fails the stage.
#[test]
fn ingest_accounts_for_every_real_file_once() {
    use arrow::array::AsArray;
    use mg3d_core::table::{TableSchema, read_table};
    let Some(py) = python() else { return };
    let dirs = data_dirs(&py);
    let nifti = &dirs[4];
    let dicom: Vec<&PathBuf> = dirs.iter().filter(|d| *d != nifti).collect();
    let quoted = |ds: &[&PathBuf]| {
        ds.iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let t = tempfile::tempdir().unwrap();
    let toml = format!(
        "[pipeline]\nname = \"real\"\nwork_dir = {:?}\nsalt = \"real-files-salt-0123456789\"\n\
         [stages.ingest]\nkind = \"ingest\"\n\
         params = {{ dicom_roots = [{}], nifti_roots = [{}], modalities = [] }}\n",
        t.path().display().to_string(),
        quoted(&dicom),
        quoted(&[nifti])
    );
    let mut reg = mg3d_core::StageRegistry::new();
    reg.register(std::sync::Arc::new(mg3d_ingest::ingest::IngestStage));
    let (_, report) = mg3d_testkit::run_pipeline(&reg, &toml);
    let files: usize = dirs.iter().map(|d| mg3d_testkit::all_files(d).len()).sum();
    let n_files = |table: &str| -> i64 {
        let path = t.path().join(format!("ingest/{table}.parquet"));
        read_table(&path, &TableSchema::get(table).unwrap())
            .unwrap()
            .iter()
            .map(|b| {
                let c = b.column_by_name("n_files").unwrap();
                let c = c.as_primitive::<arrow::datatypes::Int32Type>();
                (0..c.len()).map(|i| c.value(i) as i64).sum::<i64>()
            })
            .sum()
    };
    let (in_volumes, in_rejects) = (n_files("volumes"), n_files("rejects"));
    eprintln!(
        "{files} real files: {in_volumes} in volumes, {in_rejects} in rejects; {}",
        report.stages[0].summary
    );
    assert_eq!(in_volumes + in_rejects, files as i64);
    assert!(in_volumes > 0);
}
