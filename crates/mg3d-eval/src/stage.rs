//! The `eval` stage: how well a trained model knows the corpus's findings.
//!
//! 1. **Features.** The trained model (train stage `final/`) encodes every sample of the train
//!    split and of the evaluated splits: frozen image features (per Swin stage the spatial mean and
//!    maximum, then the pooled unimodal image vector) and, per report, its clauses' text features
//!    (each distinct clause encoded alone by the frozen text encoder, as a prompt is).
//! 2. **Alignment** on the train split only (MG-3D's zero-shot protocol aligns the pre-trained
//!    encoder on the train split first). Two methods:
//!    - `entity` (default; MG-3D's entity grain, see `entity_align.rs`): the aligned space has one
//!      axis per CT-RATE finding. A clause-level text head is fitted to the entities stage's
//!      assertions placed in their clauses (+1 present, -1 absent, 0 not mentioned); a report is the
//!      clipped sum of its clauses; a linear image head regresses its report's embedding.
//!    - `clip` (CT-CLIP): a linear image head and a clause-level MLP text head trained with the
//!      symmetric InfoNCE of CLIP and a learned temperature.
//!
//!    Either can fine-tune the image encoder through the image head (`align_encoder`).
//!    Initialisation and batches come from the stage seed, so reruns are identical.
//! 3. **Zero-shot labels** (CT-CLIP): per label, the two templates ("{label} is present." /
//!    "{label} is not present.") go through the same text path; a volume's score is the softmax
//!    probability of the first. AUC, and F1 / accuracy / precision at the label's Youden point,
//!    each with a 95% percentile bootstrap interval (1,000 seeded resamples; the threshold is the
//!    one chosen on all samples). A diagnostic "text ceiling" scores the reports' own embeddings
//!    with the same prompts.
//! 4. **Retrieval.** Report→volume Recall@K in the aligned space with its random baseline K/N;
//!    volume→volume MAP@K with relevance by label overlap (see [`crate::metrics::label_overlap`])
//!    against the mean of seeded random rankings.
//! 5. **Linear probe.** Per label, L2 logistic regression on the frozen image features of the
//!    train split, AUC on the evaluated splits (with bootstrap interval).
//!
//! Outputs: `eval.parquet` (schemas/eval.json) and `eval.json` (summary, settings).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use mg3d_core::labels::CT_RATE_LABELS;
use mg3d_core::stage::{InputDecl, ParamDef, ParamType, Params, Stage, StageContext, StageError};
use mg3d_core::table::{TableSchema, write_columns};
use mg3d_report::tokens::{load_tokenizer, tokenize_clauses};
use mg3d_shard::{Loader, LoaderConfig, ShardIndex};
use mg3d_train::stage::{TrainedModel, load_trained};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::entity_align::{
    ClauseTargets, EntityAlignConfig, EntityAligner, read_clause_targets, target_row,
};
use crate::metrics::{
    Confusion, auc, bootstrap, label_overlap, map_at_k, random_map_at_k, random_recall_at_k,
    recall_at_k, youden_threshold,
};
use crate::probe::fit_logistic;

/// The `eval` stage.
pub struct EvalStage;

#[derive(Debug, Clone, Deserialize)]
struct P {
    splits: Vec<String>,
    labels: Vec<String>,
    templates: Vec<String>,
    device: String,
    batch_size: i64,
    align_steps: i64,
    align_text_steps: i64,
    align_batch: i64,
    align_lr: f64,
    alignment: String,
    align_encoder: bool,
    align_encoder_lr: f64,
    embed_dim: i64,
    bootstrap: i64,
    recall_k: Vec<i64>,
    map_k: Vec<i64>,
    probe_c: f64,
    unmentioned_as_negative: bool,
    seed: i64,
}

impl P {
    fn check(&self) -> Result<(), String> {
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
    fn label_set(&self) -> Vec<usize> {
        (0..CT_RATE_LABELS.len())
            .filter(|&i| {
                self.labels.is_empty() || self.labels.iter().any(|l| l == CT_RATE_LABELS[i])
            })
            .collect()
    }
}

/// Encoded samples of some splits.
struct Encoded {
    /// Frozen image features, N×F.
    image: Vec<Vec<f32>>,
    /// Per sample, the report's clause features (clauses × D), each clause encoded alone.
    text: Vec<Vec<Vec<f32>>>,
    /// Per sample, the report's clauses: (clause index, id in the [`ClauseBank`]).
    clauses: Vec<Vec<(i32, usize)>>,
    /// Labels per sample (18; `None` unknown).
    labels: Vec<Vec<Option<bool>>>,
    /// Report pseudonym per sample.
    report_ids: Vec<String>,
    /// The model-sized volumes (batches of B×1×D×H×W, CPU), kept when the encoder is fine-tuned
    /// (train: its input; evaluated splits: re-encoded after it).
    volumes: Vec<Tensor>,
}

impl Encoded {
    /// The kept volumes as one N×1×D×H×W tensor (empty when none were kept).
    fn volume_tensor(&self) -> Tensor {
        if self.volumes.is_empty() {
            Tensor::zeros([0], tch::kind::FLOAT_CPU)
        } else {
            Tensor::cat(&self.volumes, 0)
        }
    }

    fn empty() -> Encoded {
        Encoded {
            image: vec![],
            text: vec![],
            clauses: vec![],
            labels: vec![],
            report_ids: vec![],
            volumes: vec![],
        }
    }
}

/// The distinct clause token sequences of all encoded reports. Each is encoded alone, as
/// `[CLS] clause [SEP]` (MG-3D tokenises clauses alone for its inter-patient targets), so a
/// report's clauses and a one-clause prompt go through the text encoder the same way.
#[derive(Default)]
struct ClauseBank {
    ids: BTreeMap<Vec<i64>, usize>,
    sequences: Vec<Vec<i64>>,
    /// `[CLS]` and `[SEP]` ids, from the first report seen.
    specials: Option<(i64, i64)>,
}

impl ClauseBank {
    /// Splits each report of a batch (B×L ids, mask and clause index) into its clauses' token
    /// sequences; returns per sample the (clause index, bank id) list.
    fn add_batch(&mut self, inp: &mg3d_train::model::Inputs) -> Vec<Vec<(i32, usize)>> {
        let v = |t: &Tensor| -> Vec<i64> {
            t.to_device(Device::Cpu)
                .to_kind(Kind::Int64)
                .reshape([-1])
                .try_into()
                .unwrap_or_default()
        };
        let (b, l) = inp.input_ids.size2().expect("B×L ids");
        let (ids, mask, clause) = (
            v(&inp.input_ids),
            v(&inp.attention_mask),
            v(&inp.clause_index),
        );
        (0..b as usize)
            .map(|i| {
                let row = i * l as usize..(i + 1) * l as usize;
                let (ids, mask, clause) = (&ids[row.clone()], &mask[row.clone()], &clause[row]);
                let len = mask.iter().filter(|&&m| m != 0).count();
                if self.specials.is_none() && len >= 2 {
                    self.specials = Some((ids[0], ids[len - 1]));
                }
                let mut per: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
                for k in 0..len {
                    if clause[k] >= 0 {
                        per.entry(clause[k] as i32).or_default().push(ids[k]);
                    }
                }
                per.into_iter().map(|(c, seq)| (c, self.add(seq))).collect()
            })
            .collect()
    }

    /// The bank id of a clause token sequence (without `[CLS]`/`[SEP]`), added if new.
    fn add(&mut self, seq: Vec<i64>) -> usize {
        if let Some(&id) = self.ids.get(&seq) {
            return id;
        }
        let id = self.sequences.len();
        self.ids.insert(seq.clone(), id);
        self.sequences.push(seq);
        id
    }

    /// The text features of every clause (bank order), encoded alone in batches.
    fn encode(&self, tm: &TrainedModel, batch: usize) -> Vec<Vec<f32>> {
        let Some((cls, sep)) = self.specials else {
            return vec![];
        };
        let dev = tm.model.device();
        let mut out = Vec::with_capacity(self.sequences.len());
        for chunk in self.sequences.chunks(batch.max(1)) {
            let l = chunk.iter().map(Vec::len).max().unwrap_or(0) + 2;
            let (mut ids, mut mask, mut clause) = (vec![], vec![], vec![]);
            for seq in chunk {
                ids.push(cls);
                ids.extend(seq);
                ids.push(sep);
                ids.extend(std::iter::repeat_n(0, l - seq.len() - 2));
                mask.extend(std::iter::repeat_n(1i64, seq.len() + 2));
                mask.extend(std::iter::repeat_n(0i64, l - seq.len() - 2));
                clause.push(-1i64);
                clause.extend(std::iter::repeat_n(0i64, seq.len()));
                clause.extend(std::iter::repeat_n(-1i64, l - seq.len() - 1));
            }
            let shape = [chunk.len() as i64, l as i64];
            let t = |v: Vec<i64>| Tensor::from_slice(&v).view(shape).to_device(dev);
            let (f, _) =
                tch::no_grad(|| tm.model.clause_text_features(&t(ids), &t(mask), &t(clause)));
            out.extend(rows(&f.select(1, 0)));
        }
        out
    }
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let (n, d) = t.size2().expect("2-D");
    let flat: Vec<f32> = t.view([-1]).try_into().unwrap_or_default();
    (0..n as usize)
        .map(|i| flat[i * d as usize..(i + 1) * d as usize].to_vec())
        .collect()
}

fn encode_split(
    tm: &TrainedModel,
    index: &ShardIndex,
    split: &str,
    batch_size: usize,
    keep_volumes: bool,
    bank: &mut ClauseBank,
    out: &mut Encoded,
) -> Result<(), String> {
    if index
        .split(split)
        .map(|s| s.samples.is_empty())
        .unwrap_or(true)
    {
        return Ok(());
    }
    let loader = Loader::new(
        index,
        LoaderConfig {
            split: split.into(),
            batch_size,
            shuffle: false,
            drop_last: false,
            workers: 0,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let device = tm.model.device();
    let entries = &index.split(split).map_err(|e| e.to_string())?.samples;
    for batch in loader {
        let batch = batch.map_err(|e| e.to_string())?;
        out.report_ids.extend(
            batch
                .samples
                .iter()
                .map(|&s| entries[s as usize].report_id.clone()),
        );
        let inp = mg3d_train::trainer::to_inputs(&batch, tm.input, device)?;
        let img = tch::no_grad(|| tm.model.image_features(&inp.volume));
        out.image.extend(rows(&img));
        if keep_volumes {
            out.volumes.push(inp.volume.to_device(Device::Cpu));
        }
        out.clauses.extend(bank.add_batch(&inp));
        let lab = batch
            .field("labels")
            .ok_or("the shards have no labels field")?;
        let width = lab.shape.get(1).copied().unwrap_or(0);
        let v = lab.to_i64().unwrap_or_default();
        for c in v.chunks(width.max(1)) {
            out.labels.push(
                c.iter()
                    .map(|&x| match x {
                        1 => Some(true),
                        0 => Some(false),
                        _ => None,
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}

/// Token budget of a prompt (longer prompts are truncated).
const PROMPT_TOKENS: usize = 64;

/// Tokenises each prompt as a one-clause report with the tokens stage's code and adds its clause
/// tokens to `bank`, so prompts and report clauses are encoded by one path; returns the bank ids.
fn bank_prompts(
    tm: &TrainedModel,
    prompts: &[String],
    bank: &mut ClauseBank,
) -> Result<Vec<usize>, String> {
    let tk = load_tokenizer(&tm.text_model, PROMPT_TOKENS)?;
    prompts
        .iter()
        .map(|p| {
            let t = tokenize_clauses(&tk, std::slice::from_ref(p))?;
            let seq: Vec<i64> = t
                .ids
                .iter()
                .zip(&t.clause)
                .filter(|(_, c)| **c >= 0)
                .map(|(&id, _)| id as i64)
                .collect();
            Ok(bank.add(seq))
        })
        .collect()
}

/// Padded N×S×D clause tensor (standardised) and its N×S float mask.
pub(crate) fn clause_tensor(x: &[Vec<Vec<f32>>], norm: &(Vec<f32>, Vec<f32>)) -> (Tensor, Tensor) {
    let d = norm.0.len();
    let s = x.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut flat = vec![0f32; x.len() * s * d];
    let mut mask = vec![0f32; x.len() * s];
    for (i, clauses) in x.iter().enumerate() {
        for (j, c) in clauses.iter().enumerate() {
            mask[i * s + j] = 1.0;
            for k in 0..d {
                flat[(i * s + j) * d + k] = (c[k] - norm.0[k]) / norm.1[k];
            }
        }
    }
    (
        Tensor::from_slice(&flat).view([x.len() as i64, s as i64, d as i64]),
        Tensor::from_slice(&mask).view([x.len() as i64, s as i64]),
    )
}

/// Per-column mean and standard deviation of the train rows (std 1 where constant).
pub(crate) fn standardiser(x: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let d = x.first().map_or(0, Vec::len);
    let n = x.len().max(1) as f64;
    let mut mean = vec![0.0f64; d];
    for r in x {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += *v as f64 / n;
        }
    }
    let mut var = vec![0.0f64; d];
    for r in x {
        for k in 0..d {
            var[k] += (r[k] as f64 - mean[k]).powi(2) / n;
        }
    }
    (
        mean.iter().map(|&m| m as f32).collect(),
        var.iter()
            .map(|&v| if v > 1e-12 { v.sqrt() as f32 } else { 1.0 })
            .collect(),
    )
}

pub(crate) fn to_tensor(x: &[Vec<f32>], norm: &(Vec<f32>, Vec<f32>)) -> Tensor {
    let d = norm.0.len();
    let flat: Vec<f32> = x
        .iter()
        .flat_map(|r| (0..d).map(|k| (r[k] - norm.0[k]) / norm.1[k]))
        .collect();
    Tensor::from_slice(&flat).view([x.len() as i64, d as i64])
}

/// The text head: a two-layer MLP applied to every clause, then the mean over the report's
/// clauses. Clause-level, so a prompt (one clause) and a report (many) meet in one space, and
/// the non-linearity can map uninformative clauses ("no pleural effusion") apart from findings.
pub(crate) struct ClauseHead {
    a: nn::Linear,
    b: nn::Linear,
}

impl ClauseHead {
    /// The two layers (`text_head_a`, `text_head_b` under `root`), seeded from `rng`.
    pub(crate) fn new(
        root: &nn::Path,
        d_in: i64,
        hidden: i64,
        d_out: i64,
        rng: &mut ChaCha8Rng,
    ) -> ClauseHead {
        ClauseHead {
            a: seeded_linear(root / "text_head_a", d_in, hidden, rng),
            b: seeded_linear(root / "text_head_b", hidden, d_out, rng),
        }
    }

    /// The head on each clause row (… × D → … × out).
    pub(crate) fn rows(&self, x: &Tensor) -> Tensor {
        self.b.forward(&self.a.forward(x).gelu("none"))
    }

    /// The mean of a report's clause outputs (N×S×D clauses, N×S mask → N × out).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let h = self.rows(x);
        let m = mask.unsqueeze(-1);
        (h * &m).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            / m.sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .clamp_min(1.0)
    }
}

/// The aligned space: image and text heads and the learned temperature.
struct Aligner {
    _vs: nn::VarStore,
    img: nn::Linear,
    txt: ClauseHead,
    logit_scale: Tensor,
    img_norm: (Vec<f32>, Vec<f32>),
    txt_norm: (Vec<f32>, Vec<f32>),
}

/// A `rows × cols` matrix of N(0, std²) draws from `rng` (Box-Muller).
fn gaussian(rng: &mut ChaCha8Rng, rows: i64, cols: i64, std: f64) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Tensor::from_slice(&v).view([rows, cols])
}

/// A linear layer under `path` with N(0, 1/d_in) weights drawn from `rng` and zero bias.
pub(crate) fn seeded_linear(
    path: nn::Path,
    d_in: i64,
    d_out: i64,
    rng: &mut ChaCha8Rng,
) -> nn::Linear {
    nn::Linear {
        ws: path.var_copy(
            "weight",
            &gaussian(rng, d_out, d_in, 1.0 / (d_in as f64).sqrt()),
        ),
        bs: Some(path.var_copy("bias", &Tensor::zeros([d_out], tch::kind::FLOAT_CPU))),
    }
}

/// `take` of the indices 0..n in a seeded random order (a sample without replacement).
pub(crate) fn sample_without_replacement(n: usize, take: usize, rng: &mut ChaCha8Rng) -> Tensor {
    let mut order: Vec<i64> = (0..n as i64).collect();
    crate::metrics::shuffle(&mut order, rng);
    Tensor::from_slice(&order[..take.min(n)])
}

struct AlignReport {
    first_loss: f64,
    last_loss: f64,
    temperature: f64,
}

impl Aligner {
    /// Fits the heads on the train split; with `encoder`, the image encoder (Swin and the
    /// unimodal image pooler) is fine-tuned too, from the kept train volumes.
    fn fit(
        train: &Encoded,
        p: &P,
        mut encoder: Option<&mut TrainedModel>,
    ) -> (Aligner, AlignReport) {
        let img_norm = standardiser(&train.image);
        let all_clauses: Vec<Vec<f32>> = train.text.iter().flatten().cloned().collect();
        let txt_norm = standardiser(&all_clauses);
        let x = to_tensor(&train.image, &img_norm);
        let (t, tmask) = clause_tensor(&train.text, &txt_norm);
        let (fi, ft, e) = (
            img_norm.0.len() as i64,
            txt_norm.0.len() as i64,
            p.embed_dim,
        );
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed as u64 ^ 0x616c69676e);
        let img = seeded_linear(&root / "image_head", fi, e, &mut rng);
        let txt = ClauseHead::new(&root, ft, 2 * e, e, &mut rng);
        let logit_scale =
            root.var_copy("logit_scale", &Tensor::from_slice(&[(1.0f32 / 0.07).ln()]));
        let n = train.image.len();
        let mut report = AlignReport {
            first_loss: f64::NAN,
            last_loss: f64::NAN,
            temperature: 0.07,
        };
        if n >= 2 && p.align_steps > 0 {
            let mut opt = nn::Adam {
                wd: 1e-4,
                ..Default::default()
            }
            .build(&vs, p.align_lr)
            .expect("Adam over the alignment heads");
            let bs = (p.align_batch as usize).min(n);
            let volumes = train.volume_tensor();
            let img_mean = Tensor::from_slice(&img_norm.0);
            let img_std = Tensor::from_slice(&img_norm.1);
            let mut enc_opt = match encoder.as_deref_mut() {
                Some(tm) => {
                    tm.vs.unfreeze();
                    Some(
                        nn::Adam::default()
                            .build(&tm.vs, p.align_encoder_lr)
                            .expect("Adam over the image encoder"),
                    )
                }
                None => None,
            };
            for step in 0..p.align_steps {
                let idx = sample_without_replacement(n, bs, &mut rng);
                let features = match encoder.as_deref() {
                    Some(tm) => {
                        let vol = volumes.index_select(0, &idx).to_device(tm.model.device());
                        let f = tm.model.image_features(&vol).to_device(Device::Cpu);
                        (f - &img_mean) / &img_std
                    }
                    None => x.index_select(0, &idx),
                };
                let zi = l2(&img.forward(&features));
                let zt = l2(&txt.forward(&t.index_select(0, &idx), &tmask.index_select(0, &idx)));
                let scale = logit_scale.clamp(0.0, 100f64.ln()).exp();
                let logits = zi.matmul(&zt.tr()) * &scale;
                let target = Tensor::arange(bs as i64, tch::kind::INT64_CPU);
                let loss = (logits.cross_entropy_for_logits(&target)
                    + logits.tr().cross_entropy_for_logits(&target))
                    / 2.0;
                match enc_opt.as_mut() {
                    Some(eo) => {
                        opt.zero_grad();
                        eo.zero_grad();
                        loss.backward();
                        opt.step();
                        eo.step();
                    }
                    None => opt.backward_step(&loss),
                }
                let v = loss.double_value(&[]);
                if step == 0 {
                    report.first_loss = v;
                }
                report.last_loss = v;
            }
            if let Some(tm) = encoder {
                tm.vs.freeze();
            }
            report.temperature = 1.0 / logit_scale.clamp(0.0, 100f64.ln()).exp().double_value(&[0]);
        }
        (
            Aligner {
                _vs: vs,
                img,
                txt,
                logit_scale,
                img_norm,
                txt_norm,
            },
            report,
        )
    }

    fn image(&self, x: &[Vec<f32>]) -> Tensor {
        tch::no_grad(|| l2(&self.img.forward(&to_tensor(x, &self.img_norm))))
    }

    fn text(&self, x: &[Vec<Vec<f32>>]) -> Tensor {
        let (t, m) = clause_tensor(x, &self.txt_norm);
        tch::no_grad(|| l2(&self.txt.forward(&t, &m)))
    }

    fn scale(&self) -> f64 {
        tch::no_grad(|| {
            self.logit_scale
                .clamp(0.0, 100f64.ln())
                .exp()
                .double_value(&[0])
        })
    }
}

/// The fitted alignment: CT-CLIP's contrastive heads or the entity-grounded ones.
enum Fitted {
    Clip(Aligner),
    Entity(EntityAligner),
}

impl Fitted {
    /// Unit-norm image embeddings.
    fn image(&self, x: &[Vec<f32>]) -> Tensor {
        match self {
            Fitted::Clip(a) => a.image(x),
            Fitted::Entity(a) => l2(&a.images(x)),
        }
    }

    /// Unit-norm embeddings of clause lists (reports, or one-clause prompts).
    fn text(&self, x: &[Vec<Vec<f32>>]) -> Tensor {
        match self {
            Fitted::Clip(a) => a.text(x),
            Fitted::Entity(a) => tch::no_grad(|| l2(&a.reports(x))),
        }
    }

    /// Logit scale of the prompt softmax (AUC and the Youden point do not depend on it).
    fn scale(&self) -> f64 {
        match self {
            Fitted::Clip(a) => a.scale(),
            Fitted::Entity(_) => 10.0,
        }
    }
}

fn l2(x: &Tensor) -> Tensor {
    x / x
        .norm_scalaropt_dim(2, [1i64].as_slice(), true)
        .clamp_min(1e-8)
}

fn matrix(t: &Tensor) -> Vec<Vec<f64>> {
    rows(t)
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

/// One output row.
struct Row {
    task: &'static str,
    label: String,
    metric: String,
    value: f64,
    ci: Option<(f64, f64)>,
    n: usize,
    n_positive: Option<usize>,
}

/// Binary scores of one label with bootstrap intervals.
struct LabelScores {
    auc: f64,
    auc_ci: Option<(f64, f64)>,
    threshold: f64,
    /// (f1, accuracy, precision) at the threshold and their intervals.
    at_threshold: [(f64, Option<(f64, f64)>); 3],
    n: usize,
    n_positive: usize,
}

fn score_label(
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
fn mean_auc_ci(
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

fn label_seed(seed: u64, task: &str, label: usize) -> u64 {
    let h = fnv1a(&format!("{task}/{label}"));
    seed ^ h
}

fn fnv1a(s: &str) -> u64 {
    // FNV-1a: a fixed, dependency-free seed derivation.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Scores every label with known values in `labels`; adds rows and returns the summary.
fn label_task(
    task: &'static str,
    scores_of: impl Fn(usize) -> Vec<f64>,
    labels: &[Vec<Option<bool>>],
    label_set: &[usize],
    p: &P,
    rows_out: &mut Vec<Row>,
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
        let push = |rows_out: &mut Vec<Row>, metric: &str, value: f64, ci| {
            rows_out.push(Row {
                task,
                label: name.into(),
                metric: metric.into(),
                value,
                ci,
                n: ls.n,
                n_positive: Some(ls.n_positive),
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
    rows_out.push(Row {
        task,
        label: "mean".into(),
        metric: "auc".into(),
        value: mean,
        ci,
        n: labels.len(),
        n_positive: None,
    });
    json!({"mean_auc": mean, "mean_auc_ci": ci, "labels_scored": aucs.len(), "per_label": per_label})
}

/// Per report, the 18 labels from the entities stage's long-form `labels.parquet`: 1 present,
/// 0 absent, -1 uncertain (unknown), null not mentioned (absent or unknown per the policy).
fn read_report_labels(
    path: &Path,
    unmentioned_as_negative: bool,
) -> Result<BTreeMap<String, Vec<Option<bool>>>, StageError> {
    use arrow::array::{Array, Int32Array};
    let mut out: BTreeMap<String, Vec<Option<bool>>> = BTreeMap::new();
    let default = if unmentioned_as_negative {
        Some(false)
    } else {
        None
    };
    for b in mg3d_core::table::read_table(path, &TableSchema::get("labels")?)? {
        let col = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| {
                    StageError::msg(format!("{}: column {n} is not text", path.display()))
                })
        };
        let (reports, labels) = (col("report_id")?, col("label")?);
        let values = b
            .column_by_name("value")
            .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
            .ok_or_else(|| {
                StageError::msg(format!("{}: column value is not int32", path.display()))
            })?;
        for i in 0..b.num_rows() {
            let Some(k) = CT_RATE_LABELS.iter().position(|l| *l == labels.value(i)) else {
                continue;
            };
            let v = out
                .entry(reports.value(i).to_string())
                .or_insert_with(|| vec![default; CT_RATE_LABELS.len()]);
            v[k] = if values.is_null(i) {
                default
            } else {
                match values.value(i) {
                    1 => Some(true),
                    0 => Some(false),
                    _ => None,
                }
            };
        }
    }
    Ok(out)
}

fn write_rows(path: &Path, rows: &[Row]) -> Result<(), StageError> {
    let s = |f: fn(&Row) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    write_columns(
        path,
        &TableSchema::get("eval")?,
        vec![
            s(|r| r.task),
            s(|r| &r.label),
            s(|r| &r.metric),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|r| r.ci.map(|c| c.0)),
            )),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|r| r.ci.map(|c| c.1)),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.n as i64),
            )),
            Arc::new(Int64Array::from_iter(
                rows.iter().map(|r| r.n_positive.map(|x| x as i64)),
            )),
        ],
    )?;
    Ok(())
}

/// Runs the whole evaluation; returns the rows and the JSON summary. With `clause_targets` the
/// alignment is the entity one, without it CT-CLIP's.
fn evaluate(
    tm: &mut TrainedModel,
    index: &ShardIndex,
    report_labels: Option<&BTreeMap<String, Vec<Option<bool>>>>,
    clause_targets: Option<&ClauseTargets>,
    p: &P,
) -> Result<(Vec<Row>, Value), String> {
    let bs = p.batch_size as usize;
    let clock = std::time::Instant::now();
    let mut bank = ClauseBank::default();
    let mut train = Encoded::empty();
    encode_split(
        tm,
        index,
        "train",
        bs,
        p.align_encoder,
        &mut bank,
        &mut train,
    )?;
    let mut test = Encoded::empty();
    for s in &p.splits {
        encode_split(tm, index, s, bs, p.align_encoder, &mut bank, &mut test)?;
    }
    // Zero-shot prompts: per scored label, the present and the absent template.
    let label_set = p.label_set();
    let prompts: Vec<String> = label_set
        .iter()
        .flat_map(|&l| {
            p.templates
                .iter()
                .map(move |t| t.replace("{label}", CT_RATE_LABELS[l]))
        })
        .collect();
    let prompt_ids = bank_prompts(tm, &prompts, &mut bank)?;
    let clause_features = bank.encode(tm, 64);
    let prompt_text: Vec<Vec<Vec<f32>>> = prompt_ids
        .iter()
        .map(|&id| vec![clause_features[id].clone()])
        .collect();
    for e in [&mut train, &mut test] {
        e.text = e
            .clauses
            .iter()
            .map(|c| {
                c.iter()
                    .map(|&(_, id)| clause_features[id].clone())
                    .collect()
            })
            .collect();
    }
    if let Some(l) = report_labels {
        for e in [&mut train, &mut test] {
            for (k, r) in e.report_ids.iter().enumerate() {
                if let Some(v) = l.get(r) {
                    e.labels[k] = v.clone();
                }
            }
        }
    }
    tracing::info!(
        seconds = clock.elapsed().as_secs_f64(),
        distinct_clauses = bank.sequences.len(),
        "encoded"
    );
    let n = test.image.len();
    if n == 0 {
        return Err(format!(
            "the evaluated splits {:?} hold no samples; evaluate other splits or build a larger corpus",
            p.splits
        ));
    }
    if train.image.len() < 2 {
        return Err("the train split needs at least 2 samples to fit the alignment".into());
    }
    let (aligner, align_json) = match clause_targets {
        Some(targets) => {
            let none = BTreeMap::new();
            let train_targets: Vec<Vec<Vec<f32>>> = train
                .clauses
                .iter()
                .zip(&train.report_ids)
                .map(|(c, r)| {
                    let t = targets.get(r).unwrap_or(&none);
                    c.iter().map(|&(k, _)| target_row(Some(t), k)).collect()
                })
                .collect();
            let cfg = EntityAlignConfig {
                hidden: 2 * p.embed_dim,
                text_steps: p.align_text_steps,
                steps: p.align_steps,
                text_batch: 256,
                image_batch: p.align_batch as usize,
                lr: p.align_lr,
                encoder_lr: p.align_encoder_lr,
                seed: p.seed as u64,
            };
            let volumes = train.volume_tensor();
            if p.align_encoder {
                tm.vs.unfreeze();
            }
            let dev = tm.model.device();
            let encode = |idx: &Tensor| {
                tm.model
                    .image_features(&volumes.index_select(0, idx).to_device(dev))
                    .to_device(Device::Cpu)
            };
            let (a, r) = EntityAligner::fit(
                &train.image,
                &train.text,
                &train_targets,
                &cfg,
                p.align_encoder
                    .then_some((&tm.vs, &encode as &dyn Fn(&Tensor) -> Tensor)),
            );
            tm.vs.freeze();
            let mentioned = train_targets
                .iter()
                .flatten()
                .filter(|r| r.iter().any(|&x| x != 0.0))
                .count();
            (
                Fitted::Entity(a),
                json!({
                    "method": "entity",
                    "steps": p.align_steps,
                    "text_steps": p.align_text_steps,
                    "train_clauses": train_targets.iter().map(Vec::len).sum::<usize>(),
                    "train_clauses_with_findings": mentioned,
                    "text_first_loss": r.text_first_loss,
                    "text_last_loss": r.text_last_loss,
                    "image_first_loss": r.image_first_loss,
                    "image_last_loss": r.image_last_loss,
                    "encoder_fine_tuned": p.align_encoder,
                }),
            )
        }
        None => {
            let (a, r) = Aligner::fit(&train, p, p.align_encoder.then_some(&mut *tm));
            (
                Fitted::Clip(a),
                json!({
                    "method": "clip",
                    "steps": p.align_steps,
                    "first_loss": r.first_loss,
                    "last_loss": r.last_loss,
                    "temperature": r.temperature,
                    "embed_dim": p.embed_dim,
                    "encoder_fine_tuned": p.align_encoder,
                }),
            )
        }
    };
    tracing::info!(seconds = clock.elapsed().as_secs_f64(), "aligned");
    // The linear probe measures the pre-trained features; zero-shot and retrieval use the
    // aligned model's.
    let frozen_train_image = std::mem::take(&mut train.image);
    let frozen_test_image = test.image.clone();
    if p.align_encoder {
        test.image = test
            .volumes
            .iter()
            .flat_map(|v| {
                let v = v.to_device(tm.model.device());
                rows(&tch::no_grad(|| tm.model.image_features(&v)))
            })
            .collect();
    }
    let mut rows_out = vec![];

    // Zero-shot: softmax over the present/absent prompts per label.
    let prompt_z = aligner.text(&prompt_text);
    let img_z = aligner.image(&test.image);
    let scale = aligner.scale();
    // Probability of the present prompt per sample, for label `li`, from embeddings `z`.
    let present_probability = |z: &Tensor, li: usize| -> Vec<f64> {
        let sim = matrix(&z.matmul(&prompt_z.tr())); // N × 2L
        let j = label_set
            .iter()
            .position(|&x| x == li)
            .expect("scored label")
            * 2;
        sim.iter()
            .map(|r| {
                let (a, b) = (scale * r[j], scale * r[j + 1]);
                1.0 / (1.0 + (b - a).exp())
            })
            .collect()
    };
    let zero_shot = label_task(
        "zero_shot",
        |li| present_probability(&img_z, li),
        &test.labels,
        &label_set,
        p,
        &mut rows_out,
    );
    // Diagnostic: the same prompts scoring the reports' own aligned embeddings, i.e. what the
    // zero-shot protocol reaches with an image embedding equal to its report's (text side only).
    let text_z = aligner.text(&test.text);
    let text_ceiling = label_task(
        "zero_shot",
        |li| present_probability(&text_z, li),
        &test.labels,
        &label_set,
        &P {
            bootstrap: 0,
            ..p.clone()
        },
        &mut Vec::new(),
    );
    tracing::info!(seconds = clock.elapsed().as_secs_f64(), "zero-shot scored");

    // Report -> volume retrieval.
    let r2v = matrix(&text_z.matmul(&img_z.tr()));
    let targets: Vec<usize> = (0..n).collect();
    let mut r2v_json = serde_json::Map::new();
    for &k in &p.recall_k {
        let k = k as usize;
        for (metric, value) in [
            (format!("recall@{k}"), recall_at_k(&r2v, &targets, k)),
            (format!("random_recall@{k}"), random_recall_at_k(n, k)),
        ] {
            r2v_json.insert(metric.clone(), json!(value));
            rows_out.push(Row {
                task: "report_to_volume",
                label: String::new(),
                metric,
                value,
                ci: None,
                n,
                n_positive: None,
            });
        }
    }

    // Volume -> volume retrieval by label overlap (over the scored labels).
    let v2v = matrix(&img_z.matmul(&img_z.tr()));
    let restrict = |l: &Vec<Option<bool>>| label_set.iter().map(|&i| l[i]).collect::<Vec<_>>();
    let labs: Vec<Vec<Option<bool>>> = test.labels.iter().map(restrict).collect();
    let queries: Vec<(Vec<f64>, Vec<bool>)> = (0..n)
        .map(|q| {
            let others: Vec<usize> = (0..n).filter(|&c| c != q).collect();
            (
                others.iter().map(|&c| v2v[q][c]).collect(),
                others
                    .iter()
                    .map(|&c| label_overlap(&labs[q], &labs[c]))
                    .collect(),
            )
        })
        .collect();
    let relevance: Vec<Vec<bool>> = queries.iter().map(|(_, r)| r.clone()).collect();
    let mut v2v_json = serde_json::Map::new();
    for &k in &p.map_k {
        let k = k as usize;
        let (map, used) = map_at_k(&queries, k);
        let random = random_map_at_k(&relevance, k, 100, p.seed as u64 ^ 0x6d6170);
        for (metric, value) in [
            (format!("map@{k}"), map),
            (format!("random_map@{k}"), random),
        ] {
            v2v_json.insert(metric.clone(), json!(value));
            rows_out.push(Row {
                task: "volume_to_volume",
                label: String::new(),
                metric,
                value,
                ci: None,
                n: used,
                n_positive: None,
            });
        }
    }

    tracing::info!(seconds = clock.elapsed().as_secs_f64(), "retrieval scored");
    // Linear probe on the frozen image features.
    let x_train: Vec<Vec<f64>> = frozen_train_image
        .iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let x_test: Vec<Vec<f64>> = frozen_test_image
        .iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let probes: BTreeMap<usize, Option<crate::probe::Logistic>> = label_set
        .iter()
        .map(|&li| {
            let (mut x, mut y) = (vec![], vec![]);
            for (k, l) in train.labels.iter().enumerate() {
                if let Some(v) = l[li] {
                    x.push(x_train[k].clone());
                    y.push(v);
                }
            }
            (li, fit_logistic(&x, &y, p.probe_c, 50))
        })
        .collect();
    let probe_labels: Vec<usize> = label_set
        .iter()
        .copied()
        .filter(|li| probes[li].is_some())
        .collect();
    let probe = label_task(
        "linear_probe",
        |li| {
            let m = probes[&li].as_ref().expect("fitted probe");
            x_test.iter().map(|r| m.predict(r)).collect()
        },
        &test.labels,
        &probe_labels,
        p,
        &mut rows_out,
    );

    tracing::info!(seconds = clock.elapsed().as_secs_f64(), "probes scored");
    let summary = json!({
        "splits": p.splits,
        "label_source": if report_labels.is_some() { "entities labels.parquet" } else { "shard labels" },
        "unmentioned_as_negative": p.unmentioned_as_negative,
        "samples": n,
        "train_samples": frozen_train_image.len(),
        "labels": label_set.iter().map(|&i| CT_RATE_LABELS[i]).collect::<Vec<_>>(),
        "templates": p.templates,
        "alignment": align_json,
        "zero_shot": zero_shot,
        "zero_shot_text_ceiling": text_ceiling["mean_auc"],
        "zero_shot_text_ceiling_per_label": text_ceiling["per_label"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v["auc"].clone()))
                    .collect::<serde_json::Map<_, _>>()
            }),
        "report_to_volume": r2v_json,
        "volume_to_volume": v2v_json,
        "linear_probe": probe,
    });
    Ok((rows_out, summary))
}

impl Stage for EvalStage {
    fn kind(&self) -> &'static str {
        "eval"
    }
    fn code_version(&self) -> &'static str {
        "3"
    }
    fn describe(&self) -> &'static str {
        "zero-shot labels, report->volume and volume->volume retrieval, linear probe -> eval.parquet, eval.json"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![
            ParamDef::new(
                "splits",
                ParamType::List,
                json!(["test"]),
                "splits evaluated (alignment and probes fit on train)",
            ),
            ParamDef::new(
                "labels",
                ParamType::List,
                json!([]),
                "CT-RATE labels scored ([] = all 18; those without both classes are skipped)",
            ),
            ParamDef::new(
                "templates",
                ParamType::List,
                json!(["{label} is present.", "{label} is not present."]),
                "zero-shot prompts: present, absent",
            ),
            ParamDef::new(
                "device",
                ParamType::Str,
                json!("auto"),
                "cpu | cuda | cuda:N | auto",
            ),
            ParamDef::new(
                "batch_size",
                ParamType::Int,
                json!(4),
                "samples per encoding batch",
            ),
            ParamDef::new(
                "align_steps",
                ParamType::Int,
                json!(300),
                "alignment steps on the train split: the CLIP heads, or the entity alignment's image head",
            ),
            ParamDef::new(
                "align_text_steps",
                ParamType::Int,
                json!(1000),
                "entity alignment: steps of the text head (256 train clauses each) before the image \
                 head's align_steps",
            ),
            ParamDef::new(
                "align_batch",
                ParamType::Int,
                json!(32),
                "samples per alignment step",
            ),
            ParamDef::new(
                "align_lr",
                ParamType::Float,
                json!(1e-3),
                "learning rate of the alignment heads",
            ),
            ParamDef::new(
                "alignment",
                ParamType::Str,
                json!("entity"),
                "entity: heads on the CT-RATE finding axes, the text head fitted to the entities \
                 stage's clause-level assertions, the image head to the report embeddings (needs \
                 the entities and reports inputs); clip: CT-CLIP's symmetric InfoNCE with a learned \
                 temperature",
            ),
            ParamDef::new(
                "align_encoder",
                ParamType::Bool,
                json!(true),
                "fine-tune the image encoder during the alignment (CT-CLIP's protocol); false \
                 aligns frozen features",
            ),
            ParamDef::new(
                "align_encoder_lr",
                ParamType::Float,
                json!(1e-4),
                "learning rate of the image encoder during the alignment",
            ),
            ParamDef::new(
                "embed_dim",
                ParamType::Int,
                json!(64),
                "clip: aligned space width; entity: half the text head's hidden width (the space has the 18 finding axes)",
            ),
            ParamDef::new(
                "bootstrap",
                ParamType::Int,
                json!(1000),
                "bootstrap resamples for the 95% intervals",
            ),
            ParamDef::new(
                "recall_k",
                ParamType::List,
                json!([5, 10, 50, 100]),
                "K of report->volume Recall@K",
            ),
            ParamDef::new(
                "map_k",
                ParamType::List,
                json!([1, 5, 10, 50]),
                "K of volume->volume MAP@K",
            ),
            ParamDef::new(
                "probe_c",
                ParamType::Float,
                json!(1.0),
                "inverse L2 strength of the linear probe",
            ),
            ParamDef::new(
                "unmentioned_as_negative",
                ParamType::Bool,
                json!(true),
                "with an entities input: a label the report does not mention counts as absent \
                 (CT-RATE's convention); uncertain mentions are left out either way",
            ),
            ParamDef::new(
                "seed",
                ParamType::Int,
                json!(0),
                "seed of alignment and bootstrap",
            ),
        ]
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![
            InputDecl {
                kind: "train",
                required: true,
            },
            InputDecl {
                kind: "shards",
                required: true,
            },
            InputDecl {
                kind: "entities",
                required: false,
            },
            InputDecl {
                kind: "reports",
                required: false,
            },
        ]
    }
    fn check_params(&self, params: &Params) -> Result<(), String> {
        let p: P = params.parse().map_err(|e| e.to_string())?;
        p.check()
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: P = ctx.params.parse()?;
        p.check().map_err(StageError::msg)?;
        // Before any encoding: the entity alignment's clause targets.
        let clause_targets = match (ctx.input("reports"), ctx.input("entities")) {
            _ if p.alignment != "entity" => None,
            (Ok(reports), Ok(entities)) => Some(read_clause_targets(
                &reports.join("clauses.parquet"),
                &entities.join("entities.parquet"),
            )?),
            _ => {
                return Err(StageError::msg(
                    "alignment = \"entity\" needs the entities and reports stages as inputs \
                     (clause-level finding assertions); add them, or set alignment = \"clip\"",
                ));
            }
        };
        let mut tm = load_trained(ctx.input("train")?, &p.device).map_err(StageError::msg)?;
        let index =
            ShardIndex::open(ctx.input("shards")?).map_err(|e| StageError::msg(e.to_string()))?;
        let report_labels = match ctx.input("entities") {
            Ok(dir) => Some(read_report_labels(
                &dir.join("labels.parquet"),
                p.unmentioned_as_negative,
            )?),
            Err(_) => None,
        };
        let (rows_out, summary) = evaluate(
            &mut tm,
            &index,
            report_labels.as_ref(),
            clause_targets.as_ref(),
            &p,
        )
        .map_err(StageError::msg)?;
        write_rows(&ctx.out_dir.join("eval.parquet"), &rows_out)?;
        std::fs::write(
            ctx.out_dir.join("eval.json"),
            serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n",
        )?;
        Ok(json!({
            "samples": summary["samples"],
            "zero_shot_mean_auc": summary["zero_shot"]["mean_auc"],
            "linear_probe_mean_auc": summary["linear_probe"]["mean_auc"],
            "report_to_volume": summary["report_to_volume"],
        }))
    }
}
