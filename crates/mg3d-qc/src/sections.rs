//! The page's data sections other than the montage: counts per stage, rejects and exclusions by
//! reason, label prevalence, the graph's degree histogram, training loss curves and the
//! evaluation table. Each reads what it needs from the inputs; whatever is missing becomes a note.

use std::collections::{BTreeMap, BTreeSet};

use mg3d_core::labels::CT_RATE_LABELS;
use mg3d_core::rows::{CorpusRow, EvalRow, ExcludedRow, LabelsRow, MetricsRow, RejectsRow};
use serde_json::Value;

use crate::INPUT_KINDS;
use crate::html::{Html, Table, num};
use crate::inputs::{Inputs, file_name, parquet_files, parquet_rows};
use crate::plots::{Bar, hbar, int_histogram, lines};

/// Reads one objective's column from a row of metrics.parquet.
pub type ObjectiveColumn = fn(&MetricsRow) -> f64;

/// The training objectives plotted, in order, with their columns of metrics.parquet.
pub const OBJECTIVES: [(&str, ObjectiveColumn); 7] = [
    ("total", |r| r.total),
    ("mim", |r| r.mim),
    ("mlm", |r| r.mlm),
    ("sal", |r| r.sal),
    ("cml", |r| r.cml),
    ("dcl", |r| r.dcl),
    ("ssm", |r| r.ssm),
];

/// Appends a plot, or a note when it cannot be drawn.
fn plot(h: &mut Html, img: Result<crate::html::Image, String>) {
    match img {
        Ok(i) => {
            h.image(&i);
        }
        Err(e) => {
            h.note(&e);
        }
    }
}

// ---------------------------------------------------------------- counts

/// Counts per stage: rows of every table at the top of each input's output, plus the counts its
/// JSON files state (graph size, shard samples per split, training steps).
pub fn counts(inputs: &Inputs) -> Html {
    let mut h = Html::default();
    let mut t = Table::new(&["stage", "kind", "what", "count"], &[3]);
    for s in inputs.all() {
        match parquet_files(&s.dir) {
            Ok(files) => {
                for f in files {
                    let what = format!("{} rows", file_name(&f));
                    match parquet_rows(&f) {
                        Ok(n) => t.row(&[&s.name, &s.kind, &what, &n.to_string()]),
                        Err(e) => t.row(&[&s.name, &s.kind, &what, &format!("unreadable: {e}")]),
                    };
                }
            }
            Err(e) => {
                t.row(&[&s.name, &s.kind, "output", &e]);
            }
        }
        for (what, n) in json_counts(inputs, &s.kind) {
            t.row(&[&s.name, &s.kind, &what, &n]);
        }
    }
    h.table(&t, "This stage has no inputs.");
    let present: BTreeSet<&str> = inputs.all().iter().map(|s| s.kind.as_str()).collect();
    let absent: Vec<&str> = INPUT_KINDS
        .iter()
        .copied()
        .filter(|k| !present.contains(k))
        .collect();
    if !absent.is_empty() {
        h.para(&format!(
            "Not among this stage's inputs (their sections say so): {}.",
            absent.join(", ")
        ));
    }
    h
}

/// Counts stated in the JSON outputs of a stage kind, as (what, count) rows.
fn json_counts(inputs: &Inputs, kind: &str) -> Vec<(String, String)> {
    let get = |file: &str| inputs.json(kind, file);
    let pick = |v: &Value, keys: &[&str], file: &str| -> Vec<(String, String)> {
        keys.iter()
            .filter_map(|k| v.get(*k).map(|x| (format!("{file}: {k}"), value_text(x))))
            .collect()
    };
    match kind {
        "graph" => match get("graph_stats.json") {
            Ok(v) => pick(
                &v,
                &["reports", "patients", "nodes", "edges", "components"],
                "graph_stats.json",
            ),
            Err(e) => vec![("graph_stats.json".into(), e)],
        },
        "curate" => match get("corpus_card.json") {
            Ok(v) => pick(
                &v,
                &["selected_pairs", "selected_patients"],
                "corpus_card.json",
            ),
            Err(e) => vec![("corpus_card.json".into(), e)],
        },
        "train" => match get("train.json") {
            Ok(v) => pick(&v, &["steps", "first_total", "last_total"], "train.json"),
            Err(e) => vec![("train.json".into(), e)],
        },
        "shards" => match get("index.json") {
            Ok(v) => shard_counts(&v),
            Err(e) => vec![("index.json".into(), e)],
        },
        _ => Vec::new(),
    }
}

/// Samples, shards and bytes per split from the shards' index.json.
fn shard_counts(index: &Value) -> Vec<(String, String)> {
    let Some(splits) = index.get("splits").and_then(Value::as_object) else {
        return vec![("index.json".into(), "no splits".into())];
    };
    let order = |s: &str| ["train", "val", "test"].iter().position(|x| *x == s);
    let mut names: Vec<&String> = splits.keys().collect();
    names.sort_by_key(|s| (order(s).unwrap_or(9), s.to_string()));
    let mut out = Vec::new();
    for name in names {
        let s = &splits[name.as_str()];
        let samples = s.get("samples").and_then(Value::as_array).map(Vec::len);
        let shards = s.get("shards").and_then(Value::as_array);
        let bytes: Option<u64> = shards.map(|v| {
            v.iter()
                .filter_map(|x| x.get("bytes").and_then(Value::as_u64))
                .sum()
        });
        let cell = |x: Option<String>| x.unwrap_or_else(|| "?".into());
        out.push((
            format!("{name}: samples"),
            cell(samples.map(|n| n.to_string())),
        ));
        out.push((
            format!("{name}: shard files"),
            cell(shards.map(|v| v.len().to_string())),
        ));
        out.push((
            format!("{name}: shard bytes"),
            cell(bytes.map(|b| b.to_string())),
        ));
    }
    out
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_f64().map(num).unwrap_or_else(|| n.to_string()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------- rejects

/// Rejected inputs by reason (ingest, reports) and curate's exclusions by rule.
pub fn rejects(inputs: &Inputs) -> Html {
    let mut h = Html::default();
    for (kind, title) in [
        ("ingest", "Ingest: rejected inputs by reason"),
        ("reports", "Reports: rejected report rows by reason"),
    ] {
        h.heading(3, title);
        match inputs
            .rows::<RejectsRow>(kind, "rejects.parquet")
            .map(|t| reject_groups(&t))
        {
            Ok(groups) => h.append(reject_html(title, &groups)),
            Err(e) => h.note(&e),
        };
    }
    h.heading(3, "Curate: excluded volume–report pairs by rule");
    match inputs
        .rows::<ExcludedRow>("curate", "excluded.parquet")
        .map(|t| exclusion_groups(&t))
    {
        Ok(groups) => {
            let bars: Vec<Bar> = groups
                .iter()
                .map(|(r, n)| Bar::single(r, *n as f64))
                .collect();
            let mut t = Table::new(&["rule (in applied order)", "excluded"], &[1]);
            for (r, n) in &groups {
                t.row(&[r.as_str(), &n.to_string()]);
            }
            if !bars.is_empty() {
                plot(
                    &mut h,
                    hbar("Excluded pairs by rule", &bars, &[], "pairs", None),
                );
            }
            h.table(&t, "Curate excluded nothing.");
        }
        Err(e) => {
            h.note(&e);
        }
    }
    if let Ok(card) = inputs.json("curate", "corpus_card.json") {
        h.append(funnel(&card));
    }
    h
}

/// (reason, inputs, files) per reason, sorted by reason.
pub fn reject_groups(rows: &[RejectsRow]) -> Vec<(String, u64, i64)> {
    let mut m: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for r in rows {
        let e = m.entry(&r.reason).or_default();
        e.0 += 1;
        e.1 += r.n_files as i64;
    }
    m.into_iter()
        .map(|(r, (n, f))| (r.to_string(), n, f))
        .collect()
}

fn reject_html(title: &str, groups: &[(String, u64, i64)]) -> Html {
    let mut h = Html::default();
    if groups.is_empty() {
        h.para("No rejects.");
        return h;
    }
    let bars: Vec<Bar> = groups
        .iter()
        .map(|(r, n, _)| Bar::single(r, *n as f64))
        .collect();
    plot(&mut h, hbar(title, &bars, &[], "rejected inputs", None));
    let mut t = Table::new(&["reason", "rejected inputs", "files"], &[1, 2]);
    for (r, n, f) in groups {
        t.row(&[r.as_str(), &n.to_string(), &f.to_string()]);
    }
    h.table(&t, "");
    h
}

/// (rule, excluded pairs) in the order the rules were applied.
pub fn exclusion_groups(rows: &[ExcludedRow]) -> Vec<(String, u64)> {
    let mut m: BTreeMap<(i32, &str), u64> = BTreeMap::new();
    for r in rows {
        *m.entry((r.rule_index, &r.rule)).or_default() += 1;
    }
    m.into_iter()
        .map(|((_, r), n)| (r.to_string(), n))
        .collect()
}

/// Curate's remaining pairs after each rule (corpus_card.json `counts_after_each_rule`).
fn funnel(card: &Value) -> Html {
    let mut h = Html::default();
    let Some(steps) = card.get("counts_after_each_rule").and_then(Value::as_array) else {
        return h;
    };
    let mut t = Table::new(&["after", "remaining pairs"], &[1]);
    for s in steps {
        let rule = s.get("rule").and_then(Value::as_str).unwrap_or("?");
        let n = s.get("remaining").map(value_text).unwrap_or_default();
        t.row(&[rule, n.as_str()]);
    }
    h.heading(4, "Remaining pairs after each rule (corpus card)");
    h.table(&t, "");
    h
}

// ---------------------------------------------------------------- labels

/// Per CT-RATE label: (present, uncertain, absent, not mentioned) over a set of reports.
pub type Prevalence = Vec<(String, [u64; 4])>;

/// Counts each label's values over `reports` (each entry one pair: a report may repeat);
/// `values` maps (report, label) to the label value (null = not mentioned).
pub fn prevalence(
    reports: &[String],
    values: &BTreeMap<(String, String), Option<i64>>,
) -> Prevalence {
    CT_RATE_LABELS
        .iter()
        .map(|&label| {
            let mut c = [0u64; 4];
            for r in reports {
                let slot = match values.get(&(r.clone(), label.to_string())) {
                    Some(Some(1)) => 0,
                    Some(Some(-1)) => 1,
                    Some(Some(0)) => 2,
                    _ => 3,
                };
                c[slot] += 1;
            }
            (label.to_string(), c)
        })
        .collect()
}

/// Label prevalence over the curated corpus (or, without curate, over every labelled report).
pub fn labels(inputs: &Inputs) -> Html {
    let mut h = Html::default();
    let values: BTreeMap<(String, String), Option<i64>> =
        match inputs.rows::<LabelsRow>("entities", "labels.parquet") {
            Ok(rows) => rows
                .into_iter()
                .map(|r| ((r.report_id, r.label), r.value.map(i64::from)))
                .collect(),
            Err(e) => {
                h.note(&format!("label prevalence unavailable: {e}"));
                return h;
            }
        };
    let corpus = inputs.rows::<CorpusRow>("curate", "corpus.parquet");
    let (reports, basis): (Vec<String>, String) = match corpus {
        Ok(r) => {
            let r: Vec<String> = r.into_iter().map(|c| c.report_id).collect();
            let n = r.len();
            (
                r,
                format!("the {n} volume–report pairs of the curated corpus"),
            )
        }
        Err(e) => {
            h.note(&format!(
                "no curated corpus ({e}); prevalence is over every labelled report"
            ));
            let r: BTreeSet<String> = values.keys().map(|k| k.0.clone()).collect();
            let n = r.len();
            (r.into_iter().collect(), format!("{n} labelled reports"))
        }
    };
    h.para(&format!(
        "Share of {basis} whose report states each CT-RATE label as present or uncertain \
         (entities stage, rule-based labels)."
    ));
    let prev = prevalence(&reports, &values);
    prevalence_html(&mut h, &prev, reports.len());
    h
}

fn prevalence_html(h: &mut Html, prev: &Prevalence, n: usize) {
    if n == 0 {
        h.note("no reports to count");
        return;
    }
    let pct = |c: u64| 100.0 * c as f64 / n as f64;
    let bars: Vec<Bar> = prev
        .iter()
        .map(|(l, c)| Bar {
            name: l.clone(),
            values: vec![pct(c[0]), pct(c[1])],
        })
        .collect();
    plot(
        h,
        hbar(
            "Label prevalence",
            &bars,
            &["present", "uncertain"],
            "% of reports",
            None,
        ),
    );
    let mut t = Table::new(
        &[
            "label",
            "present",
            "uncertain",
            "absent",
            "not mentioned",
            "present %",
        ],
        &[1, 2, 3, 4, 5],
    );
    for (l, c) in prev {
        t.row(&[
            l.clone(),
            c[0].to_string(),
            c[1].to_string(),
            c[2].to_string(),
            c[3].to_string(),
            format!("{:.1}", pct(c[0])),
        ]);
    }
    h.table(&t, "");
}

// ---------------------------------------------------------------- graph

/// The graph's node degree histogram (and neighbours per report), with its size.
pub fn graph(inputs: &Inputs) -> Html {
    let mut h = Html::default();
    let stats = match inputs.json("graph", "graph_stats.json") {
        Ok(v) => v,
        Err(e) => {
            h.note(&format!("graph statistics unavailable: {e}"));
            return h;
        }
    };
    for (key, title, x, y) in [
        (
            "node_degree",
            "Node degree (edges per collapsed signature node)",
            "degree",
            "nodes",
        ),
        (
            "neighbors_per_report",
            "Neighbours per report (top-k list length)",
            "neighbours",
            "reports",
        ),
    ] {
        match degree_counts(&stats, key) {
            Ok(c) => plot(&mut h, int_histogram(title, &c, x, y, 60)),
            Err(e) => {
                h.note(&format!("graph_stats.json: {e}"));
            }
        }
    }
    let scalars: BTreeMap<&String, &Value> = stats
        .as_object()
        .map(|o| o.iter().filter(|(_, v)| v.is_number()).collect())
        .unwrap_or_default();
    let mut t = Table::new(&["statistic", "value"], &[1]);
    for (k, v) in scalars {
        t.row(&[k.as_str(), &value_text(v)]);
    }
    h.heading(4, "Graph statistics (graph_stats.json)");
    h.table(&t, "No scalar statistics.");
    h
}

/// (degree, count) pairs of a `[{degree, count}]` list in graph_stats.json.
pub fn degree_counts(stats: &Value, key: &str) -> Result<Vec<(i64, u64)>, String> {
    let list = stats
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no {key} list"))?;
    list.iter()
        .map(|e| {
            let d = e.get("degree").and_then(Value::as_i64);
            let c = e.get("count").and_then(Value::as_u64);
            d.zip(c)
                .ok_or_else(|| format!("{key}: entry without degree and count: {e}"))
        })
        .collect()
}

// ---------------------------------------------------------------- losses

/// Training loss per objective over steps (train/metrics.parquet), one small chart each.
pub fn losses(inputs: &Inputs) -> Html {
    let mut h = Html::default();
    let series = inputs
        .rows::<MetricsRow>("train", "metrics.parquet")
        .map(|t| loss_series(&t));
    let series = match series {
        Ok(s) if s.iter().all(|(_, v)| v.is_empty()) => {
            h.note("metrics.parquet has no steps");
            return h;
        }
        Ok(s) => s,
        Err(e) => {
            h.note(&format!("training metrics unavailable: {e}"));
            return h;
        }
    };
    h.para(
        "Unweighted loss of each objective and the weighted total per optimiser step \
         (train/metrics.parquet).",
    );
    h.raw("<div class=\"grid\">\n");
    for (name, pts) in &series {
        let title = format!("{name} loss");
        plot(
            &mut h,
            lines(&title, &[(name, pts.clone())], "step", (370, 240)),
        );
    }
    h.raw("</div>\n");
    let mut t = Table::new(
        &["objective", "first", "last", "min", "steps"],
        &[1, 2, 3, 4],
    );
    for (name, pts) in &series {
        let finite: Vec<f64> = pts.iter().map(|p| p.1).filter(|v| v.is_finite()).collect();
        let first = pts.first().map(|p| num(p.1)).unwrap_or_default();
        let last = pts.last().map(|p| num(p.1)).unwrap_or_default();
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let min = if finite.is_empty() {
            String::new()
        } else {
            num(min)
        };
        t.row(&[name.to_string(), first, last, min, pts.len().to_string()]);
    }
    h.table(&t, "");
    h
}

/// A named curve: (objective, [(step, loss)]).
pub type Curve = (&'static str, Vec<(f64, f64)>);

/// (objective, [(step, loss)]) for [`OBJECTIVES`], points sorted by step.
pub fn loss_series(rows: &[MetricsRow]) -> Vec<Curve> {
    OBJECTIVES
        .iter()
        .map(|&(name, loss)| {
            let mut pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.step as f64, loss(r))).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (name, pts)
        })
        .collect()
}

// ---------------------------------------------------------------- eval

/// The evaluation table (eval/eval.parquet), AUC bars per task and eval.json.
pub fn eval(inputs: &Inputs) -> Html {
    let mut h = Html::default();
    if let Err(e) = inputs.dir("eval") {
        h.note(&format!(
            "{e}: add an eval stage to this stage's inputs to see the evaluation"
        ));
        return h;
    }
    match inputs.rows::<EvalRow>("eval", "eval.parquet") {
        Ok(rows) => eval_html(&mut h, &rows),
        Err(e) => {
            h.note(&e);
        }
    }
    match inputs.json("eval", "eval.json") {
        Ok(v) => {
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            h.raw(&format!(
                "<details><summary>eval.json</summary><pre>{}</pre></details>\n",
                crate::html::escape(&text)
            ));
        }
        Err(e) => {
            h.note(&e);
        }
    }
    h
}

fn eval_html(h: &mut Html, rows: &[EvalRow]) {
    let mut tasks: Vec<&str> = Vec::new();
    for r in rows {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
    }
    for task in &tasks {
        let bars: Vec<Bar> = rows
            .iter()
            .filter(|r| r.task == *task && r.metric == "auc" && !r.label.is_empty())
            .map(|r| Bar::single(&r.label, if r.value.is_finite() { r.value } else { 0.0 }))
            .collect();
        if !bars.is_empty() {
            let title = format!("{task}: AUC per label");
            plot(h, hbar(&title, &bars, &[], "AUC", Some(1.0)));
        }
    }
    let mut t = Table::new(
        &[
            "task",
            "label",
            "metric",
            "value",
            "95% CI",
            "n",
            "positives",
        ],
        &[3, 5, 6],
    );
    for r in rows {
        let ci = r
            .ci_low
            .zip(r.ci_high)
            .map(|(a, b)| format!("[{}, {}]", num(a), num(b)))
            .unwrap_or_default();
        t.row(&[
            r.task.clone(),
            r.label.clone(),
            r.metric.clone(),
            num(r.value),
            ci,
            r.n.to_string(),
            r.n_positive.map(|p| p.to_string()).unwrap_or_default(),
        ]);
    }
    h.table(&t, "eval.parquet has no rows.");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prevalence_counts_each_value_and_missing_rows() {
        let mut v = BTreeMap::new();
        v.insert(("a".to_string(), "Emphysema".to_string()), Some(1));
        v.insert(("b".to_string(), "Emphysema".to_string()), Some(-1));
        v.insert(("c".to_string(), "Emphysema".to_string()), None);
        v.insert(("a".to_string(), "Cardiomegaly".to_string()), Some(0));
        let reports: Vec<String> = ["a", "b", "c", "a"].iter().map(|s| s.to_string()).collect();
        let p = prevalence(&reports, &v);
        assert_eq!(p.len(), 18);
        let get = |l: &str| p.iter().find(|x| x.0 == l).unwrap().1;
        assert_eq!(get("Emphysema"), [2, 1, 0, 1]);
        assert_eq!(get("Cardiomegaly"), [0, 0, 2, 2]);
        assert_eq!(get("Lung nodule"), [0, 0, 0, 4]);
    }

    #[test]
    fn degree_lists_parse_or_explain() {
        let s = json!({"node_degree": [{"degree": 0, "count": 36}, {"degree": 2, "count": 4}]});
        assert_eq!(
            degree_counts(&s, "node_degree").unwrap(),
            vec![(0, 36), (2, 4)]
        );
        assert!(
            degree_counts(&s, "other")
                .unwrap_err()
                .contains("no other list")
        );
        let bad = json!({"node_degree": [{"degree": 1}]});
        assert!(degree_counts(&bad, "node_degree").is_err());
    }

    #[test]
    fn shard_counts_are_per_split_in_split_order() {
        let idx = json!({"splits": {
            "val": {"samples": [1, 2], "shards": [{"bytes": 5}]},
            "train": {"samples": [1, 2, 3], "shards": [{"bytes": 5}, {"bytes": 6}]}
        }});
        let c = shard_counts(&idx);
        assert_eq!(c[0], ("train: samples".to_string(), "3".to_string()));
        assert_eq!(c[2], ("train: shard bytes".to_string(), "11".to_string()));
        assert_eq!(c[3], ("val: samples".to_string(), "2".to_string()));
    }
}
