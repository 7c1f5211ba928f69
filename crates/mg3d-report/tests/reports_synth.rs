//! The reports stage on the synthetic corpus: report faults become rejects with the expected codes,
//! every span indexes its section text exactly, and no truth entity is cut by a sentence boundary.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int32Array, StringArray};
use mg3d_core::stage::StageRegistry;
use mg3d_core::table::{TableSchema, read_table};

fn s(b: &arrow::array::RecordBatch, n: &str) -> StringArray {
    b.column_by_name(n)
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .clone()
}
fn i(b: &arrow::array::RecordBatch, n: &str) -> Int32Array {
    b.column_by_name(n)
        .unwrap()
        .as_any()
        .downcast_ref::<Int32Array>()
        .unwrap()
        .clone()
}

#[test]
fn synthetic_reports_segment_exactly_and_faults_are_rejected() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = StageRegistry::new();
    reg.register(Arc::new(mg3d_synth::SynthStage))
        .register(Arc::new(mg3d_report::reports::ReportsStage));
    let text = format!(
        "[pipeline]\nname='r'\nwork_dir='{}'\nsalt='test-salt-0123456789'\nseed=3\n[stages.synth]\nkind='synth'\nparams={{patients=30, faults=true, body_width_mm=[60.0, 70.0], z_extent_mm=[20.0, 25.0], in_plane_spacing_mm=[1.0, 1.0], slice_spacing_mm=[4.0, 5.0]}}\n[stages.reports]\nkind='reports'\ninputs=['synth']\nparams={{files=['@synth/reports/train_reports.csv']}}\n",
        t.path().display()
    );
    let (_p, _) = mg3d_testkit::run_pipeline(&reg, &text);
    let out = t.path().join("reports");

    // Faults of stage "reports" are rejects with their codes.
    let rej = read_table(
        &out.join("rejects.parquet"),
        &TableSchema::get("rejects").unwrap(),
    )
    .unwrap();
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in &rej {
        for r in 0..b.num_rows() {
            reasons
                .entry(s(b, "reason").value(r).to_string())
                .or_default()
                .push(s(b, "message").value(r).to_string());
        }
    }
    let faults: Vec<serde_json::Value> =
        std::fs::read_to_string(t.path().join("synth/truth/faults.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    for f in faults.iter().filter(|f| f["stage"] == "reports") {
        let code = f["expected"].as_str().unwrap();
        let vn = f["volume_name"].as_str().unwrap();
        // Messages name the report by its pseudonym, never by the source id.
        let id = mg3d_core::ids::pseudonym("test-salt-0123456789", "report", vn);
        assert!(
            reasons
                .get(code)
                .is_some_and(|m| m.iter().any(|m| m.contains(&id) && !m.contains(vn))),
            "{code} for {vn}: {reasons:?}"
        );
    }

    // Spans index their section text; clauses lie inside their sentence.
    let sections = read_table(
        &out.join("sections.parquet"),
        &TableSchema::get("sections").unwrap(),
    )
    .unwrap();
    let reports = read_table(
        &out.join("reports.parquet"),
        &TableSchema::get("reports").unwrap(),
    )
    .unwrap();
    let mut key_of = BTreeMap::new();
    for b in &reports {
        for r in 0..b.num_rows() {
            key_of.insert(
                s(b, "report_id").value(r).to_string(),
                s(b, "report_key").value(r).to_string(),
            );
        }
    }
    let mut text_of: BTreeMap<(String, String), String> = BTreeMap::new();
    for b in &sections {
        for r in 0..b.num_rows() {
            text_of.insert(
                (
                    s(b, "report_id").value(r).to_string(),
                    s(b, "section").value(r).to_string(),
                ),
                s(b, "text").value(r).to_string(),
            );
        }
    }
    let sents = read_table(
        &out.join("sentences.parquet"),
        &TableSchema::get("sentences").unwrap(),
    )
    .unwrap();
    let mut sentence_ranges: BTreeMap<(String, String), Vec<(usize, usize)>> = BTreeMap::new();
    for b in &sents {
        for r in 0..b.num_rows() {
            let key = (
                s(b, "report_id").value(r).to_string(),
                s(b, "section").value(r).to_string(),
            );
            let (a, e) = (
                i(b, "char_start").value(r) as usize,
                i(b, "char_end").value(r) as usize,
            );
            assert_eq!(&text_of[&key][a..e], s(b, "text").value(r));
            sentence_ranges.entry(key).or_default().push((a, e));
        }
    }
    let clauses = read_table(
        &out.join("clauses.parquet"),
        &TableSchema::get("clauses").unwrap(),
    )
    .unwrap();
    let mut n_clauses = 0;
    for b in &clauses {
        for r in 0..b.num_rows() {
            let key = (
                s(b, "report_id").value(r).to_string(),
                s(b, "section").value(r).to_string(),
            );
            let (a, e) = (
                i(b, "char_start").value(r) as usize,
                i(b, "char_end").value(r) as usize,
            );
            assert_eq!(&text_of[&key][a..e], s(b, "text").value(r));
            n_clauses += 1;
        }
    }
    assert!(n_clauses > 100);
    // Truth entity spans never straddle two sentences.
    let section_name = |c: &str| {
        if c == "Findings_EN" {
            "findings"
        } else {
            "impression"
        }
    };
    let by_key: BTreeMap<String, String> = key_of
        .iter()
        .map(|(id, k)| (k.clone(), id.clone()))
        .collect();
    let mut checked = 0;
    for l in std::fs::read_to_string(t.path().join("synth/truth/entities.jsonl"))
        .unwrap()
        .lines()
    {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        let vn = e["volume_name"].as_str().unwrap();
        let Some(id) = by_key.get(&mg3d_core::ids::pseudonym(
            "test-salt-0123456789",
            "report",
            vn,
        )) else {
            continue;
        };
        let key = (
            id.clone(),
            section_name(e["section"].as_str().unwrap()).to_string(),
        );
        let (a, z) = (
            e["start"].as_u64().unwrap() as usize,
            e["end"].as_u64().unwrap() as usize,
        );
        assert!(
            sentence_ranges[&key]
                .iter()
                .any(|&(sa, se)| sa <= a && z <= se),
            "entity {e} cut by a sentence boundary"
        );
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}
