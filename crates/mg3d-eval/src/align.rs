//! CLIP alignment (CT-CLIP) on the train split: a linear image head and a clause-level MLP text
//! head trained with CLIP's symmetric InfoNCE and a learned temperature, and what both alignment
//! methods share (seeded layers, standardisation, sampling, the fitted heads).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::features::{Encoded, clause_tensor, rows, to_tensor};
use crate::params::EvalParams;
use mg3d_train::stage::TrainedModel;

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

/// The text head: a two-layer MLP applied to every clause, then the mean over the report's
/// clauses. Clause-level, so a prompt (one clause) and a report (many) meet in one space, and
/// the non-linearity can map uninformative clauses ("no pleural effusion") apart from findings.
pub(crate) struct ClauseHead {
    pub(crate) a: nn::Linear,
    pub(crate) b: nn::Linear,
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
    pub(crate) fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let h = self.rows(x);
        let m = mask.unsqueeze(-1);
        (h * &m).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            / m.sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .clamp_min(1.0)
    }
}

/// The aligned space: image and text heads and the learned temperature.
pub(crate) struct Aligner {
    pub(crate) _vs: nn::VarStore,
    pub(crate) img: nn::Linear,
    pub(crate) txt: ClauseHead,
    pub(crate) logit_scale: Tensor,
    pub(crate) img_norm: (Vec<f32>, Vec<f32>),
    pub(crate) txt_norm: (Vec<f32>, Vec<f32>),
}

/// A `rows × cols` matrix of N(0, std²) draws from `rng` (Box-Muller).
pub(crate) fn gaussian(rng: &mut ChaCha8Rng, rows: i64, cols: i64, std: f64) -> Tensor {
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

pub(crate) struct AlignReport {
    pub(crate) first_loss: f64,
    pub(crate) last_loss: f64,
    pub(crate) temperature: f64,
}

impl Aligner {
    /// Fits the heads on the train split; with `encoder`, the image encoder (Swin and the
    /// unimodal image pooler) is fine-tuned too, from the kept train volumes.
    pub(crate) fn fit(
        train: &Encoded,
        p: &EvalParams,
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

    /// The image head (shares the fitted tensors).
    pub(crate) fn image_head(&self) -> ImageHead {
        ImageHead {
            linear: shallow_linear(&self.img),
            norm: self.img_norm.clone(),
        }
    }

    pub(crate) fn text(&self, x: &[Vec<Vec<f32>>]) -> Tensor {
        let (t, m) = clause_tensor(x, &self.txt_norm);
        tch::no_grad(|| l2(&self.txt.forward(&t, &m)))
    }

    pub(crate) fn scale(&self) -> f64 {
        tch::no_grad(|| {
            self.logit_scale
                .clamp(0.0, 100f64.ln())
                .exp()
                .double_value(&[0])
        })
    }
}

/// The image side of a fitted alignment: features standardised as on the train split, then a
/// linear map, then unit length.
pub struct ImageHead {
    /// The linear map (K × F weight, K bias).
    pub linear: nn::Linear,
    /// Per feature mean and standard deviation of the train split.
    pub norm: (Vec<f32>, Vec<f32>),
}

impl ImageHead {
    /// Unit-norm aligned embeddings of frozen image features (N × K).
    pub fn embed(&self, x: &[Vec<f32>]) -> Tensor {
        tch::no_grad(|| l2(&self.linear.forward(&to_tensor(x, &self.norm))))
    }
}

/// A linear layer sharing `l`'s tensors.
pub(crate) fn shallow_linear(l: &nn::Linear) -> nn::Linear {
    nn::Linear {
        ws: l.ws.shallow_clone(),
        bs: l.bs.as_ref().map(Tensor::shallow_clone),
    }
}

pub(crate) fn l2(x: &Tensor) -> Tensor {
    x / x
        .norm_scalaropt_dim(2, [1i64].as_slice(), true)
        .clamp_min(1e-8)
}

pub(crate) fn matrix(t: &Tensor) -> Vec<Vec<f64>> {
    rows(t)
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}
