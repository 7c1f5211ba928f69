//! The `eval` stage's parameters and their checks.

use mg3d_core::labels::CT_RATE_LABELS;
use serde_json::json;

use crate::EvalError;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct EvalParams {
        /// splits evaluated (alignment and probes fit on train)
        splits: Vec<String> = json!(["test"]),
        /// CT-RATE labels scored ([] = all 18; those without both classes are skipped)
        labels: Vec<String> = json!([]),
        /// zero-shot prompts: present, absent
        templates: Vec<String> = json!(["{label} is present.", "{label} is not present."]),
        /// cpu | cuda | cuda:N | auto
        device: String = json!("auto"),
        /// samples per encoding batch
        batch_size: i64 = json!(4),
        /// alignment steps on the train split: the CLIP heads, or the entity alignment's image head
        align_steps: i64 = json!(300),
        /// entity alignment: steps of the text head (256 train clauses each) before the image head's
        /// align_steps
        align_text_steps: i64 = json!(1000),
        /// samples per alignment step
        align_batch: i64 = json!(32),
        /// learning rate of the alignment heads
        align_lr: f64 = json!(1e-3),
        /// entity: heads on the CT-RATE finding axes, the text head fitted to the entities stage's
        /// clause-level assertions, the image head to the report embeddings (needs the entities and
        /// reports inputs); clip: CT-CLIP's symmetric InfoNCE with a learned temperature
        alignment: String = json!("entity"),
        /// fine-tune the image encoder during the alignment (CT-CLIP's protocol); false aligns frozen
        /// features
        align_encoder: bool = json!(true),
        /// learning rate of the image encoder during the alignment
        align_encoder_lr: f64 = json!(1e-4),
        /// clip: aligned space width; entity: half the text head's hidden width (the space has the 18
        /// finding axes)
        embed_dim: i64 = json!(64),
        /// bootstrap resamples for the 95% intervals
        bootstrap: i64 = json!(1000),
        /// K of report->volume Recall@K
        recall_k: Vec<i64> = json!([5, 10, 50, 100]),
        /// K of volume->volume MAP@K
        map_k: Vec<i64> = json!([1, 5, 10, 50]),
        /// inverse L2 strength of the linear probe
        probe_c: f64 = json!(1.0),
        /// with an entities input: a label the report does not mention counts as absent (CT-RATE's
        /// convention); uncertain mentions are left out either way
        unmentioned_as_negative: bool = json!(true),
        /// seed of alignment and bootstrap
        seed: i64 = json!(0),
    }
}

impl EvalParams {
    pub(crate) fn check(&self) -> Result<(), EvalError> {
        let bad = |m: String| Err(EvalError::Params(m));
        if self.splits.is_empty() {
            return bad("splits: name at least one split (train, val, test)".into());
        }
        for s in &self.splits {
            if !["train", "val", "test"].contains(&s.as_str()) {
                return bad(format!("splits: {s:?} is not one of train, val, test"));
            }
        }
        for l in &self.labels {
            if !CT_RATE_LABELS.contains(&l.as_str()) {
                return bad(format!(
                    "labels: {l:?} is not a CT-RATE label; use one of: {}",
                    CT_RATE_LABELS.join(", ")
                ));
            }
        }
        if self.templates.len() != 2 || self.templates.iter().any(|t| !t.contains("{label}")) {
            return bad(
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
                return bad(format!("{n} must be >= 1"));
            }
        }
        if !["entity", "clip"].contains(&self.alignment.as_str()) {
            return bad(format!(
                "alignment: {:?} is not entity or clip",
                self.alignment
            ));
        }
        if self.align_steps < 0 || self.align_text_steps < 0 || self.bootstrap < 0 {
            return bad("align_steps, align_text_steps and bootstrap must be >= 0".into());
        }
        if self.recall_k.iter().chain(&self.map_k).any(|&k| k < 1) {
            return bad("recall_k and map_k must hold positive integers".into());
        }
        if self.probe_c.is_nan() || self.probe_c <= 0.0 {
            return bad("probe_c must be > 0".into());
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
