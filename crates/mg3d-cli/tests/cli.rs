//! End to end through the `mg3d` binary: run, status, reruns, determinism, errors and exit codes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `mg3d` binary in `dir`.
pub(crate) fn mg3d(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mg3d"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// Its stdout and stderr together.
pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/pipelines/tiny.toml")
}

#[test]
fn run_status_rerun_and_determinism() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let p = tiny();
    let p = p.to_str().unwrap();
    let o = mg3d(a.path(), &["run", p, "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("synth        ran"), "{}", text(&o));
    let o = mg3d(a.path(), &["status", p, "--verify"]);
    assert!(text(&o).contains("synth        fresh"), "{}", text(&o));
    // Nothing to do the second time.
    let o = mg3d(a.path(), &["run", p, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stages"][0]["action"], "fresh");
    // Another directory, same bytes.
    assert!(mg3d(b.path(), &["run", p, "--quiet"]).status.success());
    let ha = mg3d_core::fsutil::hash_dir(&a.path().join("work/tiny/synth")).unwrap();
    let hb = mg3d_core::fsutil::hash_dir(&b.path().join("work/tiny/synth")).unwrap();
    assert_eq!(ha, hb);
    assert_eq!(
        fs::read(a.path().join("work/tiny/mg3d.lock.json")).unwrap(),
        fs::read(b.path().join("work/tiny/mg3d.lock.json")).unwrap()
    );
    // A modified output is seen by status and repaired by run.
    fs::write(a.path().join("work/tiny/synth/synth.json"), "{}").unwrap();
    let o = mg3d(a.path(), &["status", p]);
    assert!(
        text(&o).contains("synth        stale    output modified"),
        "{}",
        text(&o)
    );
    let o = mg3d(a.path(), &["run", p, "--dry-run"]);
    assert!(
        text(&o).contains("would run: output modified"),
        "{}",
        text(&o)
    );
    assert!(mg3d(a.path(), &["run", p, "--quiet"]).status.success());
    assert_eq!(
        mg3d_core::fsutil::hash_dir(&a.path().join("work/tiny/synth")).unwrap(),
        hb
    );
    // Schema check on a stage table.
    let t = a
        .path()
        .join("work/tiny/synth/truth/truth_findings.parquet");
    let o = mg3d(a.path(), &["schema", "check", t.to_str().unwrap()]);
    assert!(
        o.status.success() && text(&o).contains("matches table truth_findings"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_input_rewritten_in_place_with_the_same_size_makes_ingest_stale() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("nifti");
    fs::create_dir_all(&root).unwrap();
    let nii = |v: i16| {
        let vals: Vec<i16> = (0..48).map(|i| i * 37 - 900 + v).collect();
        mg3d_testkit::crafted::Nii::int16(&[4, 4, 3], &vals).bytes()
    };
    let file = root.join("a.nii");
    fs::write(&file, nii(0)).unwrap();
    let p = t.path().join("p.toml");
    fs::write(
        &p,
        format!(
            "[pipeline]\nname = \"s\"\nwork_dir = \"{}\"\nsalt = \"same-size-edit-salt-0123\"\n[stages.ingest]\nkind = \"ingest\"\nparams = {{ nifti_roots = [\"{}\"] }}\n",
            t.path().join("w").display(),
            root.display()
        ),
    )
    .unwrap();
    let p = p.to_str().unwrap();
    assert!(mg3d(t.path(), &["run", p, "--quiet"]).status.success());
    let o = mg3d(t.path(), &["status", p]);
    assert!(text(&o).contains("ingest       fresh"), "{}", text(&o));
    // Other voxels, the same length; the clock moves on.
    let later =
        fs::metadata(&file).unwrap().modified().unwrap() + std::time::Duration::from_secs(5);
    fs::write(&file, nii(1)).unwrap();
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let o = mg3d(t.path(), &["status", p]);
    assert!(text(&o).contains("ingest       stale"), "{}", text(&o));
}

#[test]
fn bad_inputs_have_exit_codes_and_messages() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.toml");
    fs::write(&bad, "[pipeline]\nname = \"x\"\nsalt = \"test-salt-0123456789\"\n[stages.s]\nkind = \"synth\"\nparams = { patiens = 3 }\n").unwrap();
    let o = mg3d(d.path(), &["run", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(
        t.contains("bad.toml:6: stage \"s\" (kind synth): unknown param \"patiens\""),
        "{t}"
    );
    assert!(t.contains("fix: valid params of synth: patients"), "{t}");
    let o = mg3d(
        d.path(),
        &["run", tiny().to_str().unwrap(), "--stage", "nope"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A Parquet file of another table fails the check with exit code 3.
    let p = tiny();
    assert!(
        mg3d(d.path(), &["run", p.to_str().unwrap(), "--quiet"])
            .status
            .success()
    );
    let src = d
        .path()
        .join("work/tiny/synth/truth/truth_findings.parquet");
    let wrong = d.path().join("volumes.parquet");
    fs::copy(&src, &wrong).unwrap();
    let o = mg3d(
        d.path(),
        &[
            "schema",
            "check",
            wrong.to_str().unwrap(),
            "--table",
            "nonexistent",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("no schema for table \"nonexistent\""),
        "{}",
        text(&o)
    );
}

#[test]
fn every_shipped_pipeline_is_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
    let d = tempfile::tempdir().unwrap();
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let o = Command::new(env!("CARGO_BIN_EXE_mg3d"))
            .current_dir(d.path())
            .env("MG3D_SALT", "test-salt-0123456789")
            .args(["status", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}: {}", p.display(), text(&o));
    }
}

/// `mg3d` itself does not load libtorch; what needs it reaches `mg3d-torch` with the same
/// arguments, and a pipeline without libtorch stages runs in `mg3d` alone.
#[test]
fn mg3d_hands_what_needs_libtorch_to_mg3d_torch() {
    let bin = env!("CARGO_BIN_EXE_mg3d");
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    let libs = String::from_utf8_lossy(&ldd.stdout).into_owned();
    assert!(ldd.status.success() && !libs.contains("libtorch"), "{libs}");
    let d = tempfile::tempdir().unwrap();
    // `stages` lists the libtorch kinds, which only mg3d-torch registers.
    let o = mg3d(d.path(), &["stages"]);
    assert!(o.status.success(), "{}", text(&o));
    for kind in [
        "train (code version",
        "eval (code version",
        "reports (code version",
    ] {
        assert!(text(&o).contains(kind), "{kind}: {}", text(&o));
    }
    // A train pipeline is parsed by mg3d-torch: its errors are the train stage's own.
    let p = d.path().join("p.toml");
    fs::write(
        &p,
        "[pipeline]\nname = \"t\"\nwork_dir = \"w\"\nsalt = \"0123456789abcdef\"\n\
         [stages.shards]\nkind = \"shards\"\n\
         [stages.train]\nkind = \"train\"\ninputs = [\"shards\"]\nparams = { model = \"no-such-model\" }\n",
    )
    .unwrap();
    let o = mg3d(d.path(), &["status", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no-such-model"), "{}", text(&o));
    // An unknown kind is still an error of the pipeline file, from either binary.
    fs::write(
        &p,
        "[pipeline]\nname = \"t\"\nwork_dir = \"w\"\nsalt = \"0123456789abcdef\"\n\
         [stages.x]\nkind = \"no-such-kind\"\n",
    )
    .unwrap();
    let o = mg3d(d.path(), &["status", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("unknown kind \"no-such-kind\""),
        "{}",
        text(&o)
    );
}
