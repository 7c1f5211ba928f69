//! The graph on the synthetic corpus against its truth: patients sharing a rendered finding on the
//! same side rank above those that do not (mean precision@k of the top-k neighbours versus the
//! precision of a random choice), and the stage's outputs are byte-identical when rerun.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, Float32Array, Int32Array, StringArray};
use mg3d_core::stage::StageRegistry;
use mg3d_core::table::{TableSchema, read_table};

fn col<T: 'static + Clone>(b: &arrow::array::RecordBatch, n: &str) -> T {
    b.column_by_name(n)
        .unwrap()
        .as_any()
        .downcast_ref::<T>()
        .unwrap()
        .clone()
}

fn run(work: &Path, top_k: usize) {
    let mut reg = StageRegistry::new();
    reg.register(Arc::new(mg3d_synth::SynthStage))
        .register(Arc::new(mg3d_report::reports::ReportsStage))
        .register(Arc::new(mg3d_report::entities_stage::EntitiesStage))
        .register(Arc::new(mg3d_graph::GraphStage));
    let text = format!(
        "[pipeline]\nname='g'\nwork_dir='{}'\nsalt='test-salt-0123456789'\nseed=7\n[stages.synth]\nkind='synth'\nparams={{patients=150, prevalence=0.3, body_width_mm=[50.0, 55.0], z_extent_mm=[20.0, 22.0], in_plane_spacing_mm=[1.0, 1.0], slice_spacing_mm=[5.0, 5.0], second_recon_fraction=0.0}}\n\
         [stages.reports]\nkind='reports'\ninputs=['synth']\nparams={{files=['@synth/reports/train_reports.csv']}}\n[stages.entities]\nkind='entities'\ninputs=['reports']\n\
         [stages.graph]\nkind='graph'\ninputs=['reports', 'entities']\nparams={{top_k={top_k}, min_weight=0.7}}\n",
        work.display()
    );
    let (_p, _) = mg3d_testkit::run_pipeline(&reg, &text);
}

/// Truth per report key: rendered (finding, side) pairs; side "" when the finding has none.
fn truth(work: &Path) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for b in read_table(
        &work.join("synth/truth/truth_findings.parquet"),
        &TableSchema::get("truth_findings").unwrap(),
    )
    .unwrap()
    {
        let (v, f, r, lat) = (
            col::<StringArray>(&b, "volume_name"),
            col::<StringArray>(&b, "finding"),
            col::<BooleanArray>(&b, "rendered"),
            col::<StringArray>(&b, "laterality"),
        );
        for i in 0..b.num_rows() {
            // Keyed as reports.report_key is: the pseudonym of the source id.
            let key = mg3d_core::ids::pseudonym("test-salt-0123456789", "report", v.value(i));
            let e = out.entry(key).or_default();
            if r.value(i) {
                let side = if lat.is_null(i) { "" } else { lat.value(i) };
                e.insert((f.value(i).to_string(), side.to_string()));
            }
        }
    }
    out
}

fn relevant(a: &BTreeSet<(String, String)>, b: &BTreeSet<(String, String)>) -> bool {
    let sides = |s: &str| -> Vec<&'static str> {
        match s {
            "left" => vec!["left"],
            "right" => vec!["right"],
            _ => vec!["left", "right"],
        }
    };
    a.iter().any(|(fa, sa)| {
        b.iter()
            .any(|(fb, sb)| fa == fb && sides(sa).iter().any(|x| sides(sb).contains(x)))
    })
}

#[test]
fn neighbours_share_rendered_findings() {
    let k = 5;
    let t = tempfile::tempdir().unwrap();
    run(t.path(), k);
    let truth = truth(t.path());
    let mut key_of = BTreeMap::new();
    for b in read_table(
        &t.path().join("reports/reports.parquet"),
        &TableSchema::get("reports").unwrap(),
    )
    .unwrap()
    {
        let (id, key) = (
            col::<StringArray>(&b, "report_id"),
            col::<StringArray>(&b, "report_key"),
        );
        for i in 0..b.num_rows() {
            key_of.insert(id.value(i).to_string(), key.value(i).to_string());
        }
    }
    let set_of = |rid: &str| truth.get(&key_of[rid]).cloned().unwrap_or_default();
    let mut nbrs: BTreeMap<String, Vec<(String, f32, i32)>> = BTreeMap::new();
    for b in read_table(
        &t.path().join("graph/neighbors.parquet"),
        &TableSchema::get("neighbors").unwrap(),
    )
    .unwrap()
    {
        let (s, d, w, rk) = (
            col::<StringArray>(&b, "report_id"),
            col::<StringArray>(&b, "neighbor_report_id"),
            col::<Float32Array>(&b, "weight"),
            col::<Int32Array>(&b, "rank"),
        );
        for i in 0..b.num_rows() {
            assert_ne!(s.value(i), d.value(i));
            nbrs.entry(s.value(i).to_string()).or_default().push((
                d.value(i).to_string(),
                w.value(i),
                rk.value(i),
            ));
        }
    }
    let ids: Vec<String> = key_of.keys().cloned().collect();
    let (mut prec, mut base, mut n) = (0.0, 0.0, 0usize);
    for r in &ids {
        let mine = set_of(r);
        if mine.is_empty() {
            continue;
        }
        let list = nbrs.get(r).cloned().unwrap_or_default();
        assert!(list.len() <= k);
        let hits = list
            .iter()
            .filter(|(d, _, _)| relevant(&mine, &set_of(d)))
            .count();
        prec += hits as f64 / k as f64;
        let rel_all = ids
            .iter()
            .filter(|o| *o != r && relevant(&mine, &set_of(o)))
            .count();
        base += rel_all as f64 / (ids.len() - 1) as f64;
        n += 1;
    }
    let (prec, base) = (prec / n as f64, base / n as f64);
    println!(
        "graph precision@{k} over {n} reports with rendered findings: {prec:.3} (random choice: {base:.3})"
    );
    assert!(n > 30, "{n}");
    assert!(prec >= 0.8, "precision@{k} {prec:.3}");
    assert!(
        prec >= 1.5 * base,
        "precision@{k} {prec:.3} vs random {base:.3}"
    );

    // graph_stats.json is complete; rerunning the stage writes identical bytes.
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.path().join("graph/graph_stats.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stats["reports"], ids.len());
    assert!(stats["nodes"].as_u64().unwrap() <= ids.len() as u64);
    let t2 = tempfile::tempdir().unwrap();
    run(t2.path(), k);
    for f in [
        "signatures.parquet",
        "edges.parquet",
        "neighbors.parquet",
        "region_mentions.parquet",
        "graph_stats.json",
    ] {
        let a = std::fs::read(t.path().join("graph").join(f)).unwrap();
        let b = std::fs::read(t2.path().join("graph").join(f)).unwrap();
        assert!(a == b, "{f} differs between two runs");
    }
}
