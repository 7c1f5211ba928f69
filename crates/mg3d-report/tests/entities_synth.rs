//! Entities and labels against the synthetic corpus' truth: micro-F1 of entity spans + assertion
//! and of the 1/0/-1 labels, with the default report templates and with an alternative phrasing set
//! the lexicon was not written against (tests/data/alt_report_templates.toml).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, Int32Array, StringArray};
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

struct Scores {
    entity_f1: f64,
    label_f1: f64,
    per_label: BTreeMap<String, (usize, usize, usize)>,
}

fn f1(tp: usize, fp: usize, fn_: usize) -> f64 {
    if tp == 0 {
        0.0
    } else {
        2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
    }
}

fn evaluate(templates: Option<PathBuf>, seed: u64) -> Scores {
    let t = tempfile::tempdir().unwrap();
    let mut reg = StageRegistry::new();
    reg.register(Arc::new(mg3d_synth::SynthStage))
        .register(Arc::new(mg3d_report::reports::ReportsStage))
        .register(Arc::new(mg3d_report::entities_stage::EntitiesStage));
    let tpl = templates
        .map(|p| format!(", templates='{}'", p.display()))
        .unwrap_or_default();
    let text = format!(
        "[pipeline]\nname='e'\nwork_dir='{}'\nsalt='test-salt-0123456789'\nseed={seed}\n[stages.synth]\nkind='synth'\nparams={{patients=120, prevalence=0.3, body_width_mm=[50.0, 55.0], z_extent_mm=[20.0, 22.0], in_plane_spacing_mm=[1.0, 1.0], slice_spacing_mm=[5.0, 5.0], second_recon_fraction=0.0{tpl}}}\n\
         [stages.reports]\nkind='reports'\ninputs=['synth']\nparams={{files=['@synth/reports/train_reports.csv']}}\n[stages.entities]\nkind='entities'\ninputs=['reports']\n",
        t.path().display()
    );
    let (_p, _) = mg3d_testkit::run_pipeline(&reg, &text);
    let mut key_of = BTreeMap::new();
    for b in read_table(
        &t.path().join("reports/reports.parquet"),
        &TableSchema::get("reports").unwrap(),
    )
    .unwrap()
    {
        for r in 0..b.num_rows() {
            key_of.insert(
                s(&b, "report_id").value(r).to_string(),
                s(&b, "report_key").value(r).to_string(),
            );
        }
    }
    // Predicted observations: (key, section, label, assertion, start, end)
    let rendered: BTreeSet<&str> = mg3d_synth::catalog::RENDERED.into_iter().collect();
    let mut pred: Vec<(String, String, String, String, usize, usize)> = vec![];
    for b in read_table(
        &t.path().join("entities/entities.parquet"),
        &TableSchema::get("entities").unwrap(),
    )
    .unwrap()
    {
        let lab = s(&b, "label");
        for r in 0..b.num_rows() {
            if s(&b, "type").value(r) != "OBSERVATION"
                || lab.is_null(r)
                || !rendered.contains(lab.value(r))
            {
                continue;
            }
            pred.push((
                key_of[s(&b, "report_id").value(r)].clone(),
                s(&b, "section").value(r).to_string(),
                lab.value(r).to_string(),
                s(&b, "assertion").value(r).to_string(),
                i(&b, "char_start").value(r) as usize,
                i(&b, "char_end").value(r) as usize,
            ));
        }
    }
    let mut truth: Vec<(String, String, String, String, usize, usize)> = vec![];
    for l in std::fs::read_to_string(t.path().join("synth/truth/entities.jsonl"))
        .unwrap()
        .lines()
    {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        let sec = if e["section"] == "Findings_EN" {
            "findings"
        } else {
            "impression"
        };
        truth.push((
            mg3d_core::ids::pseudonym(
                "test-salt-0123456789",
                "report",
                e["volume_name"].as_str().unwrap(),
            ),
            sec.into(),
            e["finding"].as_str().unwrap().into(),
            e["assertion"].as_str().unwrap().into(),
            e["start"].as_u64().unwrap() as usize,
            e["end"].as_u64().unwrap() as usize,
        ));
    }
    let mut used = vec![false; pred.len()];
    let (mut tp, mut fn_) = (0, 0);
    let mut per_label: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for tr in &truth {
        let hit = pred.iter().enumerate().position(|(k, p)| {
            !used[k]
                && p.0 == tr.0
                && p.1 == tr.1
                && p.2 == tr.2
                && p.3 == tr.3
                && p.4 < tr.5
                && tr.4 < p.5
        });
        match hit {
            Some(k) => {
                used[k] = true;
                tp += 1;
                per_label.entry(tr.2.clone()).or_default().0 += 1;
            }
            None => {
                fn_ += 1;
                per_label.entry(tr.2.clone()).or_default().2 += 1;
                eprintln!("missed {tr:?}");
            }
        }
    }
    let fp = used.iter().filter(|u| !**u).count();
    for (k, p) in pred.iter().enumerate() {
        if !used[k] {
            per_label.entry(p.2.clone()).or_default().1 += 1;
            eprintln!("spurious {p:?}");
        }
    }
    // Labels: truth per (volume, finding) from the statements; prediction from labels.parquet.
    let mut want: BTreeMap<(String, String), i32> = BTreeMap::new();
    for b in read_table(
        &t.path().join("synth/truth/truth_findings.parquet"),
        &TableSchema::get("truth_findings").unwrap(),
    )
    .unwrap()
    {
        for r in 0..b.num_rows() {
            let v = match s(&b, "assertion").value(r) {
                "present" => 1,
                "absent" => 0,
                _ => -1,
            };
            want.insert(
                (
                    // labels.report_key is the pseudonym of the source id.
                    mg3d_core::ids::pseudonym(
                        "test-salt-0123456789",
                        "report",
                        s(&b, "volume_name").value(r),
                    ),
                    s(&b, "finding").value(r).to_string(),
                ),
                v,
            );
        }
    }
    let (mut ltp, mut lfp, mut lfn) = (0, 0, 0);
    for b in read_table(
        &t.path().join("entities/labels.parquet"),
        &TableSchema::get("labels").unwrap(),
    )
    .unwrap()
    {
        let v = i(&b, "value");
        for r in 0..b.num_rows() {
            let key = (
                s(&b, "report_key").value(r).to_string(),
                s(&b, "label").value(r).to_string(),
            );
            if !rendered.contains(key.1.as_str()) {
                continue;
            }
            let got = (!v.is_null(r)).then(|| v.value(r));
            match (got, want.get(&key)) {
                (Some(g), Some(w)) if g == *w => ltp += 1,
                (Some(_), Some(_)) => {
                    lfp += 1;
                    lfn += 1;
                }
                (Some(_), None) => lfp += 1,
                (None, Some(_)) => lfn += 1,
                (None, None) => {}
            }
        }
    }
    Scores {
        entity_f1: f1(tp, fp, fn_),
        label_f1: f1(ltp, lfp, lfn),
        per_label,
    }
}

#[test]
fn entities_and_labels_match_the_synthetic_truth() {
    let sc = evaluate(None, 31);
    eprintln!(
        "default templates: entity micro-F1 {:.4}, label micro-F1 {:.4}",
        sc.entity_f1, sc.label_f1
    );
    for (l, (tp, fp, fn_)) in &sc.per_label {
        eprintln!(
            "  {l:<36} tp {tp:>4} fp {fp:>3} fn {fn_:>3} F1 {:.3}",
            f1(*tp, *fp, *fn_)
        );
    }
    assert!(sc.entity_f1 >= 0.95, "entity micro-F1 {:.4}", sc.entity_f1);
    assert!(sc.label_f1 >= 0.95, "label micro-F1 {:.4}", sc.label_f1);
}

#[test]
fn unseen_phrasings_still_score() {
    let alt =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/alt_report_templates.toml");
    let sc = evaluate(Some(alt), 32);
    eprintln!(
        "alternative templates: entity micro-F1 {:.4}, label micro-F1 {:.4}",
        sc.entity_f1, sc.label_f1
    );
    for (l, (tp, fp, fn_)) in &sc.per_label {
        eprintln!(
            "  {l:<36} tp {tp:>4} fp {fp:>3} fn {fn_:>3} F1 {:.3}",
            f1(*tp, *fp, *fn_)
        );
    }
    assert!(sc.entity_f1 >= 0.9, "entity micro-F1 {:.4}", sc.entity_f1);
    assert!(sc.label_f1 >= 0.9, "label micro-F1 {:.4}", sc.label_f1);
}
