//! The `eval` stage's parameters and their checks.

use mg3d_core::labels::CT_RATE_LABELS;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct EvalParams {
    pub(crate) splits: Vec<String>,
    pub(crate) labels: Vec<String>,
    pub(crate) templates: Vec<String>,
    pub(crate) device: String,
    pub(crate) batch_size: i64,
    pub(crate) align_steps: i64,
    pub(crate) align_text_steps: i64,
    pub(crate) align_batch: i64,
    pub(crate) align_lr: f64,
    pub(crate) alignment: String,
    pub(crate) align_encoder: bool,
    pub(crate) align_encoder_lr: f64,
    pub(crate) embed_dim: i64,
    pub(crate) bootstrap: i64,
    pub(crate) recall_k: Vec<i64>,
    pub(crate) map_k: Vec<i64>,
    pub(crate) probe_c: f64,
    pub(crate) unmentioned_as_negative: bool,
    pub(crate) seed: i64,
}

impl EvalParams {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.splits.is_empty() {
            return Err("splits: name at least one split (train, val, test)".into());
        }
        for s in &self.splits {
            if !["train", "val", "test"].contains(&s.as_str()) {
                return Err(format!("splits: {s:?} is not one of train, val, test"));
            }
        }
        for l in &self.labels {
            if !CT_RATE_LABELS.contains(&l.as_str()) {
                return Err(format!(
                    "labels: {l:?} is not a CT-RATE label; use one of: {}",
                    CT_RATE_LABELS.join(", ")
                ));
            }
        }
        if self.templates.len() != 2 || self.templates.iter().any(|t| !t.contains("{label}")) {
            return Err(
                "templates: give two strings containing {label}: the present and the absent prompt"
                    .into(),
            );
        }
        let positive = [
            ("batch_size", self.batch_size),
            ("align_batch", self.align_batch),
            ("embed_dim", self.embed_dim),
        ];
        for (n, v) in positive {
            if v < 1 {
                return Err(format!("{n} must be >= 1"));
            }
        }
        if !["entity", "clip"].contains(&self.alignment.as_str()) {
            return Err(format!(
                "alignment: {:?} is not entity or clip",
                self.alignment
            ));
        }
        if self.align_steps < 0 || self.align_text_steps < 0 || self.bootstrap < 0 {
            return Err("align_steps, align_text_steps and bootstrap must be >= 0".into());
        }
        if self.recall_k.iter().chain(&self.map_k).any(|&k| k < 1) {
            return Err("recall_k and map_k must hold positive integers".into());
        }
        if self.probe_c.is_nan() || self.probe_c <= 0.0 {
            return Err("probe_c must be > 0".into());
        }
        Ok(())
    }

    /// The labels scored: the configured ones, or all 18, in CT-RATE order.
    pub(crate) fn label_set(&self) -> Vec<usize> {
        (0..CT_RATE_LABELS.len())
            .filter(|&i| {
                self.labels.is_empty() || self.labels.iter().any(|l| l == CT_RATE_LABELS[i])
            })
            .collect()
    }
}
