//! Curate and `mg3d query` end to end: corpus + excluded cover every candidate, the card is written,
//! a changed rule reruns curate (and what follows) but nothing before it, an unknown column fails
//! before anything runs, and SQL works over the stage tables.

use crate::cli::{mg3d, text};
use std::fs;
use std::process::Output;

fn pipeline(rule: &str) -> String {
    format!(
        r#"[pipeline]
name = "cur"
work_dir = "work"
salt = "test-salt-0123456789"
seed = 3
[stages.synth]
kind = "synth"
params = {{ patients = 8, faults = false, second_recon_fraction = 0.5, body_width_mm = [60.0, 70.0], z_extent_mm = [20.0, 30.0], in_plane_spacing_mm = [1.0, 1.0], slice_spacing_mm = [1.0, 5.0] }}
[stages.ingest]
kind = "ingest"
inputs = ["synth"]
params = {{ dicom_roots = ["@synth/dicom"], nifti_roots = ["@synth/nifti"], ctrate_metadata = ["@synth/metadata/train_metadata.csv"], accession_map = "@synth/reports/accession_map.csv" }}
[stages.reports]
kind = "reports"
inputs = ["synth"]
params = {{ files = ["@synth/reports/train_reports.csv"] }}
[stages.entities]
kind = "entities"
inputs = ["reports"]
[stages.curate]
kind = "curate"
inputs = ["ingest", "reports", "entities"]
params = {{ rules = ["{rule}", "findings_chars > 0"], reconstruction = "thinnest" }}
"#
    )
}

fn json_rows(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn curate_card_rerun_and_query() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cur.toml");
    fs::write(&p, pipeline("slice_spacing_mm <= 4.0")).unwrap();
    let ps = p.to_str().unwrap();
    let o = mg3d(d.path(), &["run", ps, "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let card: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(d.path().join("work/curate/corpus_card.json")).unwrap(),
    )
    .unwrap();
    let md = fs::read_to_string(d.path().join("work/curate/corpus_card.md")).unwrap();
    assert!(
        md.contains("slice_spacing_mm <= 4.0") && md.contains("## Splits"),
        "{md}"
    );
    let counts = card["counts_after_each_rule"].as_array().unwrap();
    let candidates = counts[0]["remaining"].as_u64().unwrap();
    let selected = card["selected_pairs"].as_u64().unwrap();
    assert!(selected > 0 && selected < candidates, "{card}");

    // Every candidate is in corpus or excluded, once.
    let q = |sql: &str| {
        let o = mg3d(d.path(), &["query", ps, sql, "--json"]);
        assert!(o.status.success(), "{sql}: {}", text(&o));
        json_rows(&o)
    };
    let n_corpus = q("SELECT count(*) AS n FROM corpus")[0]["n"]
        .as_u64()
        .unwrap();
    let n_excl = q("SELECT count(*) AS n FROM excluded")[0]["n"]
        .as_u64()
        .unwrap();
    assert_eq!(n_corpus, selected);
    assert_eq!(n_corpus + n_excl, candidates);
    let by_rule = q("SELECT rule, count(*) AS n FROM excluded GROUP BY rule ORDER BY rule");
    assert!(
        by_rule
            .iter()
            .any(|r| r["rule"] == "reconstruction: thinnest"),
        "{by_rule:?}"
    );
    // Joins across stages, a patient in one split only.
    let rows = q(
        "SELECT c.patient_id, count(DISTINCT c.split) AS splits FROM corpus c JOIN volumes v ON c.volume_id = v.volume_id GROUP BY c.patient_id",
    );
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["splits"] == 1), "{rows:?}");
    // Written to a file, and a clear error for an unknown table.
    let out = d.path().join("labels.csv");
    let o = mg3d(
        d.path(),
        &[
            "query",
            ps,
            "SELECT * FROM labels WHERE value = 1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(fs::read_to_string(&out).unwrap().starts_with("report_id,"));
    let o = mg3d(d.path(), &["query", ps, "SELECT * FROM nonexistent"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("tables:") && text(&o).contains("volumes"),
        "{}",
        text(&o)
    );

    // A changed rule: curate is stale (params changed), everything before it fresh.
    fs::write(&p, pipeline("slice_spacing_mm <= 2.0")).unwrap();
    let o = mg3d(d.path(), &["status", ps]);
    let t = text(&o);
    assert!(t.contains("curate       stale    params changed"), "{t}");
    for s in ["synth", "ingest", "reports", "entities"] {
        assert!(t.contains(&format!("{s:<12} fresh")), "{t}");
    }
    let o = mg3d(d.path(), &["run", ps, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for st in v["stages"].as_array().unwrap() {
        let expect = if st["name"] == "curate" {
            "ran"
        } else {
            "fresh"
        };
        assert_eq!(st["action"], expect, "{st}");
    }

    // An unknown column fails before anything runs, naming it and the valid columns.
    let e = tempfile::tempdir().unwrap();
    let bad = e.path().join("bad.toml");
    fs::write(&bad, pipeline("slice_thicknes <= 2.0")).unwrap();
    let o = mg3d(e.path(), &["run", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("unknown column \"slice_thicknes\""), "{t}");
    assert!(t.contains("valid columns: volume_id, patient_id"), "{t}");
    assert!(!e.path().join("work").exists(), "nothing ran");
}
