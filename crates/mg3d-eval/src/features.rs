//! Frozen features of a trained model: every sample's image features and, per report, its
//! clauses' text features (each distinct clause encoded alone, as a prompt is), and the prompts.

use std::collections::BTreeMap;

use mg3d_report::tokens::{load_tokenizer, tokenize_clauses};
use mg3d_shard::{Loader, LoaderConfig, ShardIndex};
use mg3d_train::stage::TrainedModel;
use tch::{Device, Kind, Tensor};

use crate::EvalError;

/// Encoded samples of some splits.
pub(crate) struct Encoded {
    /// Frozen image features, N×F.
    pub(crate) image: Vec<Vec<f32>>,
    /// Per sample, the report's clause features (clauses × D), each clause encoded alone.
    pub(crate) text: Vec<Vec<Vec<f32>>>,
    /// Per sample, the report's clauses: (clause index, id in the [`ClauseBank`]).
    pub(crate) clauses: Vec<Vec<(i32, usize)>>,
    /// Labels per sample (18; `None` unknown).
    pub(crate) labels: Vec<Vec<Option<bool>>>,
    /// Report pseudonym per sample.
    pub(crate) report_ids: Vec<String>,
    /// Volume pseudonym per sample.
    pub(crate) volume_ids: Vec<String>,
    /// Split per sample.
    pub(crate) splits: Vec<String>,
    /// The model-sized volumes (batches of B×1×D×H×W, CPU), kept when the encoder is fine-tuned
    /// (train: its input; evaluated splits: re-encoded after it).
    pub(crate) volumes: Vec<Tensor>,
}

impl Encoded {
    /// The kept volumes as one N×1×D×H×W tensor (empty when none were kept).
    pub(crate) fn volume_tensor(&self) -> Tensor {
        if self.volumes.is_empty() {
            Tensor::zeros([0], tch::kind::FLOAT_CPU)
        } else {
            Tensor::cat(&self.volumes, 0)
        }
    }

    pub(crate) fn empty() -> Encoded {
        Encoded {
            image: vec![],
            text: vec![],
            clauses: vec![],
            labels: vec![],
            report_ids: vec![],
            volume_ids: vec![],
            splits: vec![],
            volumes: vec![],
        }
    }
}

/// The distinct clause token sequences of all encoded reports. Each is encoded alone, as
/// `[CLS] clause [SEP]` (MG-3D tokenises clauses alone for its inter-patient targets), so a
/// report's clauses and a one-clause prompt go through the text encoder the same way.
#[derive(Default)]
pub(crate) struct ClauseBank {
    pub(crate) ids: BTreeMap<Vec<i64>, usize>,
    pub(crate) sequences: Vec<Vec<i64>>,
    /// `[CLS]` and `[SEP]` ids, from the first report seen.
    pub(crate) specials: Option<(i64, i64)>,
}

impl ClauseBank {
    /// Splits each report of a batch (B×L ids, mask and clause index) into its clauses' token
    /// sequences; returns per sample the (clause index, bank id) list.
    pub(crate) fn add_batch(&mut self, inp: &mg3d_train::model::Inputs) -> Vec<Vec<(i32, usize)>> {
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
    pub(crate) fn add(&mut self, seq: Vec<i64>) -> usize {
        if let Some(&id) = self.ids.get(&seq) {
            return id;
        }
        let id = self.sequences.len();
        self.ids.insert(seq.clone(), id);
        self.sequences.push(seq);
        id
    }

    /// The text features of every clause (bank order), encoded alone in batches.
    pub(crate) fn encode(&self, tm: &TrainedModel, batch: usize) -> Vec<Vec<f32>> {
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

pub(crate) fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let (n, d) = t.size2().expect("2-D");
    let flat: Vec<f32> = t.view([-1]).try_into().unwrap_or_default();
    (0..n as usize)
        .map(|i| flat[i * d as usize..(i + 1) * d as usize].to_vec())
        .collect()
}

pub(crate) fn encode_split(
    tm: &TrainedModel,
    index: &ShardIndex,
    split: &str,
    batch_size: usize,
    keep_volumes: bool,
    bank: &mut ClauseBank,
    out: &mut Encoded,
) -> Result<(), EvalError> {
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
    )?;
    let device = tm.model.device();
    let entries = &index.split(split)?.samples;
    for batch in loader {
        let batch = batch?;
        out.report_ids.extend(
            batch
                .samples
                .iter()
                .map(|&s| entries[s as usize].report_id.clone()),
        );
        out.volume_ids.extend(
            batch
                .samples
                .iter()
                .map(|&s| entries[s as usize].volume_id.clone()),
        );
        out.splits
            .extend(std::iter::repeat_n(split.to_string(), batch.samples.len()));
        let inp = mg3d_train::trainer::to_inputs(&batch, tm.input, device)?;
        let img = tch::no_grad(|| tm.model.image_features(&inp.volume));
        out.image.extend(rows(&img));
        if keep_volumes {
            out.volumes.push(inp.volume.to_device(Device::Cpu));
        }
        out.clauses.extend(bank.add_batch(&inp));
        let lab = batch.field("labels").ok_or(EvalError::NoLabels)?;
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
pub(crate) const PROMPT_TOKENS: usize = 64;

/// Tokenises each prompt as a one-clause report with the tokens stage's code and adds its clause
/// tokens to `bank`, so prompts and report clauses are encoded by one path; returns the bank ids.
pub(crate) fn bank_prompts(
    tm: &TrainedModel,
    prompts: &[String],
    bank: &mut ClauseBank,
) -> Result<Vec<usize>, EvalError> {
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

pub(crate) fn to_tensor(x: &[Vec<f32>], norm: &(Vec<f32>, Vec<f32>)) -> Tensor {
    let d = norm.0.len();
    let flat: Vec<f32> = x
        .iter()
        .flat_map(|r| (0..d).map(|k| (r[k] - norm.0[k]) / norm.1[k]))
        .collect();
    Tensor::from_slice(&flat).view([x.len() as i64, d as i64])
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
