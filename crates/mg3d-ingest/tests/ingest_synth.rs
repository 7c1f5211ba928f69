//! Ingest and preprocess on the synthetic corpus: geometry and HU equal to the truth, every fault
//! rejected with its expected reason, and no identifying header value in any output byte.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, FixedSizeListArray, Float64Array, StringArray};
use mg3d_core::stage::StageRegistry;
use mg3d_core::table::{TableSchema, read_table};

const SALT: &str = "ingest-test-salt";

/// volumes.report_key of a source report id.
fn report_key(name: &str) -> String {
    mg3d_core::ids::pseudonym(SALT, "report", name)
}

fn pipeline(work: &Path) -> String {
    format!(
        r#"[pipeline]
name = "t"
work_dir = "{}"
salt = "{SALT}"
seed = 9
[stages.synth]
kind = "synth"
params = {{ patients = 8, faults = true, body_width_mm = [90.0, 110.0], z_extent_mm = [30.0, 45.0], in_plane_spacing_mm = [0.8, 1.0], second_recon_fraction = 0.3, enhanced_fraction = 0.5 }}
[stages.ingest]
kind = "ingest"
inputs = ["synth"]
params = {{ dicom_roots = ["@synth/dicom"], nifti_roots = ["@synth/nifti"], ctrate_metadata = ["@synth/metadata/train_metadata.csv"], accession_map = "@synth/reports/accession_map.csv" }}
[stages.preprocess]
kind = "preprocess"
inputs = ["ingest"]
params = {{ preset = "demo" }}
"#,
        work.display()
    )
}

fn registry() -> StageRegistry {
    let mut r = StageRegistry::new();
    r.register(Arc::new(mg3d_synth::SynthStage))
        .register(Arc::new(mg3d_ingest::ingest::IngestStage))
        .register(Arc::new(mg3d_ingest::preprocess::PreprocessStage));
    r
}

fn strs(b: &arrow::array::RecordBatch, n: &str) -> StringArray {
    b.column_by_name(n)
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .clone()
}

fn jsonl(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn synthetic_corpus_ingests_to_its_truth() {
    let t = tempfile::tempdir().unwrap();
    let reg = registry();
    let (_p, _) = mg3d_testkit::run_pipeline(&reg, &pipeline(t.path()));
    let synth = t.path().join("synth");
    let ingest = t.path().join("ingest");

    // Geometry and HU: every truth volume that is not a fault is a volumes row with equal affine and HU digest.
    let geo: BTreeMap<String, serde_json::Value> = jsonl(&synth.join("truth/geometry.jsonl"))
        .into_iter()
        .map(|g| (report_key(g["volume_name"].as_str().unwrap()), g))
        .collect();
    let vols = read_table(
        &ingest.join("volumes.parquet"),
        &TableSchema::get("volumes").unwrap(),
    )
    .unwrap();
    let mut matched = 0;
    let mut hu_modes = BTreeSet::new();
    for b in &vols {
        let (keys, hashes, hu) = (
            strs(b, "report_key"),
            strs(b, "content_hash"),
            strs(b, "hu_applied"),
        );
        let aff = b
            .column_by_name("affine_ras")
            .unwrap()
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap()
            .clone();
        for r in 0..b.num_rows() {
            assert!(
                !keys.is_null(r),
                "every synthetic volume is keyed to its report"
            );
            let g = &geo[keys.value(r)];
            assert_eq!(
                hashes.value(r),
                g["hu_blake3"].as_str().unwrap(),
                "{}: HU voxels differ from the truth ({})",
                keys.value(r),
                hu.value(r)
            );
            let a = aff.value(r);
            let a = a.as_any().downcast_ref::<Float64Array>().unwrap();
            for i in 0..12 {
                let want = g["affine_ras"][i / 4][i % 4].as_f64().unwrap();
                assert!(
                    (a.value(i) - want).abs() < 1e-3,
                    "{}: affine[{i}] {} vs {want}",
                    keys.value(r),
                    a.value(i)
                );
            }
            hu_modes.insert(hu.value(r).to_string());
            matched += 1;
        }
    }
    assert!(matched >= 8, "{matched}");
    assert!(
        hu_modes.contains("dicom_rescale") && hu_modes.contains("already_hu"),
        "{hu_modes:?}"
    );

    // Faults: each ingest fault is a reject with the expected reason (found by its keyed path).
    let rej = read_table(
        &ingest.join("rejects.parquet"),
        &TableSchema::get("rejects").unwrap(),
    )
    .unwrap();
    let mut by_ref: BTreeMap<String, String> = BTreeMap::new();
    for b in &rej {
        let (refs, reasons) = (strs(b, "path_ref"), strs(b, "reason"));
        for r in 0..b.num_rows() {
            by_ref.insert(refs.value(r).to_string(), reasons.value(r).to_string());
        }
    }
    let faults = jsonl(&synth.join("truth/faults.jsonl"));
    let mut checked = 0;
    for f in faults.iter().filter(|f| f["stage"] == "ingest") {
        let path = f["path"].as_str().unwrap();
        let expected = f["expected"].as_str().unwrap();
        let (root, rel) = if let Some(r) = path.strip_prefix("dicom/") {
            ("dicom_roots[0]", r)
        } else {
            ("nifti_roots[0]", path.strip_prefix("nifti/").unwrap())
        };
        let key = mg3d_core::ids::pseudonym(SALT, "path", &format!("{root}/{rel}"));
        if expected == "accepted" {
            assert!(!by_ref.contains_key(&key), "{} was rejected", f["fault"]);
            continue;
        }
        assert_eq!(
            by_ref.get(&key).map(|s| s.as_str()),
            Some(expected),
            "fault {} ({path})",
            f["fault"]
        );
        checked += 1;
    }
    assert!(checked >= 10, "{checked}");
    // The mixed-series folder gave two volumes.
    let mixed = faults
        .iter()
        .find(|f| f["fault"] == "mixed_series")
        .unwrap();
    let names: Vec<&str> = mixed["note"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .filter(|w| w.starts_with("train_"))
        .collect();
    for n in names {
        let n = n.trim_end_matches(',');
        assert!(
            vols.iter()
                .any(|b| (0..b.num_rows()).any(|r| strs(b, "report_key").value(r) == report_key(n))),
            "{n} missing"
        );
    }

    // No PHI in any output byte of ingest and preprocess.
    let mut phi: BTreeSet<String> = BTreeSet::new();
    for p in jsonl(&synth.join("truth/patients.jsonl")) {
        if let Some(o) = p["phi"].as_object() {
            for k in [
                "patient_name",
                "patient_id",
                "birth_date",
                "accession",
                "institution",
            ] {
                phi.insert(o[k].as_str().unwrap().to_string());
            }
        }
    }
    assert!(phi.len() > 5);
    for stage in ["ingest", "preprocess"] {
        for rel in mg3d_core::fsutil::list_files(&t.path().join(stage)).unwrap() {
            let path = t.path().join(stage).join(&rel);
            let text = mg3d_testkit::readable_text(&path);
            for w in &phi {
                assert!(
                    !text.windows(w.len()).any(|x| x == w.as_bytes()),
                    "{stage}/{rel} contains {w:?}"
                );
            }
        }
    }

    // Preprocess: every volume, demo shape and spacing, RAS.
    let pre = read_table(
        &t.path().join("preprocess/preprocessed.parquet"),
        &TableSchema::get("preprocessed").unwrap(),
    )
    .unwrap();
    assert_eq!(
        pre.iter().map(|b| b.num_rows()).sum::<usize>(),
        vols.iter().map(|b| b.num_rows()).sum::<usize>()
    );
    let (v, _) = mg3d_volume::nifti_io::read_nifti(
        &t.path()
            .join("preprocess")
            .join(strs(&pre[0], "file").value(0)),
        false,
    )
    .unwrap();
    assert_eq!(v.dims, [96, 96, 48]);
    assert_eq!(v.axcodes(), "RAS");
    assert!((v.spacing()[0] - 1.5).abs() < 1e-4 && (v.spacing()[2] - 2.0).abs() < 1e-4);
}
