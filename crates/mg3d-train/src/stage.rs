//! The `train` stage: MG-3D pre-training on the shards stage's train split.
//!
//! Checkpoints go to a directory beneath the stage's item store keyed by the stage fingerprint and
//! the shards' index, so a killed run of the same stage resumes from its last checkpoint (on the
//! CPU the loss sequence then equals the uninterrupted run's). The output holds the final
//! checkpoint (`final/`: model.safetensors, optimizer.safetensors, state.json), `metrics.parquet`
//! (one row per step) and `train.json` (settings and speed).

use std::path::Path;

use mg3d_core::rows::MetricsRow;
use mg3d_core::stage::{InputDecl, ParamDef, Params, Stage, StageContext, StageError};
use mg3d_core::table::write_rows;
use mg3d_report::hf_tokenizer::TokenizerFiles;
use mg3d_shard::ShardIndex;
use serde_json::{Value, json};
use tch::nn;

use crate::TrainError;
use crate::model::{Mg3d, ModelConfig, Objectives};
use crate::swin::SwinConfig;
use crate::tensorboard::EventWriter;
use crate::trainer::{CheckpointState, StepMetrics, TrainConfig, latest_checkpoint, train};

/// The `train` stage.
pub struct TrainStage;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct TrainParams {
        /// image encoder: tiny | swin-b | swin-l | path.toml
        model: String = json!("tiny"),
        /// Hugging Face BERT folder (config.json, model.safetensors, tokenizer.json)
        text_model: String = json!(".venv/minilm"),
        /// train the text encoder too (MG-3D: frozen)
        text_trainable: bool = json!(false),
        /// fusion width (MG-3D: 768)
        hidden: i64 = json!(64),
        /// volume D, H, W fed to the model (centre crop/pad; multiples of 32)
        input: Vec<i64> = json!([32, 64, 64]),
        /// cpu | cuda | cuda:N | auto (cuda when available)
        device: String = json!("auto"),
        /// optimiser steps
        steps: i64 = json!(30),
        /// samples per micro-batch
        batch_size: i64 = json!(2),
        /// micro-batches per step
        accumulate: i64 = json!(1),
        /// base learning rate (x5 for heads and multi_modal modules)
        lr: f64 = json!(1e-4),
        /// linear warmup steps, then linear decay to 0
        warmup: i64 = json!(3),
        /// global gradient norm clip (0 = off)
        clip: f64 = json!(1.0),
        /// checkpoint every N steps
        checkpoint_every: i64 = json!(10),
        /// seed of initialisation, sample order and masks
        seed: i64 = json!(0),
        /// loader threads
        workers: i64 = json!(1),
        /// loss weights and settings (mim, mlm, sal, cml, dcl, ssm, temperature, mask_ratio,
        /// cube_fraction, mlm_probability)
        objectives: serde_json::Map<String, Value> = json!({}),
        /// start from: a train output folder (every weight), or Swin encoder weights in MONAI's
        /// layout (.safetensors, or a torch.save .pt/.pth/.bin such as a SwinUNETR checkpoint or
        /// MONAI's self-supervised model_swinvit.pt); empty = random initialisation
        init_from: String = json!(""),
    }
}

impl TrainParams {
    fn configs(&self) -> Result<(ModelConfig, TrainConfig, Objectives), TrainError> {
        let swin = if self.model.ends_with(".toml") {
            SwinConfig::from_file(Path::new(&self.model))?
        } else {
            SwinConfig::preset(&self.model)?
        };
        self.configs_with(swin)
    }

    /// [`TrainParams::configs`] with the image encoder's config given (a model folder has it).
    fn configs_with(
        &self,
        swin: SwinConfig,
    ) -> Result<(ModelConfig, TrainConfig, Objectives), TrainError> {
        let input: [i64; 3] = self
            .input
            .clone()
            .try_into()
            .map_err(|_| TrainError::Params("input must be [D, H, W]".into()))?;
        let obj: Objectives = if self.objectives.is_empty() {
            Objectives::default()
        } else {
            let mut base =
                serde_json::to_value(Objectives::default()).map_err(TrainError::Objectives)?;
            for (k, v) in &self.objectives {
                if base.get(k).is_none() {
                    return Err(TrainError::UnknownObjective(k.clone()));
                }
                base[k] = v.clone();
            }
            serde_json::from_value(base).map_err(TrainError::Objectives)?
        };
        let pos = |x: i64, n: &str| -> Result<u64, TrainError> {
            if x < 1 {
                Err(TrainError::Params(format!("{n} must be >= 1")))
            } else {
                Ok(x as u64)
            }
        };
        Ok((
            ModelConfig {
                swin,
                hidden: self.hidden,
                fusion_layers: 2,
                pool_heads: if self.hidden % 8 == 0 { 8 } else { 4 },
                input,
                text_trainable: self.text_trainable,
            },
            TrainConfig {
                steps: pos(self.steps, "steps")?,
                batch_size: pos(self.batch_size, "batch_size")? as usize,
                accumulate: pos(self.accumulate, "accumulate")? as usize,
                lr: self.lr,
                warmup: self.warmup.max(0) as u64,
                clip: self.clip,
                checkpoint_every: pos(self.checkpoint_every, "checkpoint_every")?,
                seed: self.seed.max(0) as u64,
                workers: self.workers.max(0) as usize,
                ..Default::default()
            },
            obj,
        ))
    }
}

/// The weights file `init_from` names: a train output's `final/model.safetensors` (or a folder's
/// `model.safetensors`), or the file itself.
fn init_file(from: &Path) -> std::path::PathBuf {
    if !from.is_dir() {
        return from.to_path_buf();
    }
    let final_weights = from.join("final").join("model.safetensors");
    if final_weights.is_file() {
        final_weights
    } else {
        from.join("model.safetensors")
    }
}

/// Sets a freshly built model's weights from `from` (the `init_from` param): every variable from
/// a train output (shapes and names must match: the same model settings), or the image encoder
/// from MONAI-layout Swin weights (strict: every encoder variable, no stray name under the
/// encoder's prefix). Returns what was loaded, for the log.
pub fn init_weights(
    vs: &mut nn::VarStore,
    model: &Mg3d,
    from: &Path,
) -> Result<String, TrainError> {
    let file = init_file(from);
    if from.is_dir() {
        vs.load(&file).map_err(|source| TrainError::Torch {
            path: file.clone(),
            source,
        })?;
        return Ok(format!("every weight from {}", file.display()));
    }
    let report = crate::swin::load_encoder_with(
        model.encoder(),
        &file,
        &crate::swin::LoadOptions::default(),
    )?;
    Ok(format!(
        "{} image encoder tensors (prefix {:?}) from {}",
        report.loaded,
        report.prefix,
        file.display()
    ))
}

/// A trained model loaded from a `train` stage output directory.
pub struct TrainedModel {
    /// The model (weights of `final/model.safetensors`).
    pub model: Mg3d,
    /// Its variables.
    pub vs: nn::VarStore,
    /// The volume size the model takes (D, H, W).
    pub input: [i64; 3],
    /// The text encoder folder the run used (tokenizer.json lives there).
    pub text_model: std::path::PathBuf,
    /// The volumes it was trained on (`None` in a folder that does not say).
    pub volume: Option<ModelVolume>,
}

/// The TensorBoard scalars of a step: losses under `loss/`, then the optimiser and speed.
fn step_scalars(m: &StepMetrics) -> [(&'static str, f64); 11] {
    [
        ("loss/total", m.total),
        ("loss/mim", m.mim),
        ("loss/mlm", m.mlm),
        ("loss/sal", m.sal),
        ("loss/cml", m.cml),
        ("loss/dcl", m.dcl),
        ("loss/ssm", m.ssm),
        ("train/lr", m.lr),
        ("train/grad_norm", m.grad_norm),
        ("train/step_seconds", m.seconds),
        ("train/samples_per_s", m.samples_per_s),
    ]
}

/// The volumes a model was trained on, as its folder records them: the shards' normalisation
/// and preset, and the element type the shards stored them in (what a new scan must go through
/// to be fed to the model as its training volumes were).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelVolume {
    /// Shape, window, layout and preset of the shards' volumes.
    #[serde(flatten)]
    pub spec: mg3d_shard::format::VolumeSpec,
    /// The shards' element type of the volume field (folders written before it existed: f16,
    /// the shards' default).
    #[serde(default = "f16")]
    pub dtype: mg3d_shard::Dtype,
}

fn f16() -> mg3d_shard::Dtype {
    mg3d_shard::Dtype::F16
}

impl ModelVolume {
    /// The volumes of a shards index.
    pub fn of(index: &mg3d_shard::IndexFile) -> ModelVolume {
        let dtype = index
            .fields
            .iter()
            .find(|f| f.name == "volume")
            .map_or(mg3d_shard::Dtype::F16, |f| f.dtype);
        ModelVolume {
            spec: index.volume.clone(),
            dtype,
        }
    }
}

/// The weights file of a model folder.
pub const MODEL_WEIGHTS: &str = "model.safetensors";

/// The model folder's description (see [`write_model_folder`]).
pub const MODEL_CONFIG: &str = "config.json";

/// Makes a train output a model folder that loads without the text folder it was trained from:
/// `config.json` (format, the train params, the image encoder's resolved config, the text
/// encoder's BERT config and pooler, the shards' volume normalisation, where the weights are)
/// and the text folder's tokenizer files (`tokenizer.json`, or `vocab.txt` +
/// `tokenizer_config.json`). The weights, text encoder included, are `model.safetensors`: the
/// final checkpoint's file (`final/model.safetensors`), hard-linked where the file system allows.
pub fn write_model_folder(
    out: &Path,
    params: &serde_json::Map<String, Value>,
    model: &Mg3d,
    text_folder: &Path,
    volume: &ModelVolume,
) -> Result<(), TrainError> {
    let io = |path: std::path::PathBuf| move |source| TrainError::Io { path, source };
    let bert_path = text_folder.join("config.json");
    let bert: Value = std::fs::read_to_string(&bert_path)
        .map_err(io(bert_path.clone()))
        .and_then(|t| {
            serde_json::from_str(&t).map_err(|source| TrainError::Json {
                path: bert_path.clone(),
                source,
            })
        })?;
    let config = json!({
        "format": "mg3d-model",
        "version": 1,
        "train_params": params,
        "swin": model.config().swin,
        "text_config": bert,
        "text_pooler": model.text_encoder().config().add_pooling_layer,
        "volume": volume,
        "weights": MODEL_WEIGHTS,
    });
    let final_weights = out.join("final").join(MODEL_WEIGHTS);
    mg3d_core::fsutil::link_or_copy(&final_weights, &out.join(MODEL_WEIGHTS))
        .map_err(io(final_weights.clone()))?;
    let path = out.join(MODEL_CONFIG);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&config).unwrap_or_default() + "\n",
    )
    .map_err(io(path.clone()))?;
    for from in TokenizerFiles::find(text_folder)?.files() {
        let to = out.join(from.file_name().unwrap_or_default());
        std::fs::copy(from, to).map_err(io(from.to_path_buf()))?;
    }
    Ok(())
}

/// Copies the model folder `from` (a train output) to `to`: `config.json`, the tokenizer files
/// and the weights, hard-linked where the file system allows; with `weights`, those variables are
/// saved as the weights instead (a model whose weights changed after training).
pub fn copy_model_folder(
    from: &Path,
    to: &Path,
    weights: Option<&nn::VarStore>,
) -> Result<(), TrainError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    let config_path = from.join(MODEL_CONFIG);
    let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
    let v: Value = serde_json::from_str(&text).map_err(|source| TrainError::Json {
        path: config_path.clone(),
        source,
    })?;
    let rel = v["weights"].as_str().unwrap_or("final/model.safetensors");
    let dst_weights = to.join(rel);
    if let Some(parent) = dst_weights.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut files = vec![config_path.clone()];
    files.extend(
        TokenizerFiles::find(from)?
            .files()
            .into_iter()
            .map(Path::to_path_buf),
    );
    for f in &files {
        let dst = to.join(f.file_name().unwrap_or_default());
        mg3d_core::fsutil::link_or_copy(f, &dst).map_err(io(f))?;
    }
    match weights {
        Some(vs) => vs.save(&dst_weights).map_err(|source| TrainError::Torch {
            path: dst_weights.clone(),
            source,
        })?,
        None => {
            let src = from.join(rel);
            mg3d_core::fsutil::link_or_copy(&src, &dst_weights).map_err(io(&src))?
        }
    }
    Ok(())
}

/// Loads a `train` stage output (a model folder: see [`write_model_folder`]) onto `device`
/// (`cpu`, `cuda`, `auto`, ...), with every weight of its final checkpoint.
pub fn load_trained(dir: &Path, device: &str) -> Result<TrainedModel, TrainError> {
    let path = dir.join(MODEL_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    let json_err = |source| TrainError::Json {
        path: path.clone(),
        source,
    };
    let v: Value = serde_json::from_str(&text).map_err(json_err)?;
    let p: TrainParams = serde_json::from_value(v["train_params"].clone()).map_err(json_err)?;
    let swin: SwinConfig = serde_json::from_value(v["swin"].clone()).map_err(json_err)?;
    let mut bert = crate::bert::BertConfig::from_json(&v["text_config"], &path)?;
    bert.add_pooling_layer = v["text_pooler"].as_bool().unwrap_or(false);
    let (mcfg, _, _) = p.configs_with(swin)?;
    let device = crate::runtime::pick_device(device)?;
    let mut vs = nn::VarStore::new(device);
    let input = mcfg.input;
    let model = Mg3d::with_text_config(&vs, mcfg, &bert, dir)?;
    let weights = dir.join(v["weights"].as_str().unwrap_or("final/model.safetensors"));
    vs.load(&weights).map_err(|source| TrainError::Torch {
        path: weights.clone(),
        source,
    })?;
    vs.freeze();
    Ok(TrainedModel {
        model,
        vs,
        input,
        text_model: dir.to_path_buf(),
        volume: serde_json::from_value(v["volume"].clone()).ok(),
    })
}

fn write_metrics(path: &Path, m: &[StepMetrics]) -> Result<(), StageError> {
    let rows: Vec<MetricsRow> = m
        .iter()
        .map(|s| MetricsRow {
            step: s.step as i64,
            lr: s.lr,
            total: s.total,
            mim: s.mim,
            mlm: s.mlm,
            sal: s.sal,
            cml: s.cml,
            dcl: s.dcl,
            ssm: s.ssm,
            grad_norm: s.grad_norm,
        })
        .collect();
    write_rows(path, &rows)?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

impl Stage for TrainStage {
    fn kind(&self) -> &'static str {
        "train"
    }
    fn code_version(&self) -> &'static str {
        "3"
    }
    fn describe(&self) -> &'static str {
        "MG-3D pre-training (Swin3D + BERT, five objectives) on the shards -> checkpoint, metrics.parquet"
    }
    fn params(&self) -> Vec<ParamDef> {
        TrainParams::defs()
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "shards",
            required: true,
        }]
    }
    fn check_params(&self, params: &Params) -> Result<(), StageError> {
        let p: TrainParams = params.parse()?;
        p.configs()?;
        Ok(())
    }
    fn item_params(&self) -> Option<Vec<&'static str>> {
        // Checkpoints of a killed run stay valid for everything but the step count.
        Some(vec![
            "model",
            "text_model",
            "text_trainable",
            "hidden",
            "input",
            "batch_size",
            "accumulate",
            "lr",
            "warmup",
            "clip",
            "seed",
            "objectives",
            "init_from",
        ])
    }
    fn sources_fingerprint(&self, params: &Params) -> Result<Option<String>, StageError> {
        // The starting weights' bytes: new weights under the same path rerun the stage.
        let p: TrainParams = params.parse()?;
        if p.init_from.is_empty() {
            return Ok(None);
        }
        let file = init_file(Path::new(&p.init_from));
        let d = mg3d_core::fsutil::hash_file(&file)
            .map_err(|source| TrainError::Io { path: file, source })?;
        Ok(Some(d.blake3))
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: TrainParams = ctx.params.parse()?;
        let (mcfg, tcfg, obj) = p.configs()?;
        let device = crate::runtime::pick_device(&p.device).map_err(TrainError::from)?;
        let shards_dir = ctx.input("shards")?;
        let index = ShardIndex::open(shards_dir)?;
        // The model input is the volumes' shape as the shards hold it ([D, H, W] = [S, A, R]).
        let [r, a, s] = index.file.volume.shape_ras;
        let volumes = [s as i64, a as i64, r as i64];
        if mcfg.input != volumes {
            return Err(TrainError::InputMismatch {
                input: mcfg.input,
                volumes,
            }
            .into());
        }
        let digest = mg3d_core::fsutil::hash_file(&shards_dir.join("index.json"))?;
        let key = ctx.items().key("train-run", &digest.blake3);
        let ckpt_dir = ctx.items().root().join("checkpoints").join(&key);
        let resume = latest_checkpoint(&ckpt_dir);
        tch::manual_seed(tcfg.seed as i64);
        let mut vs = nn::VarStore::new(device);
        let model = Mg3d::new(&vs, mcfg, Path::new(&p.text_model))?;
        let bar = ctx.progress_bar(tcfg.steps, "train");
        // TensorBoard: every loss, the learning rate and step time, in the stage's store (the
        // times differ run to run, so not in the output, which is reproducible), one folder per
        // run key so a resumed run continues its curves; a dot folder, which pruning keeps after
        // the checkpoints go. Logging is not worth failing a run for.
        let events_dir = ctx.items().root().join(".tensorboard").join(&key);
        let mut events = EventWriter::create(&events_dir)
            .inspect_err(|e| tracing::warn!("no TensorBoard events: {e}"))
            .ok();
        if let Some(r) = &resume {
            tracing::info!(checkpoint = %r.display(), "resuming");
        } else if !p.init_from.is_empty() {
            let what = init_weights(&mut vs, &model, Path::new(&p.init_from))?;
            tracing::info!("initialised with {what}");
        }
        // Steps before the checkpoint a killed run left behind.
        let earlier: Vec<StepMetrics> = match &resume {
            Some(r) => std::fs::read_to_string(r.join("state.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<CheckpointState>(&t).ok())
                .map(|st| st.metrics)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let metrics = train(
            &model,
            &mut vs,
            &obj,
            &tcfg,
            &index,
            &ckpt_dir,
            resume.as_deref(),
            |m| {
                if let Some(w) = &mut events
                    && let Err(e) = w.scalars(m.step as i64, &step_scalars(m))
                {
                    tracing::warn!("TensorBoard events stop: {e}");
                    events = None;
                }
                bar.set_position(m.step);
                bar.set_message(format!(
                    "loss {:.4}, {:.1} samples/s",
                    m.total, m.samples_per_s
                ));
            },
        )?;
        bar.finish_and_clear();
        let mut all = earlier;
        all.extend(metrics.iter().cloned());
        write_metrics(&ctx.out_dir.join("metrics.parquet"), &all)?;
        let last = latest_checkpoint(&ckpt_dir).ok_or(TrainError::NoCheckpoint)?;
        copy_dir(&last, &ctx.out_dir.join("final"))?;
        let n = metrics.len().max(1) as f64;
        let step_s = metrics.iter().map(|m| m.seconds).sum::<f64>() / n;
        let sps = metrics.iter().map(|m| m.samples_per_s).sum::<f64>() / n;
        let record = json!({
            "steps": all.len(),
            "model": ctx.params.as_map(),
            "first_total": all.first().map(|m| m.total),
            "last_total": all.last().map(|m| m.total),
        });
        std::fs::write(
            ctx.out_dir.join("train.json"),
            serde_json::to_string_pretty(&record).unwrap_or_default() + "\n",
        )?;
        write_model_folder(
            &ctx.out_dir,
            ctx.params.as_map(),
            &model,
            Path::new(&p.text_model),
            &ModelVolume::of(&index.file),
        )?;
        // Wall-clock numbers and the resume only in the run report (outputs and the lockfile stay
        // reproducible).
        Ok(json!({
            "steps": all.len(),
            "device": format!("{device:?}"),
            "first_total": all.first().map(|m| m.total),
            "last_total": all.last().map(|m| m.total),
            mg3d_core::stage::THIS_RUN: {
                "resumed_from": resume.map(|r| r.file_name().map(|n| n.to_string_lossy().to_string())),
                "mean_step_seconds": step_s,
                "mean_samples_per_s": sps,
                "tensorboard": events_dir,
            },
        }))
    }
}
