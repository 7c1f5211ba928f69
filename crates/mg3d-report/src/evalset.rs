//! Scoring the entity extractor on independently written, annotated reports
//! (`tests/report-eval/`, format in `scripts/report_eval_validate.py`).
//!
//! Per report and CT-RATE label, the truth is the annotated mentions' aggregate (present if any
//! mention is present, else uncertain if any is uncertain, else absent if any is absent;
//! hypothetical mentions count for nothing), the prediction the entities stage's
//! ([`crate::entities::aggregate`] over the extracted observations, hypothetical ones left out).
//! Scores: micro-F1 of "present" over the 18 labels, per-label F1, and the share of uncertain-only
//! findings predicted uncertain. Every disagreement is listed with the mentions behind it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ReportError;
use crate::entities::{EntityType, Extractor, aggregate};
use crate::text::{clauses, sentences};
use mg3d_core::labels::CT_RATE_LABELS;

/// One annotated mention.
#[derive(Debug, Clone, Deserialize)]
pub struct TruthMention {
    /// `findings` or `impression`.
    pub section: String,
    /// The span's text.
    pub text: String,
    /// Which occurrence of `text` in the section (1-based).
    #[serde(default = "one")]
    pub occurrence: usize,
    /// CT-RATE label.
    pub label: String,
    /// present | absent | uncertain | hypothetical.
    pub assertion: String,
}

fn one() -> usize {
    1
}

/// One annotated report.
#[derive(Debug, Clone, Deserialize)]
pub struct EvalReport {
    /// Report id.
    pub id: String,
    /// Writing style (ctrate, us_structured, uk_free, followup).
    pub style: String,
    /// Section name -> text.
    pub sections: BTreeMap<String, String>,
    /// Every annotated mention.
    pub mentions: Vec<TruthMention>,
}

/// Reads every report of a JSON-lines file.
pub fn load(path: &Path) -> Result<Vec<EvalReport>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| ReportError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("line {}: {e}", i + 1),
                ),
            })
        })
        .collect()
}

/// Counts of one label.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LabelCounts {
    /// Reports where the label is present in the truth.
    pub positives: usize,
    /// Present in both.
    pub tp: usize,
    /// Predicted present, not present in the truth.
    pub fp: usize,
    /// Present in the truth, not predicted present.
    pub fn_: usize,
    /// F1 of present.
    pub f1: f64,
}

/// The scores of one evaluation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    /// Reports scored.
    pub reports: usize,
    /// Micro-averaged precision, recall and F1 of "present" over the 18 labels.
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// F1.
    pub micro_f1: f64,
    /// Report-label pairs whose truth is uncertain only, and how many were predicted uncertain.
    pub uncertain_only: usize,
    /// Of those, predicted uncertain.
    pub uncertain_found: usize,
    /// Per label.
    pub per_label: BTreeMap<String, LabelCounts>,
    /// Each disagreement: report id, label, truth, prediction, and the predicted mentions.
    pub errors: Vec<String>,
}

fn f1(tp: usize, fp: usize, fn_: usize) -> f64 {
    if tp == 0 {
        return 0.0;
    }
    2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
}

/// The predicted observations of one report: (label, assertion, trigger, section, surface).
fn predict(x: &Extractor, r: &EvalReport) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    for sec in ["findings", "impression"] {
        let Some(text) = r.sections.get(sec) else {
            continue;
        };
        for s in sentences(text) {
            let cls: Vec<_> = clauses(text, s.clone())
                .into_iter()
                .map(|c| c.start - s.start..c.end - s.start)
                .collect();
            let whole = std::iter::once(0..s.len());
            let cls: Vec<_> = if cls.is_empty() { whole.collect() } else { cls };
            let sent = &text[s.clone()];
            for e in x.extract(sent, &cls) {
                if e.etype != EntityType::Observation || e.hypothetical {
                    continue;
                }
                if let Some(l) = e.label {
                    let why = format!(
                        "{sec}: {:?} {} ({})",
                        &sent[e.span.clone()],
                        e.assertion,
                        e.trigger.as_deref().unwrap_or("-")
                    );
                    out.push((l, e.assertion, why));
                }
            }
        }
    }
    out
}

fn name(v: Option<i32>) -> &'static str {
    match v {
        Some(1) => "present",
        Some(-1) => "uncertain",
        Some(0) => "absent",
        _ => "unmentioned",
    }
}

/// Scores the extractor `x` on `reports`.
pub fn score(x: &Extractor, reports: &[EvalReport]) -> Scores {
    let mut s = Scores {
        reports: reports.len(),
        ..Default::default()
    };
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for r in reports {
        let pred = predict(x, r);
        for label in CT_RATE_LABELS {
            let truth: Vec<&str> = r
                .mentions
                .iter()
                .filter(|m| m.label == label && m.assertion != "hypothetical")
                .map(|m| m.assertion.as_str())
                .collect();
            let guessed: Vec<&str> = pred.iter().filter(|p| p.0 == label).map(|p| p.1).collect();
            let (t, g) = (aggregate(&truth), aggregate(&guessed));
            let c = s.per_label.entry(label.to_string()).or_default();
            match (t == Some(1), g == Some(1)) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (true, false) => c.fn_ += 1,
                _ => {}
            }
            c.positives += (t == Some(1)) as usize;
            if t == Some(-1) {
                s.uncertain_only += 1;
                s.uncertain_found += (g == Some(-1)) as usize;
            }
            let counts = (t == Some(1)) != (g == Some(1)) || (t == Some(-1) && g != Some(-1));
            if counts {
                let why: Vec<&str> = pred
                    .iter()
                    .filter(|p| p.0 == label)
                    .map(|p| p.2.as_str())
                    .collect();
                let truth_spans: Vec<String> = r
                    .mentions
                    .iter()
                    .filter(|m| m.label == label)
                    .map(|m| format!("{}: {:?} {}", m.section, m.text, m.assertion))
                    .collect();
                s.errors.push(format!(
                    "{} {label}: truth {} [{}], predicted {} [{}]",
                    r.id,
                    name(t),
                    truth_spans.join("; "),
                    name(g),
                    why.join("; ")
                ));
            }
        }
    }
    for c in s.per_label.values_mut() {
        c.f1 = f1(c.tp, c.fp, c.fn_);
        tp += c.tp;
        fp += c.fp;
        fn_ += c.fn_;
    }
    s.precision = tp as f64 / (tp + fp).max(1) as f64;
    s.recall = tp as f64 / (tp + fn_).max(1) as f64;
    s.micro_f1 = f1(tp, fp, fn_);
    s
}
