//! `--partition K/N`: every partitioned stage of the demo (up to the shards, on a smaller corpus:
//! tests/pipelines/partitions.toml) run as N = 1, 2 and 3 partitions and then merged gives the
//! unpartitioned run's outputs and lockfile byte for byte; the merge computes no item again; a
//! partition killed mid-way is simply rerun; status shows partial progress; whole-corpus stages
//! refuse to partition.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mg3d_core::fsutil::hash_dir;

use crate::cli::{mg3d, text};

/// The demo's stages after synth, in pipeline order, and whether each partitions.
const STAGES: [(&str, bool); 8] = [
    ("ingest", true),
    ("preprocess", true),
    ("reports", true),
    ("entities", true),
    ("tokens", true),
    ("graph", false),
    ("curate", false),
    ("shards", true),
];

fn pipeline() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/pipelines/partitions.toml")
        .to_string_lossy()
        .into_owned()
}

/// `mg3d --json run ARGS` in `dir`; panics on failure; returns the one stage's summary.
fn run_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "run"];
    all.extend_from_slice(args);
    let o = mg3d(dir, &all);
    assert!(o.status.success(), "mg3d {all:?}: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["stages"][0]["summary"].clone()
}

/// Finished items (directories or JSON files named by a 32-hex key) in a stage's store.
fn stored_items(store: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(store) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_name().len() == 2)
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

/// Starts partition `part` of `stage`, kills it (SIGKILL) as soon as its first item is in the
/// store, and returns whether it was still running then.
fn kill_mid_way(dir: &Path, p: &str, work: &str, stage: &str, part: &str) -> bool {
    let store = dir.join(work).join(".items").join(stage);
    let before = stored_items(&store);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mg3d"))
        .current_dir(dir)
        .args([
            "run",
            p,
            "--work-dir",
            work,
            "--stage",
            stage,
            "--partition",
            part,
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while stored_items(&store) == before && t0.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    running
}

#[test]
fn any_partition_count_merges_to_the_unpartitioned_outputs() {
    let d = tempfile::tempdir().unwrap();
    let p = pipeline();
    let o = mg3d(d.path(), &["run", &p, "--work-dir", "ref", "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let reference = d.path().join("ref");
    let mut kills = 0;
    for n in 1..=3u32 {
        let work = format!("n{n}");
        run_json(d.path(), &[&p, "--work-dir", &work, "--stage", "synth"]);
        for (stage, partitioned) in STAGES {
            if !partitioned {
                run_json(d.path(), &[&p, "--work-dir", &work, "--stage", stage]);
                continue;
            }
            let run_part = |part: &str| {
                let args = [
                    p.as_str(),
                    "--work-dir",
                    &work,
                    "--stage",
                    stage,
                    "--partition",
                    part,
                ];
                run_json(d.path(), &args)
            };
            for k in 0..n {
                let part = format!("{k}/{n}");
                if n == 3 && k == 1 && matches!(stage, "ingest" | "preprocess") {
                    // Killed once mid-way, then simply rerun.
                    let killed = kill_mid_way(d.path(), &p, &work, stage, &part);
                    let s = run_part(&part);
                    if killed {
                        kills += 1;
                        assert!(
                            s["items"]["reused"].as_u64().unwrap() >= 1
                                && s["items"]["made"].as_u64().unwrap() >= 1,
                            "{stage} {part} after a kill: {s}"
                        );
                    }
                    continue;
                }
                let s = run_part(&part);
                assert_eq!(s["items"]["reused"], 0, "{stage} {part}: {s}");
                if n == 3 && k == 0 {
                    let o = mg3d(d.path(), &["status", &p, "--work-dir", &work]);
                    let made = s["items"]["made"].as_u64().unwrap();
                    let seen = s["items"]["seen"].as_u64().unwrap();
                    let want = format!(
                        "items {made}/{seen} done in the store (1 of 3 partitions reported, 1 finished)"
                    );
                    assert!(text(&o).contains(&want), "{want}\n{}", text(&o));
                }
            }
            // The merge: every item comes from the store.
            let s = run_json(d.path(), &[&p, "--work-dir", &work, "--stage", stage]);
            let items = &s["this_run"]["items"];
            assert_eq!(items["made"], 0, "{stage} merge of {n}: {s}");
            assert!(items["reused"].as_u64().unwrap() > 0, "{stage}: {s}");
        }
        for (stage, _) in STAGES {
            assert_eq!(
                hash_dir(&d.path().join(&work).join(stage)).unwrap(),
                hash_dir(&reference.join(stage)).unwrap(),
                "{stage} merged from {n} partitions differs from the unpartitioned run"
            );
        }
        assert_eq!(
            std::fs::read(d.path().join(&work).join("mg3d.lock.json")).unwrap(),
            std::fs::read(reference.join("mg3d.lock.json")).unwrap(),
            "lockfile after {n} partitions"
        );
        if n == 3 {
            assert!(kills >= 1, "no partition was killed while it ran");
        }
        // The merge cleared the progress records and every partition's scratch output.
        for (stage, _) in STAGES {
            let store = d.path().join(&work).join(".items").join(stage);
            assert!(!store.join(".progress").exists(), "{stage}");
            let scratch: Vec<_> = std::fs::read_dir(store.join(".scratch"))
                .into_iter()
                .flatten()
                .collect();
            assert!(scratch.is_empty(), "{stage}: {scratch:?}");
        }
    }
}

#[test]
fn whole_corpus_stages_and_bad_partitions_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = pipeline();
    let o = mg3d(
        d.path(),
        &["run", &p, "--stage", "graph", "--partition", "0/2"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("works on the whole corpus and does not partition"),
        "{}",
        text(&o)
    );
    for bad in ["2/2", "x/3", "3", "0/0"] {
        let o = mg3d(
            d.path(),
            &["run", &p, "--stage", "ingest", "--partition", bad],
        );
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
    }
    let o = mg3d(d.path(), &["run", &p, "--partition", "0/2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // `auto` outside a job array says what it looked for.
    let o = Command::new(env!("CARGO_BIN_EXE_mg3d"))
        .current_dir(d.path())
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .args(["run", &p, "--stage", "ingest", "--partition", "auto"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("SLURM_ARRAY_TASK_ID"), "{}", text(&o));
}
