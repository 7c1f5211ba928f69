//! Entity-grounded alignment (MG-3D's entity grain, "knowledge-enhanced"): the aligned space has
//! one axis per CT-RATE finding.
//!
//! - **Clause targets.** The entities stage's assertions, placed in the clause that holds them
//!   (reports stage `clauses.parquet`, by section and byte offset): +1 for a present finding, -1 for
//!   an absent one, 0 for a finding the clause does not mention. Uncertain mentions stay 0.
//! - **Text head.** A two-layer MLP maps a clause's frozen text features (the clause encoded alone,
//!   as a prompt is) to its targets (mean squared error over the train split's clauses). A report's
//!   embedding is the clipped sum of its clauses' outputs, so "no pleural effusion" pulls the
//!   effusion axis to -1 and clauses about nothing scored add about 0.
//! - **Image head.** A linear map of the image features regresses the report embedding of the same
//!   sample (and, optionally, fine-tunes the image encoder through it).
//!
//! A prompt is one clause, so "{label} is present." and "{label} is not present." land on the
//! label's axis with opposite signs when the text head generalises from the reports' phrasings.

use std::collections::BTreeMap;
use std::path::Path;

use mg3d_core::labels::CT_RATE_LABELS;
use mg3d_core::rows::{ClausesRow, EntitiesRow};
use mg3d_core::stage::StageError;
use mg3d_core::table::read_rows;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, Module, OptimizerConfig};

use crate::align::ImageHead;
use tch::{Device, Kind, Tensor};

use crate::align::{ClauseHead, sample_without_replacement, seeded_linear, standardiser};
use crate::features::{clause_tensor, to_tensor};

/// Per report id, per clause index: the findings the clause asserts (label index, +1 or -1).
pub type ClauseTargets = BTreeMap<String, BTreeMap<i32, Vec<(usize, f32)>>>;

/// Reads the clause spans (reports stage `clauses.parquet`) and the entity mentions (entities
/// stage `entities.parquet`) and places each finding mention in the clause holding its first byte.
/// Anatomy, unlabelled and uncertain mentions are skipped; of two mentions of one finding in a
/// clause, a present one wins.
pub fn read_clause_targets(clauses: &Path, entities: &Path) -> Result<ClauseTargets, StageError> {
    // (report, section) -> clause spans (start, end, clause index).
    type Spans = Vec<(i32, i32, i32)>;
    let mut spans: BTreeMap<(String, String), Spans> = BTreeMap::new();
    for c in read_rows::<ClausesRow>(clauses)? {
        spans.entry((c.report_id, c.section)).or_default().push((
            c.char_start,
            c.char_end,
            c.clause_idx,
        ));
    }
    let mut out = ClauseTargets::new();
    for e in read_rows::<EntitiesRow>(entities)? {
        let Some(label) = e.label.filter(|_| e.r#type == "OBSERVATION") else {
            continue;
        };
        let sign = match e.assertion.as_str() {
            "present" => 1.0,
            "absent" => -1.0,
            _ => continue,
        };
        let Some(li) = CT_RATE_LABELS.iter().position(|l| *l == label) else {
            continue;
        };
        let key = (e.report_id, e.section);
        let at = e.char_start;
        let Some(&(_, _, clause)) = spans
            .get(&key)
            .and_then(|s| s.iter().find(|(a, e, _)| *a <= at && at < *e))
        else {
            continue;
        };
        let v = out.entry(key.0).or_default().entry(clause).or_default();
        match v.iter_mut().find(|(l, _)| *l == li) {
            // Two mentions of one finding in a clause: a present one wins.
            Some(x) => x.1 = x.1.max(sign),
            None => v.push((li, sign)),
        }
    }
    Ok(out)
}

/// The target row (one value per CT-RATE label, in CT-RATE order) of clause `clause` of a report
/// whose targets are `targets`.
pub fn target_row(targets: Option<&BTreeMap<i32, Vec<(usize, f32)>>>, clause: i32) -> Vec<f32> {
    let mut row = vec![0f32; CT_RATE_LABELS.len()];
    if let Some(v) = targets.and_then(|t| t.get(&clause)) {
        for &(l, s) in v {
            row[l] = s;
        }
    }
    row
}

/// The image encoder to fine-tune through the image head: its variables and a function giving
/// the (unstandardised) image features of the train samples at the given indices, with gradient.
pub(crate) type EncoderTuning<'a> = (&'a nn::VarStore, &'a dyn Fn(&Tensor) -> Tensor);

/// Settings of the entity alignment.
pub(crate) struct EntityAlignConfig {
    /// Hidden width of the text head.
    pub hidden: i64,
    /// Steps of the text head (batches of clauses).
    pub text_steps: i64,
    /// Steps of the image head (batches of samples).
    pub steps: i64,
    /// Clauses per text-head step.
    pub text_batch: usize,
    /// Samples per image-head step.
    pub image_batch: usize,
    /// Learning rate of both heads.
    pub lr: f64,
    /// Learning rate of the image encoder when it is fine-tuned.
    pub encoder_lr: f64,
    /// Seed of initialisation and batches.
    pub seed: u64,
}

/// Losses of a fit, for eval.json.
pub(crate) struct EntityAlignReport {
    pub text_first_loss: f64,
    pub text_last_loss: f64,
    pub image_first_loss: f64,
    pub image_last_loss: f64,
}

/// The fitted heads.
pub(crate) struct EntityAligner {
    /// The text head's variables and the image head's, apart so that each fit's optimiser moves
    /// only its own head.
    stores: (nn::VarStore, nn::VarStore),
    text: ClauseHead,
    image: nn::Linear,
    text_norm: (Vec<f32>, Vec<f32>),
    image_norm: (Vec<f32>, Vec<f32>),
}

impl EntityAligner {
    /// Fits the text head on the train clauses (`clauses[i]` with `targets[i]`, per sample), then
    /// the image head on the train samples' frozen features `image` or, with `encoder`, on features
    /// recomputed with gradient so the encoder is fine-tuned too.
    pub fn fit(
        image: &[Vec<f32>],
        clauses: &[Vec<Vec<f32>>],
        targets: &[Vec<Vec<f32>>],
        cfg: &EntityAlignConfig,
        encoder: Option<EncoderTuning>,
    ) -> (EntityAligner, EntityAlignReport) {
        let k = CT_RATE_LABELS.len() as i64;
        let flat: Vec<Vec<f32>> = clauses.iter().flatten().cloned().collect();
        let flat_t: Vec<Vec<f32>> = targets.iter().flatten().cloned().collect();
        let text_norm = standardiser(&flat);
        let image_norm = standardiser(image);
        let d = text_norm.0.len() as i64;
        let f = image_norm.0.len() as i64;
        let text_vs = nn::VarStore::new(Device::Cpu);
        let image_vs = nn::VarStore::new(Device::Cpu);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x656e74697479);
        let text_head = ClauseHead::new(&text_vs.root(), d, cfg.hidden, k, &mut rng);
        let image_head = seeded_linear(image_vs.root() / "image_head", f, k, &mut rng);
        let aligner = EntityAligner {
            stores: (text_vs, image_vs),
            text: text_head,
            image: image_head,
            text_norm,
            image_norm,
        };
        let mut report = EntityAlignReport {
            text_first_loss: f64::NAN,
            text_last_loss: f64::NAN,
            image_first_loss: f64::NAN,
            image_last_loss: f64::NAN,
        };
        // 1. Text head on clauses.
        if !flat.is_empty() && cfg.text_steps > 0 {
            let x = to_tensor(&flat, &aligner.text_norm);
            let y = Tensor::from_slice(&flat_t.concat()).view([flat_t.len() as i64, k]);
            let mut opt = nn::Adam {
                wd: 1e-4,
                ..Default::default()
            }
            .build(&aligner.stores.0, cfg.lr)
            .expect("Adam over the text head");
            for step in 0..cfg.text_steps {
                let idx = sample_without_replacement(flat.len(), cfg.text_batch, &mut rng);
                let pred = aligner.text.rows(&x.index_select(0, &idx));
                let loss = pred.mse_loss(&y.index_select(0, &idx), tch::Reduction::Mean);
                opt.backward_step(&loss);
                let v = loss.double_value(&[]);
                if step == 0 {
                    report.text_first_loss = v;
                }
                report.text_last_loss = v;
            }
        }
        // 2. Image head (and encoder) on the train samples' report embeddings.
        let n = image.len();
        if n >= 2 && cfg.steps > 0 {
            let r = tch::no_grad(|| aligner.reports(clauses));
            let x = to_tensor(image, &aligner.image_norm);
            let mut opt = nn::Adam {
                wd: 1e-4,
                ..Default::default()
            }
            .build(&aligner.stores.1, cfg.lr)
            .expect("Adam over the image head");
            let mut enc_opt = encoder.map(|(evs, _)| {
                nn::Adam::default()
                    .build(evs, cfg.encoder_lr)
                    .expect("Adam over the image encoder")
            });
            let mean = Tensor::from_slice(&aligner.image_norm.0);
            let std = Tensor::from_slice(&aligner.image_norm.1);
            for step in 0..cfg.steps {
                let idx = sample_without_replacement(n, cfg.image_batch, &mut rng);
                let feats = match encoder {
                    Some((_, encode)) => (encode(&idx) - &mean) / &std,
                    None => x.index_select(0, &idx),
                };
                let loss = aligner
                    .image
                    .forward(&feats)
                    .mse_loss(&r.index_select(0, &idx), tch::Reduction::Mean);
                opt.zero_grad();
                if let Some(eo) = enc_opt.as_mut() {
                    eo.zero_grad();
                }
                loss.backward();
                opt.step();
                if let Some(eo) = enc_opt.as_mut() {
                    eo.step();
                }
                let v = loss.double_value(&[]);
                if step == 0 {
                    report.image_first_loss = v;
                }
                report.image_last_loss = v;
            }
        }
        (aligner, report)
    }

    /// Report embeddings: the clipped sum of the clauses' text-head outputs (N × K).
    pub fn reports(&self, clauses: &[Vec<Vec<f32>>]) -> Tensor {
        let (t, m) = clause_tensor(clauses, &self.text_norm);
        let h = self.text.rows(&t) * m.unsqueeze(-1);
        h.sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            .clamp(-1.0, 1.0)
    }

    /// The image head (shares the fitted tensors).
    pub(crate) fn image_head(&self) -> ImageHead {
        ImageHead {
            linear: crate::align::shallow_linear(&self.image),
            norm: self.image_norm.clone(),
        }
    }
}
