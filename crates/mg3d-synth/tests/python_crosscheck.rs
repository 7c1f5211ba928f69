//! The synthetic files are standard: pydicom and nibabel (installed by `make setup`) read them
//! with the written geometry and HU values. Skipped, with a message, when the project's Python
//! environment is missing, unless MG3D_REQUIRE_PYTHON=1 (set by `make test`).

use std::path::PathBuf;
use std::process::Command;

use mg3d_synth::report::{DEFAULT_TEMPLATES, Templates};
use mg3d_synth::{SynthConfig, generate};

fn python() -> Option<PathBuf> {
    mg3d_testkit::python_with(&["pydicom", "nibabel", "numpy"])
}

#[test]
fn pydicom_and_nibabel_agree_with_the_truth() {
    let Some(py) = python() else { return };
    let d = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        patients: 10,
        seed: 17,
        body_width_mm: [100.0, 120.0],
        z_extent_mm: [40.0, 60.0],
        in_plane_spacing_mm: [0.8, 1.0],
        second_recon_fraction: 0.3,
        enhanced_fraction: 0.5,
        ..Default::default()
    };
    generate(
        &cfg,
        &Templates::parse(DEFAULT_TEMPLATES).unwrap(),
        d.path(),
    )
    .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_synth.py");
    let out = Command::new(py).arg(script).arg(d.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["checked"]["dicom"].as_u64().unwrap() >= 2, "{v}");
    let geo = std::fs::read_to_string(d.path().join("truth/geometry.jsonl")).unwrap();
    assert!(
        geo.contains("\"instance_order\":\"enhanced\""),
        "an Enhanced CT object was checked too"
    );
    assert!(v["checked"]["nifti"].as_u64().unwrap() >= 2, "{v}");
}
