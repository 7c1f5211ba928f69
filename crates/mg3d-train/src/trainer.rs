//! The trainer: AdamW with MG-3D's ×5 learning-rate groups, linear warmup then linear decay,
//! gradient clipping and accumulation, bf16 autocast on CUDA, atomic checkpoints (weights,
//! optimizer moments, loader position, step) and exact resume on the CPU.
//!
//! The optimizer is written here (not libtorch's) so its state is plain tensors that checkpoint to
//! safetensors. Randomness per step (MIM cubes, MLM words) comes from `(seed, step)`, so resuming
//! needs no RNG state beyond the step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mg3d_shard::{Batch, Loader, LoaderConfig, ShardIndex};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::TrainError;
use crate::model::{Inputs, Mg3d, Objectives};

/// Optimisation settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: u64,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub accumulate: usize,
    /// Base learning rate (heads and multi_modal modules: ×5).
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: u64,
    /// AdamW weight decay (not on biases and norms).
    pub weight_decay: f64,
    /// Adam betas.
    pub betas: (f64, f64),
    /// Adam epsilon.
    pub eps: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub clip: f64,
    /// Checkpoint every N steps (and at the end).
    pub checkpoint_every: u64,
    /// Seed of the sample order and of each step's masks.
    pub seed: u64,
    /// Loader decode threads.
    pub workers: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 30,
            batch_size: 2,
            accumulate: 1,
            lr: 1e-4,
            warmup: 3,
            weight_decay: 1e-8,
            betas: (0.9, 0.999),
            eps: 1e-8,
            clip: 1.0,
            checkpoint_every: 10,
            seed: 0,
            workers: 1,
        }
    }
}

/// What one optimiser step measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    /// Step number (1-based).
    pub step: u64,
    /// Learning rate used.
    pub lr: f64,
    /// Weighted total loss (mean over micro-batches).
    pub total: f64,
    /// Per objective, unweighted.
    pub mim: f64,
    /// MLM.
    pub mlm: f64,
    /// SAL.
    pub sal: f64,
    /// CML.
    pub cml: f64,
    /// DCL.
    pub dcl: f64,
    /// SSM.
    pub ssm: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall seconds of the step. Not saved in checkpoints (it would make the same run's
    /// checkpoint differ byte for byte); read back as 0.
    #[serde(skip)]
    pub seconds: f64,
    /// Samples per second. Not saved in checkpoints either.
    #[serde(skip)]
    pub samples_per_s: f64,
}

/// The learning rate at `step` (1-based): linear warmup to `lr`, then linear decay to 0.
pub fn lr_at(cfg: &TrainConfig, step: u64) -> f64 {
    if cfg.warmup > 0 && step <= cfg.warmup {
        cfg.lr * step as f64 / cfg.warmup as f64
    } else {
        let rest = cfg.steps.saturating_sub(cfg.warmup).max(1) as f64;
        cfg.lr * (1.0 - (step - cfg.warmup) as f64 / rest).max(0.0)
    }
}

/// AdamW over named variables with per-variable learning-rate multipliers.
pub struct AdamW {
    vars: Vec<(String, Tensor, f64, bool)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken.
    pub step: u64,
}

impl AdamW {
    /// For the trainable variables of `vs`; `multiplier(name)` gives the lr multiplier.
    pub fn new(vs: &nn::VarStore, multiplier: impl Fn(&str) -> f64) -> AdamW {
        let mut vars: Vec<(String, Tensor, f64, bool)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| {
                let decay =
                    !(n.ends_with(".bias") || n.contains("norm") || n.contains("LayerNorm"));
                let mult = multiplier(&n);
                (n, t, mult, decay)
            })
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars.iter().map(|v| v.1.zeros_like()).collect();
        let v = vars.iter().map(|v| v.1.zeros_like()).collect();
        AdamW {
            vars,
            m,
            v,
            step: 0,
        }
    }

    /// Zeroes every gradient.
    pub fn zero_grad(&mut self) {
        for (_, t, _, _) in &mut self.vars {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Global gradient norm, clipped to `max` when `max > 0`. Returns the norm before clipping.
    pub fn clip(&mut self, max: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let mut sq = 0.0;
        for (_, t, _, _) in &self.vars {
            let g = t.grad();
            if g.defined() {
                sq += g.square().sum(Kind::Double).double_value(&[]);
            }
        }
        let norm = sq.sqrt();
        if max > 0.0 && norm > max {
            let scale = max / (norm + 1e-6);
            for (_, t, _, _) in &self.vars {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        norm
    }

    /// One AdamW update at base learning rate `lr`.
    pub fn apply(&mut self, lr: f64, cfg: &TrainConfig) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let (b1, b2) = cfg.betas;
        let c1 = 1.0 - b1.powi(self.step as i32);
        let c2 = 1.0 - b2.powi(self.step as i32);
        for (i, (_, t, mult, decay)) in self.vars.iter_mut().enumerate() {
            let g = t.grad();
            if !g.defined() {
                continue;
            }
            let lr_i = lr * *mult;
            if *decay && cfg.weight_decay > 0.0 {
                let _ = t.g_mul_scalar_(1.0 - lr_i * cfg.weight_decay);
            }
            let m = &mut self.m[i];
            let v = &mut self.v[i];
            let _ = m.g_mul_scalar_(b1);
            let _ = m.g_add_(&(&g * (1.0 - b1)));
            let _ = v.g_mul_scalar_(b2);
            let _ = v.g_add_(&(g.square() * (1.0 - b2)));
            let denom = (&*v / c2).sqrt() + cfg.eps;
            let update = (&*m / c1) / denom * lr_i;
            let _ = t.g_sub_(&update);
        }
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (n, _, _, _)) in self.vars.iter().enumerate() {
            out.push((format!("m.{n}"), self.m[i].shallow_clone()));
            out.push((format!("v.{n}"), self.v[i].shallow_clone()));
        }
        out
    }

    /// Restores the moments saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, file: &Path, step: u64) -> Result<(), TrainError> {
        let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(file)
            .map_err(|source| TrainError::Torch {
                path: file.to_path_buf(),
                source,
            })?
            .into_iter()
            .collect();
        let _guard = tch::no_grad_guard();
        for (i, (n, _, _, _)) in self.vars.iter().enumerate() {
            for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let src =
                    saved
                        .get(&format!("{prefix}.{n}"))
                        .ok_or_else(|| TrainError::Checkpoint {
                            path: file.to_path_buf(),
                            detail: format!(
                                "no {prefix}.{n}; the checkpoint is from another model"
                            ),
                        })?;
                dst.copy_(src);
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Saved next to the weights in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimiser steps done.
    pub step: u64,
    /// Loader position after the last batch used.
    pub loader_epoch: u64,
    /// Samples of that epoch consumed.
    pub loader_sample_in_epoch: usize,
    /// The training settings.
    pub train: TrainConfig,
    /// Metrics of every step up to `step` (so a resumed run's table is complete).
    #[serde(default)]
    pub metrics: Vec<StepMetrics>,
}

/// Converts a loader batch to model inputs on `device`, padding or cropping the volume to the
/// model's input size (centred).
pub fn to_inputs(batch: &Batch, input: [i64; 3], device: Device) -> Result<Inputs, TrainError> {
    let field = |n: &str| {
        batch
            .field(n)
            .ok_or_else(|| TrainError::MissingField(n.to_string()))
    };
    let vol = field("volume")?;
    let shape: Vec<i64> = vol.shape.iter().map(|&s| s as i64).collect();
    let x = Tensor::from_slice(&vol.to_f32()).view(shape.as_slice());
    let x = fit(&x, input);
    let ints = |n: &str| -> Result<Tensor, TrainError> {
        let f = field(n)?;
        let v = f
            .to_i64()
            .ok_or_else(|| TrainError::NotInteger(n.to_string()))?;
        let shape: Vec<i64> = f.shape.iter().map(|&s| s as i64).collect();
        Ok(Tensor::from_slice(&v).view(shape.as_slice()))
    };
    // Text fields are stored padded to the tokenizer's max length; the batch only needs its
    // longest report (padding is masked out, so this changes nothing but the work).
    let mask = ints("attention_mask")?;
    let l_full = mask.size()[1];
    let longest = mask.sum_dim_intlist([1i64].as_slice(), false, tch::Kind::Int64);
    let l = (longest.max().int64_value(&[])).clamp(1, l_full.max(1));
    let trim = |t: Tensor| t.narrow(1, 0, l).contiguous().to_device(device);
    let ws = field("word_start")?;
    let word_start = ws
        .to_i64()
        .unwrap_or_default()
        .chunks(ws.shape[1])
        .map(|c| c.iter().take(l as usize).map(|&x| x as i8).collect())
        .collect();
    Ok(Inputs {
        volume: x.to_device(device),
        input_ids: trim(ints("input_ids")?),
        attention_mask: trim(mask),
        clause_index: trim(ints("clause_index")?),
        word_start,
    })
}

/// Centre crop / zero pad the last three axes of `x` to `size`.
pub fn fit(x: &Tensor, size: [i64; 3]) -> Tensor {
    let mut y = x.shallow_clone();
    for (axis, &want) in size.iter().enumerate() {
        let dim = 2 + axis as i64;
        let have = y.size()[dim as usize];
        if have > want {
            y = y.narrow(dim, (have - want) / 2, want);
        } else if have < want {
            let mut shape = y.size();
            let before = (want - have) / 2;
            shape[dim as usize] = before;
            let a = Tensor::zeros(shape.as_slice(), (y.kind(), y.device()));
            shape[dim as usize] = want - have - before;
            let b = Tensor::zeros(shape.as_slice(), (y.kind(), y.device()));
            y = Tensor::cat(&[a, y, b], dim);
        }
    }
    y
}

/// What failed writing the checkpoint in `tmp`: `what` (create, weights, optimizer, state, rename).
fn save_failed<'a, E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    tmp: &'a Path,
    what: &'static str,
) -> impl FnOnce(E) -> TrainError + 'a {
    move |e| TrainError::Save {
        path: tmp.to_path_buf(),
        what,
        source: e.into(),
    }
}

fn save_checkpoint(
    dir: &Path,
    vs: &nn::VarStore,
    opt: &AdamW,
    state: &CheckpointState,
) -> Result<PathBuf, TrainError> {
    let final_dir = dir.join(format!("step-{:06}", state.step));
    let tmp = dir.join(format!(".step-{:06}.tmp", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(save_failed(&tmp, "create"))?;
    vs.save(tmp.join("model.safetensors"))
        .map_err(save_failed(&tmp, "weights"))?;
    let named = opt.state_tensors();
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, tmp.join("optimizer.safetensors"))
        .map_err(save_failed(&tmp, "optimizer"))?;
    let text = serde_json::to_string_pretty(state).map_err(save_failed(&tmp, "state"))?;
    std::fs::write(tmp.join("state.json"), text + "\n").map_err(save_failed(&tmp, "state"))?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(save_failed(&tmp, "rename"))?;
    Ok(final_dir)
}

/// The latest complete checkpoint under `dir` (`step-NNNNNN`), if any.
pub fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
                && p.join("state.json").is_file()
        })
        .collect();
    v.sort();
    v.pop()
}

/// Loads checkpoint `ck` into the model, the optimizer and the loader's position; returns its
/// step and metrics so far.
fn resume_from(
    ck: &Path,
    vs: &mut nn::VarStore,
    opt: &mut AdamW,
    loader: &mut Loader,
) -> Result<(u64, Vec<StepMetrics>), TrainError> {
    let path = || ck.to_path_buf();
    let text = std::fs::read_to_string(ck.join("state.json")).map_err(|source| TrainError::Io {
        path: path(),
        source,
    })?;
    let st: CheckpointState = serde_json::from_str(&text).map_err(|source| TrainError::Json {
        path: path(),
        source,
    })?;
    vs.load(ck.join("model.safetensors"))
        .map_err(|source| TrainError::Torch {
            path: path(),
            source,
        })?;
    opt.load_state(&ck.join("optimizer.safetensors"), st.step)?;
    loader.skip_to(st.loader_epoch, st.loader_sample_in_epoch)?;
    Ok((st.step, st.metrics))
}

/// Trains `model` (variables in `vs`) on the `train` split of `shards` for `cfg.steps` steps,
/// checkpointing into `ckpt_dir`; with `resume`, continues from that checkpoint. `on_step` sees
/// every step's metrics. Returns the metrics of the steps run.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &Mg3d,
    vs: &mut nn::VarStore,
    obj: &Objectives,
    cfg: &TrainConfig,
    shards: &ShardIndex,
    ckpt_dir: &Path,
    resume: Option<&Path>,
    mut on_step: impl FnMut(&StepMetrics),
) -> Result<Vec<StepMetrics>, TrainError> {
    let device = model.device();
    let mut opt = AdamW::new(vs, Mg3d::lr_multiplier);
    let mut loader = Loader::new(
        shards,
        LoaderConfig {
            split: "train".into(),
            seed: cfg.seed,
            batch_size: cfg.batch_size,
            shuffle: true,
            drop_last: true,
            workers: cfg.workers,
            ..Default::default()
        },
    )?;
    if loader.num_samples() < cfg.batch_size {
        return Err(TrainError::TooFewSamples {
            samples: loader.num_samples(),
            batch_size: cfg.batch_size,
        });
    }
    let (start, mut history) = match resume {
        Some(ck) => resume_from(ck, vs, &mut opt, &mut loader)?,
        None => (0, Vec::new()),
    };
    std::fs::create_dir_all(ckpt_dir).map_err(|source| TrainError::Io {
        path: ckpt_dir.to_path_buf(),
        source,
    })?;
    let mut pos = loader.state();
    let mut out = Vec::new();
    for step in start + 1..=cfg.steps {
        let t0 = std::time::Instant::now();
        let lr = lr_at(cfg, step);
        opt.zero_grad();
        let mut sums = [0f64; 7];
        let mut samples = 0usize;
        for micro in 0..cfg.accumulate.max(1) {
            let batch = loop {
                match loader.next() {
                    Some(b) => break b?,
                    None => continue, // next epoch
                }
            };
            pos = batch.state_after;
            samples += batch.len();
            let inp = to_inputs(&batch, model.cfg.input, device)?;
            let seed = cfg
                .seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(step * 1000 + micro as u64);
            let autocast = device.is_cuda();
            let losses = tch::autocast(autocast, || model.losses(&inp, obj, seed));
            (losses.total.to_kind(Kind::Float) / cfg.accumulate.max(1) as f64).backward();
            for (k, t) in [
                &losses.total,
                &losses.mim,
                &losses.mlm,
                &losses.sal,
                &losses.cml,
                &losses.dcl,
                &losses.ssm,
            ]
            .into_iter()
            .enumerate()
            {
                sums[k] += t.to_kind(Kind::Double).double_value(&[]) / cfg.accumulate.max(1) as f64;
            }
        }
        let grad_norm = opt.clip(cfg.clip);
        opt.apply(lr, cfg);
        let secs = t0.elapsed().as_secs_f64();
        let m = StepMetrics {
            step,
            lr,
            total: sums[0],
            mim: sums[1],
            mlm: sums[2],
            sal: sums[3],
            cml: sums[4],
            dcl: sums[5],
            ssm: sums[6],
            grad_norm,
            seconds: secs,
            samples_per_s: samples as f64 / secs.max(1e-9),
        };
        on_step(&m);
        history.push(m.clone());
        out.push(m);
        if step % cfg.checkpoint_every.max(1) == 0 || step == cfg.steps {
            save_checkpoint(
                ckpt_dir,
                vs,
                &opt,
                &CheckpointState {
                    step,
                    loader_epoch: pos.epoch,
                    loader_sample_in_epoch: pos.sample_in_epoch,
                    train: cfg.clone(),
                    metrics: history.clone(),
                },
            )?;
        }
    }
    Ok(out)
}
