//! The evaluation tasks' scoring and their table: zero-shot and probe label scores with bootstrap
//! intervals, and the rows of eval.parquet.

use std::collections::BTreeMap;
use std::path::Path;

use mg3d_core::labels::CT_RATE_LABELS;
use mg3d_core::rows::{EvalRow, LabelsRow};
use mg3d_core::stage::StageError;
use mg3d_core::table::read_rows;

use serde_json::{Value, json};

use crate::metrics::{Confusion, auc, bootstrap, youden_threshold};
use crate::params::EvalParams;

/// Binary scores of one label with bootstrap intervals.
pub(crate) struct LabelScores {
    pub(crate) auc: f64,
    pub(crate) auc_ci: Option<(f64, f64)>,
    pub(crate) threshold: f64,
    /// (f1, accuracy, precision) at the threshold and their intervals.
    pub(crate) at_threshold: [(f64, Option<(f64, f64)>); 3],
    pub(crate) n: usize,
    pub(crate) n_positive: usize,
}

pub(crate) fn score_label(
    scores: &[f64],
    labels: &[bool],
    resamples: usize,
    seed: u64,
) -> Option<LabelScores> {
    let a = auc(scores, labels)?;
    let t = youden_threshold(scores, labels)?;
    let c = Confusion::at(scores, labels, t);
    let n = scores.len();
    let ci: Vec<Option<(f64, f64)>> = bootstrap(n, resamples, seed, |rows| {
        let s: Vec<f64> = rows.iter().map(|&r| scores[r]).collect();
        let l: Vec<bool> = rows.iter().map(|&r| labels[r]).collect();
        let cb = Confusion::at(&s, &l, t);
        vec![
            auc(&s, &l),
            Some(cb.f1()),
            Some(cb.accuracy()),
            Some(cb.precision()),
        ]
    })
    .into_iter()
    .map(|i| i.map(|i| (i.low, i.high)))
    .collect();
    let ci = |k: usize| ci.get(k).copied().flatten();
    Some(LabelScores {
        auc: a,
        auc_ci: ci(0),
        threshold: t,
        at_threshold: [
            (c.f1(), ci(1)),
            (c.accuracy(), ci(2)),
            (c.precision(), ci(3)),
        ],
        n,
        n_positive: labels.iter().filter(|&&x| x).count(),
    })
}

/// Bootstrap interval of the mean AUC over labels (labels undefined in a resample are left out
/// of that resample's mean).
pub(crate) fn mean_auc_ci(
    per_label: &[(Vec<f64>, Vec<Option<bool>>)],
    n: usize,
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64)> {
    let ci = bootstrap(n, resamples, seed, |pick| {
        let aucs: Vec<f64> = per_label
            .iter()
            .filter_map(|(s, l)| {
                let (mut ss, mut ll) = (vec![], vec![]);
                for &r in pick {
                    if let Some(y) = l[r] {
                        ss.push(s[r]);
                        ll.push(y);
                    }
                }
                auc(&ss, &ll)
            })
            .collect();
        vec![(!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)]
    });
    ci.first().copied().flatten().map(|i| (i.low, i.high))
}

pub(crate) fn label_seed(seed: u64, task: &str, label: usize) -> u64 {
    let h = fnv1a(&format!("{task}/{label}"));
    seed ^ h
}

pub(crate) fn fnv1a(s: &str) -> u64 {
    // FNV-1a: a fixed, dependency-free seed derivation.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Scores every label with known values in `labels`; adds rows and returns the summary.
pub(crate) fn label_task(
    task: &'static str,
    scores_of: impl Fn(usize) -> Vec<f64>,
    labels: &[Vec<Option<bool>>],
    label_set: &[usize],
    p: &EvalParams,
    rows_out: &mut Vec<EvalRow>,
) -> Value {
    let mut per_label = serde_json::Map::new();
    let mut aucs = vec![];
    let mut kept = vec![];
    for &li in label_set {
        let all = scores_of(li);
        let (mut s, mut y) = (vec![], vec![]);
        for (k, l) in labels.iter().enumerate() {
            if let Some(v) = l[li] {
                s.push(all[k]);
                y.push(v);
            }
        }
        let name = CT_RATE_LABELS[li];
        let Some(ls) = score_label(
            &s,
            &y,
            p.bootstrap as usize,
            label_seed(p.seed as u64, task, li),
        ) else {
            per_label.insert(
                name.into(),
                json!({"skipped": "needs positive and negative samples", "n": s.len()}),
            );
            continue;
        };
        let push =
            |rows_out: &mut Vec<EvalRow>, metric: &str, value: f64, ci: Option<(f64, f64)>| {
                rows_out.push(EvalRow {
                    task: task.into(),
                    label: name.into(),
                    metric: metric.into(),
                    value,
                    ci_low: ci.map(|c| c.0),
                    ci_high: ci.map(|c| c.1),
                    n: ls.n as i64,
                    n_positive: Some(ls.n_positive as i64),
                })
            };
        push(rows_out, "auc", ls.auc, ls.auc_ci);
        if task == "zero_shot" {
            push(rows_out, "f1", ls.at_threshold[0].0, ls.at_threshold[0].1);
            push(
                rows_out,
                "accuracy",
                ls.at_threshold[1].0,
                ls.at_threshold[1].1,
            );
            push(
                rows_out,
                "precision",
                ls.at_threshold[2].0,
                ls.at_threshold[2].1,
            );
            push(rows_out, "threshold", ls.threshold, None);
        }
        per_label.insert(
            name.into(),
            json!({"auc": ls.auc, "auc_ci": ls.auc_ci, "f1": ls.at_threshold[0].0,
                   "accuracy": ls.at_threshold[1].0, "precision": ls.at_threshold[2].0,
                   "threshold": ls.threshold, "n": ls.n, "n_positive": ls.n_positive}),
        );
        aucs.push(ls.auc);
        kept.push((all, labels.iter().map(|l| l[li]).collect::<Vec<_>>()));
    }
    let mean = if aucs.is_empty() {
        f64::NAN
    } else {
        aucs.iter().sum::<f64>() / aucs.len() as f64
    };
    let ci = mean_auc_ci(
        &kept,
        labels.len(),
        p.bootstrap as usize,
        label_seed(p.seed as u64, task, 999),
    );
    rows_out.push(EvalRow {
        task: task.into(),
        label: "mean".into(),
        metric: "auc".into(),
        value: mean,
        ci_low: ci.map(|c| c.0),
        ci_high: ci.map(|c| c.1),
        n: labels.len() as i64,
        n_positive: None,
    });
    json!({"mean_auc": mean, "mean_auc_ci": ci, "labels_scored": aucs.len(), "per_label": per_label})
}

/// Per report, the 18 labels from the entities stage's long-form `labels.parquet`: 1 present,
/// 0 absent, -1 uncertain (unknown), null not mentioned (absent or unknown per the policy).
pub(crate) fn read_report_labels(
    path: &Path,
    unmentioned_as_negative: bool,
) -> Result<BTreeMap<String, Vec<Option<bool>>>, StageError> {
    let mut out: BTreeMap<String, Vec<Option<bool>>> = BTreeMap::new();
    let default = if unmentioned_as_negative {
        Some(false)
    } else {
        None
    };
    for row in read_rows::<LabelsRow>(path)? {
        let Some(k) = CT_RATE_LABELS.iter().position(|l| *l == row.label) else {
            continue;
        };
        let v = out
            .entry(row.report_id)
            .or_insert_with(|| vec![default; CT_RATE_LABELS.len()]);
        v[k] = match row.value {
            None => default,
            Some(1) => Some(true),
            Some(0) => Some(false),
            Some(_) => None,
        };
    }
    Ok(out)
}
