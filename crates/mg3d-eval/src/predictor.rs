//! What the eval stage keeps so that a new scan can be scored as its samples were
//! (`mg3d predict`): `predictor/` in the eval output, one folder a user can copy.
//!
//! - `model/`: the model folder the features come from (the train output's, hard-linked; with
//!   `align_encoder` the fine-tuned weights instead);
//! - `aligned.safetensors`: the image head of the alignment (`image_mean`, `image_std`,
//!   `image_weight`, `image_bias`), the prompts' aligned embeddings (`prompts`, 2 per label,
//!   present then absent) and the train split's reports' (`reports`);
//! - `predictor.json`: format, labels, templates, the prompt softmax's scale, the reports'
//!   pseudonyms (rows of `reports`), the alignment method.
//!
//! The eval stage scores its own samples through the same [`ImageHead`](crate::align::ImageHead) and
//! [`present_probability`], so `mg3d predict` gives its numbers for the same volume.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Tensor};

use crate::EvalError;
use crate::align::{ImageHead, matrix};
use mg3d_train::stage::{TrainedModel, load_trained};

/// The predictor folder inside the eval output.
pub const PREDICTOR_DIR: &str = "predictor";
const MODEL_DIR: &str = "model";
const TENSORS: &str = "aligned.safetensors";
const DESCRIPTION: &str = "predictor.json";

/// The probability of the present prompt per sample for the label at `position` in the scored
/// labels (softmax over its present and absent prompts at `scale`), from aligned embeddings `z`
/// and the prompts' `prompt_z` (present, absent per label).
pub fn present_probability(z: &Tensor, prompt_z: &Tensor, scale: f64, position: usize) -> Vec<f64> {
    let sim = matrix(&z.matmul(&prompt_z.tr())); // N × 2L
    let j = position * 2;
    sim.iter()
        .map(|r| {
            let (a, b) = (scale * r[j], scale * r[j + 1]);
            1.0 / (1.0 + (b - a).exp())
        })
        .collect()
}

/// `predictor.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Description {
    format: String,
    version: u32,
    method: String,
    labels: Vec<String>,
    templates: Vec<String>,
    scale: f64,
    report_ids: Vec<String>,
}

/// What the eval stage fitted, to be written as a predictor folder.
pub(crate) struct Fitted<'a> {
    pub(crate) method: &'a str,
    pub(crate) head: &'a ImageHead,
    pub(crate) labels: Vec<String>,
    pub(crate) templates: &'a [String],
    pub(crate) scale: f64,
    pub(crate) prompts: &'a Tensor,
    pub(crate) reports: &'a Tensor,
    pub(crate) report_ids: &'a [String],
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn torch_err(path: &Path) -> impl FnOnce(tch::TchError) -> EvalError + '_ {
    move |e| EvalError::Predictor {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Writes `out/predictor/`: the model folder of `train_dir` (its weights replaced by `tuned`'s
/// when the alignment fine-tuned the encoder) and the fitted alignment `f`.
pub(crate) fn write_predictor(
    out: &Path,
    train_dir: &Path,
    tuned: Option<&nn::VarStore>,
    f: &Fitted,
) -> Result<(), EvalError> {
    let dir = out.join(PREDICTOR_DIR);
    mg3d_train::stage::copy_model_folder(train_dir, &dir.join(MODEL_DIR), tuned)?;
    let t = |x: &Tensor| x.to_device(Device::Cpu).contiguous();
    let tensors = [
        ("image_mean", Tensor::from_slice(&f.head.norm.0)),
        ("image_std", Tensor::from_slice(&f.head.norm.1)),
        ("image_weight", t(&f.head.linear.ws)),
        (
            "image_bias",
            t(f.head
                .linear
                .bs
                .as_ref()
                .expect("the alignment's image head has a bias")),
        ),
        ("prompts", t(f.prompts)),
        ("reports", t(f.reports)),
    ];
    let path = dir.join(TENSORS);
    Tensor::write_safetensors(&tensors, &path).map_err(torch_err(&path))?;
    let d = Description {
        format: "mg3d-predictor".into(),
        version: 1,
        method: f.method.into(),
        labels: f.labels.clone(),
        templates: f.templates.to_vec(),
        scale: f.scale,
        report_ids: f.report_ids.to_vec(),
    };
    let path = dir.join(DESCRIPTION);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&d).unwrap_or_default() + "\n",
    )
    .map_err(io_err(&path))
}

/// A loaded predictor folder.
pub struct Predictor {
    /// The model whose frozen image features the head takes.
    pub model: TrainedModel,
    head: ImageHead,
    labels: Vec<String>,
    scale: f64,
    prompts: Tensor,
    reports: Tensor,
    report_ids: Vec<String>,
}

/// One scan's predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Per label (in [`Predictor::labels`] order), the zero-shot probability of "present".
    pub zero_shot: Vec<f64>,
    /// The nearest train-split reports: (report pseudonym, cosine similarity), nearest first.
    pub nearest_reports: Vec<(String, f64)>,
}

impl Predictor {
    /// Loads `dir`: an eval output (its `predictor/`) or a predictor folder itself.
    pub fn load(dir: &Path, device: &str) -> Result<Predictor, EvalError> {
        let dir: PathBuf = if dir.join(PREDICTOR_DIR).join(DESCRIPTION).is_file() {
            dir.join(PREDICTOR_DIR)
        } else {
            dir.to_path_buf()
        };
        let path = dir.join(DESCRIPTION);
        let text = std::fs::read_to_string(&path).map_err(|source| EvalError::Io {
            path: path.clone(),
            source,
        })?;
        let d: Description = serde_json::from_str(&text).map_err(|e| EvalError::Predictor {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if d.format != "mg3d-predictor" || d.version != 1 {
            return Err(EvalError::Predictor {
                path,
                detail: format!(
                    "format {:?} version {}: not an mg3d-predictor v1",
                    d.format, d.version
                ),
            });
        }
        let model = load_trained(&dir.join(MODEL_DIR), device)?;
        let path = dir.join(TENSORS);
        let mut named: std::collections::BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
            .map_err(torch_err(&path))?
            .into_iter()
            .collect();
        let mut take = |name: &str| {
            named.remove(name).ok_or_else(|| EvalError::Predictor {
                path: path.clone(),
                detail: format!("no tensor {name:?}"),
            })
        };
        let vec = |t: Tensor| -> Vec<f32> { Vec::try_from(t.reshape([-1])).unwrap_or_default() };
        let norm = (vec(take("image_mean")?), vec(take("image_std")?));
        let head = ImageHead {
            linear: nn::Linear {
                ws: take("image_weight")?,
                bs: Some(take("image_bias")?),
            },
            norm,
        };
        let (prompts, reports) = (take("prompts")?, take("reports")?);
        let rows = |t: &Tensor| t.size().first().copied().unwrap_or(0) as usize;
        if rows(&prompts) != 2 * d.labels.len() || rows(&reports) != d.report_ids.len() {
            return Err(EvalError::Predictor {
                path,
                detail: "tensor sizes do not match predictor.json's labels and reports".into(),
            });
        }
        Ok(Predictor {
            model,
            head,
            labels: d.labels,
            scale: d.scale,
            prompts,
            reports,
            report_ids: d.report_ids,
        })
    }

    /// The scored labels, in the order of [`Prediction::zero_shot`].
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Predictions for frozen image features (rows of `features`), with the `k` nearest reports.
    pub fn predict(&self, features: &[Vec<f32>], k: usize) -> Vec<Prediction> {
        let z = self.head.embed(features);
        let probs: Vec<Vec<f64>> = (0..self.labels.len())
            .map(|j| present_probability(&z, &self.prompts, self.scale, j))
            .collect();
        let sims = matrix(&z.matmul(&self.reports.tr()));
        sims.iter()
            .enumerate()
            .map(|(i, s)| {
                let mut order: Vec<usize> = (0..s.len()).collect();
                order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
                Prediction {
                    zero_shot: probs.iter().map(|p| p[i]).collect(),
                    nearest_reports: order
                        .into_iter()
                        .take(k)
                        .map(|r| (self.report_ids[r].clone(), s[r]))
                        .collect(),
                }
            })
            .collect()
    }
}
