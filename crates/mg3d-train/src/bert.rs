//! Hugging Face BERT (the MG-3D text encoder) in tch, loaded from a model folder.
//!
//! A folder is what `transformers` saves: `config.json` (a `BertConfig`) and `model.safetensors`,
//! or, in the older layout, `pytorch_model.bin` (read by [`crate::torch_pickle`]); the tokenizer
//! files next to them (`tokenizer.json`, or `vocab.txt`) are read by `mg3d_report::hf_tokenizer`. Parameter names
//! are exactly `transformers`' `BertModel` names (`embeddings.word_embeddings.weight`,
//! `encoder.layer.{i}.attention.self.query.weight`, `pooler.dense.bias`, ...), so a checkpoint
//! saved from a bare `BertModel` also loads with [`tch::nn::VarStore::load`] when the model sits
//! at the store's root. [`BertModel::load_into`] additionally accepts checkpoints whose names carry
//! a `bert.` prefix (saved from `BertForMaskedLM` and friends, e.g. RadBERT), skips heads and
//! buffers it does not use, and names missing, misshapen or unexpected tensors in its errors.
//!
//! The forward pass equals `transformers`' `BertModel` (absolute positions, token type 0 unless
//! given, the additive padding mask filled with the dtype's minimum, exact erf GELU); see
//! `tests/bert_reference.rs` for the check against `last_hidden_state`.
//!
//! Frozen or trainable is chosen when the model is built: frozen parameters are registered as
//! non-trainable variables (no gradient, absent from [`tch::nn::VarStore::trainable_variables`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::nn::{self, Init};
use tch::{Device, Kind, TchError, Tensor};

/// Errors reading a BERT folder, its config or its weights.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    /// The model folder is not there.
    #[error(
        "BERT model folder {0} does not exist; run `make setup` (it links .venv/minilm) or point the text encoder at a Hugging Face folder holding config.json and model.safetensors"
    )]
    MissingFolder(PathBuf),
    /// A required file of the folder is not there.
    #[error(
        "{path} is missing; a Hugging Face BERT folder needs {what} (save one with `model.save_pretrained(folder, safe_serialization=True)`)"
    )]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// What the file holds.
        what: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// config.json is not JSON (or not an object).
    #[error("{path} is not a valid JSON object: {message}; fix or re-download config.json")]
    ConfigJson {
        /// The config file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A config field is missing, has the wrong type or an impossible value.
    #[error("{path}: field `{field}` {problem}; fix config.json (a Hugging Face BertConfig)")]
    ConfigField {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The config asks for something this encoder does not implement.
    #[error("{path}: `{field}` = {value} is not supported (supported: {supported})")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// Its value.
        value: String,
        /// What would work.
        supported: &'static str,
    },
    /// The weights file could not be read as safetensors.
    #[error("cannot read the weights in {path}: {source}")]
    Checkpoint {
        /// The weights file.
        path: PathBuf,
        /// The tch error.
        source: TchError,
    },
    /// Parameters of the model are not in the checkpoint.
    #[error(
        "{path} lacks {} of the model's {expected} BERT tensors: {}; the checkpoint does not match config.json (names are tried with and without a `bert.` prefix)",
        names.len(), list(names)
    )]
    MissingTensors {
        /// The weights file.
        path: PathBuf,
        /// The missing names (HF names without prefix).
        names: Vec<String>,
        /// How many tensors the model has.
        expected: usize,
    },
    /// A checkpoint tensor has a different shape from the model's parameter.
    #[error(
        "{path}: tensor `{name}` has shape {found:?} but config.json implies {expected:?}; the checkpoint does not match config.json"
    )]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The tensor (HF name without prefix).
        name: String,
        /// The model's shape.
        expected: Vec<i64>,
        /// The checkpoint's shape.
        found: Vec<i64>,
    },
    /// The checkpoint has embedding or encoder tensors the model does not (e.g. more layers).
    #[error(
        "{path} has {} BERT tensors that config.json does not account for: {}; the checkpoint does not match config.json",
        names.len(), list(names)
    )]
    UnexpectedTensors {
        /// The weights file.
        path: PathBuf,
        /// The unexpected names.
        names: Vec<String>,
    },
    /// `pytorch_model.bin` could not be read.
    #[error(transparent)]
    Pickle(#[from] crate::torch_pickle::PickleError),
    /// Building the model's variables failed.
    #[error("building BERT parameter `{name}`: {source}")]
    Build {
        /// The parameter.
        name: String,
        /// The tch error.
        source: TchError,
    },
}

fn list(names: &[String]) -> String {
    const SHOW: usize = 8;
    let mut s = names
        .iter()
        .take(SHOW)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOW {
        s.push_str(&format!(" and {} more", names.len() - SHOW));
    }
    s
}

/// The activation of the feed-forward block (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact erf GELU (PyTorch `approximate="none"`).
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => xs.gelu("none"),
            Activation::GeluTanh => xs.gelu("tanh"),
            Activation::Relu => xs.relu(),
        }
    }
}

/// A Hugging Face `BertConfig`, as read from `config.json`.
///
/// The five size fields are required; the rest default to `transformers`' defaults when absent.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size (`vocab_size`).
    pub vocab_size: i64,
    /// Width of the hidden states (`hidden_size`).
    pub hidden_size: i64,
    /// Number of transformer layers (`num_hidden_layers`).
    pub num_hidden_layers: i64,
    /// Number of attention heads (`num_attention_heads`); divides `hidden_size`.
    pub num_attention_heads: i64,
    /// Width of the feed-forward block (`intermediate_size`).
    pub intermediate_size: i64,
    /// Feed-forward activation (`hidden_act`, default `gelu`).
    pub hidden_act: Activation,
    /// LayerNorm epsilon (`layer_norm_eps`, default 1e-12).
    pub layer_norm_eps: f64,
    /// Number of learned positions (`max_position_embeddings`, default 512).
    pub max_position_embeddings: i64,
    /// Number of token types (`type_vocab_size`, default 2).
    pub type_vocab_size: i64,
    /// Padding token id (`pad_token_id`, default 0); its word embedding gets no gradient.
    pub pad_token_id: i64,
    /// Dropout on hidden states in training (`hidden_dropout_prob`, default 0.1).
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities in training (`attention_probs_dropout_prob`, default 0.1).
    pub attention_probs_dropout_prob: f64,
    /// Standard deviation of the random init of fresh models (`initializer_range`, default 0.02).
    pub initializer_range: f64,
    /// Whether the model has the `pooler.dense` layer (not a config.json field; default true,
    /// [`BertModel::load_into`] sets it from the checkpoint).
    pub add_pooling_layer: bool,
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BertError> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(BertError::MissingFile {
                path: path.to_path_buf(),
                what: "config.json (the BertConfig)",
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| BertError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| BertError::ConfigJson {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_json(&value, path)
    }

    /// Reads and checks a parsed `config.json`; `source` names the file in errors.
    pub fn from_json(value: &Value, source: &Path) -> Result<Self, BertError> {
        let obj = value.as_object().ok_or_else(|| BertError::ConfigJson {
            path: source.to_path_buf(),
            message: "the top level is not an object".into(),
        })?;
        let field_err = |field: &str, problem: String| BertError::ConfigField {
            path: source.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        let int = |field: &str, default: Option<i64>, min: i64| -> Result<i64, BertError> {
            match obj.get(field) {
                None | Some(Value::Null) => {
                    default.ok_or_else(|| field_err(field, "is missing".into()))
                }
                Some(v) => match v.as_i64() {
                    Some(n) if n >= min => Ok(n),
                    Some(n) => Err(field_err(field, format!("is {n}, expected at least {min}"))),
                    None => Err(field_err(field, format!("is {v}, expected an integer"))),
                },
            }
        };
        let float = |field: &str, default: f64, lo: f64, hi: f64| -> Result<f64, BertError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => match v.as_f64() {
                    Some(x) if (lo..=hi).contains(&x) => Ok(x),
                    _ => Err(field_err(
                        field,
                        format!("is {v}, expected a number in [{lo}, {hi}]"),
                    )),
                },
            }
        };
        let string = |field: &str, default: &str| -> Result<String, BertError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(field_err(field, format!("is {v}, expected a string"))),
            }
        };
        let unsupported =
            |field: &str, value: String, supported: &'static str| BertError::Unsupported {
                path: source.to_path_buf(),
                field: field.to_string(),
                value,
                supported,
            };

        if let Some(mt) = obj.get("model_type")
            && mt.as_str() != Some("bert")
        {
            return Err(unsupported("model_type", mt.to_string(), "\"bert\""));
        }
        let hidden_act = match string("hidden_act", "gelu")?.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(unsupported(
                    "hidden_act",
                    format!("{other:?}"),
                    "gelu, gelu_new, gelu_pytorch_tanh, relu",
                ));
            }
        };
        let pos = string("position_embedding_type", "absolute")?;
        if pos != "absolute" {
            return Err(unsupported(
                "position_embedding_type",
                format!("{pos:?}"),
                "\"absolute\"",
            ));
        }
        let cfg = BertConfig {
            vocab_size: int("vocab_size", None, 1)?,
            hidden_size: int("hidden_size", None, 1)?,
            num_hidden_layers: int("num_hidden_layers", None, 0)?,
            num_attention_heads: int("num_attention_heads", None, 1)?,
            intermediate_size: int("intermediate_size", None, 1)?,
            hidden_act,
            layer_norm_eps: float("layer_norm_eps", 1e-12, 0.0, 1.0)?,
            max_position_embeddings: int("max_position_embeddings", Some(512), 1)?,
            type_vocab_size: int("type_vocab_size", Some(2), 1)?,
            pad_token_id: int("pad_token_id", Some(0), 0)?,
            hidden_dropout_prob: float("hidden_dropout_prob", 0.1, 0.0, 1.0)?,
            attention_probs_dropout_prob: float("attention_probs_dropout_prob", 0.1, 0.0, 1.0)?,
            initializer_range: float("initializer_range", 0.02, 0.0, f64::MAX)?,
            add_pooling_layer: true,
        };
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(field_err(
                "num_attention_heads",
                format!(
                    "is {}, which does not divide hidden_size {}",
                    cfg.num_attention_heads, cfg.hidden_size
                ),
            ));
        }
        if cfg.pad_token_id >= cfg.vocab_size {
            return Err(field_err(
                "pad_token_id",
                format!(
                    "is {}, outside the vocabulary of {}",
                    cfg.pad_token_id, cfg.vocab_size
                ),
            ));
        }
        Ok(cfg)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

/// What [`BertModel::forward`] returns.
#[derive(Debug)]
pub struct BertOutput {
    /// Output of the last layer, `[batch, len, hidden]` (`transformers`' `last_hidden_state`).
    pub last_hidden_state: Tensor,
    /// Output of the embedding layer (word + position + type, LayerNorm, dropout),
    /// `[batch, len, hidden]` (`transformers`' `hidden_states[0]`); MG-3D's SAL/SSM targets.
    pub embeddings: Tensor,
}

/// What [`BertModel::load_into`] did with the checkpoint's tensors.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Number of model parameters filled from the checkpoint.
    pub loaded: usize,
    /// Whether the checkpoint's names carried the `bert.` prefix.
    pub prefixed: bool,
    /// Checkpoint tensors that were skipped (buffers such as `embeddings.position_ids`, heads
    /// such as `cls.*`, or the pooler when the model has none), with their original names.
    pub ignored: Vec<String>,
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let d = self.weight.size()[0];
        xs.layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, Some(&self.bias))
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// Registers parameters under a path with HF names and records them for loading.
struct Builder<'a, 'p> {
    root: &'a nn::Path<'p>,
    trainable: bool,
    std: f64,
    eps: f64,
    params: Vec<(String, Tensor)>,
}

impl Builder<'_, '_> {
    fn param(&mut self, name: &str, dims: &[i64], init: Init) -> Result<Tensor, BertError> {
        let build = |source| BertError::Build {
            name: name.to_string(),
            source,
        };
        // tch names may not contain '.': walk the components as sub-paths.
        let (dir, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let p = dir
            .split('.')
            .filter(|c| !c.is_empty())
            .fold(self.root.clone(), |p, c| p.sub(c));
        if p.get(leaf).is_some() {
            return Err(build(TchError::Convert(format!(
                "variable {} already exists in the VarStore; build the BERT under a fresh path",
                p.path(leaf)
            ))));
        }
        let t = nn::f_init(init, dims, p.device(), p.kind()).map_err(build)?;
        let t = p.add(leaf, t, self.trainable);
        self.params.push((name.to_string(), t.shallow_clone()));
        Ok(t)
    }

    fn linear(&mut self, name: &str, inp: i64, out: i64) -> Result<Linear, BertError> {
        let weight = self.param(
            &format!("{name}.weight"),
            &[out, inp],
            Init::Randn {
                mean: 0.,
                stdev: self.std,
            },
        )?;
        let bias = self.param(&format!("{name}.bias"), &[out], Init::Const(0.))?;
        Ok(Linear { weight, bias })
    }

    fn layer_norm(&mut self, name: &str, d: i64) -> Result<LayerNorm, BertError> {
        Ok(LayerNorm {
            weight: self.param(&format!("{name}.weight"), &[d], Init::Const(1.))?,
            bias: self.param(&format!("{name}.bias"), &[d], Init::Const(0.))?,
            eps: self.eps,
        })
    }

    fn embedding(&mut self, name: &str, n: i64, d: i64) -> Result<Tensor, BertError> {
        self.param(
            &format!("{name}.weight"),
            &[n, d],
            Init::Randn {
                mean: 0.,
                stdev: self.std,
            },
        )
    }
}

/// A Hugging Face `BertModel` (embeddings, encoder, optional pooler) with `transformers`' names.
pub struct BertModel {
    config: BertConfig,
    trainable: bool,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    params: Vec<(String, Tensor)>,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel")
            .field("config", &self.config)
            .field("trainable", &self.trainable)
            .field("parameters", &self.params.len())
            .finish()
    }
}

/// A folder's weights: `model.safetensors`, or else `pytorch_model.bin` (the older Hugging Face
/// layout, a `torch.save` archive; RadBERT has only this), read by [`crate::torch_pickle`].
fn read_weights(folder: &Path) -> Result<(PathBuf, Vec<(String, Tensor)>), BertError> {
    let safetensors = folder.join("model.safetensors");
    if safetensors.exists() {
        let t = Tensor::read_safetensors(&safetensors).map_err(|source| BertError::Checkpoint {
            path: safetensors.clone(),
            source,
        })?;
        return Ok((safetensors, t));
    }
    let bin = folder.join("pytorch_model.bin");
    if !bin.exists() {
        return Err(BertError::MissingFile {
            path: safetensors,
            what: "model.safetensors or pytorch_model.bin (the weights)",
        });
    }
    let t = crate::torch_pickle::read_state_dict(&bin)?;
    // Checkpoints older than transformers 2 call LayerNorm's parameters gamma and beta.
    let renamed = t
        .into_iter()
        .map(|(n, t)| {
            let n = match n.strip_suffix(".gamma") {
                Some(stem) if stem.ends_with("LayerNorm") => format!("{stem}.weight"),
                _ => match n.strip_suffix(".beta") {
                    Some(stem) if stem.ends_with("LayerNorm") => format!("{stem}.bias"),
                    _ => n,
                },
            };
            (n, t)
        })
        .collect();
    Ok((bin, renamed))
}

impl BertModel {
    /// Builds a randomly initialised BERT (HF init: normal(0, `initializer_range`) weights,
    /// zero biases, unit LayerNorms) with its variables under `p`, named as in `transformers`.
    /// `trainable = false` registers them as frozen (no gradient, not in the trainable list).
    pub fn new(p: &nn::Path, config: &BertConfig, trainable: bool) -> Result<Self, BertError> {
        let mut b = Builder {
            root: p,
            trainable,
            std: config.initializer_range,
            eps: config.layer_norm_eps,
            params: Vec::new(),
        };
        let d = config.hidden_size;
        let word_embeddings = b.embedding("embeddings.word_embeddings", config.vocab_size, d)?;
        let position_embeddings = b.embedding(
            "embeddings.position_embeddings",
            config.max_position_embeddings,
            d,
        )?;
        let token_type_embeddings = b.embedding(
            "embeddings.token_type_embeddings",
            config.type_vocab_size,
            d,
        )?;
        let embeddings_norm = b.layer_norm("embeddings.LayerNorm", d)?;
        // HF zeroes the padding row of the word embeddings at init.
        tch::no_grad(|| {
            let _ = word_embeddings.get(config.pad_token_id).zero_();
        });
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for i in 0..config.num_hidden_layers {
            let l = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: b.linear(&format!("{l}.attention.self.query"), d, d)?,
                key: b.linear(&format!("{l}.attention.self.key"), d, d)?,
                value: b.linear(&format!("{l}.attention.self.value"), d, d)?,
                attention_output: b.linear(&format!("{l}.attention.output.dense"), d, d)?,
                attention_norm: b.layer_norm(&format!("{l}.attention.output.LayerNorm"), d)?,
                intermediate: b.linear(
                    &format!("{l}.intermediate.dense"),
                    d,
                    config.intermediate_size,
                )?,
                output: b.linear(&format!("{l}.output.dense"), config.intermediate_size, d)?,
                output_norm: b.layer_norm(&format!("{l}.output.LayerNorm"), d)?,
            });
        }
        let pooler = if config.add_pooling_layer {
            Some(b.linear("pooler.dense", d, d)?)
        } else {
            None
        };
        Ok(BertModel {
            config: config.clone(),
            trainable,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_norm,
            layers,
            pooler,
            params: b.params,
        })
    }

    /// Loads a Hugging Face BERT folder into a fresh [`nn::VarStore`] on `device`.
    /// `trainable = false` freezes it (MG-3D's default for the text encoder).
    pub fn load(
        folder: impl AsRef<Path>,
        device: Device,
        trainable: bool,
    ) -> Result<(nn::VarStore, BertModel), BertError> {
        let vs = nn::VarStore::new(device);
        let (model, _) = Self::load_into(&vs.root(), folder, trainable)?;
        Ok((vs, model))
    }

    /// Loads a Hugging Face BERT folder with its variables under `p` (e.g. `root / "text"` of
    /// the whole MG-3D model's store). Reads `config.json` and `model.safetensors`; names with a
    /// `bert.` prefix are accepted; the pooler is built when the checkpoint has one.
    pub fn load_into(
        p: &nn::Path,
        folder: impl AsRef<Path>,
        trainable: bool,
    ) -> Result<(BertModel, LoadReport), BertError> {
        let folder = folder.as_ref();
        if !folder.is_dir() {
            return Err(BertError::MissingFolder(folder.to_path_buf()));
        }
        let mut config = BertConfig::from_file(folder.join("config.json"))?;
        let (weights, tensors) = read_weights(folder)?;
        config.add_pooling_layer = tensors.iter().any(|(n, _)| {
            let n = n.strip_prefix("bert.").unwrap_or(n);
            n.starts_with("pooler.dense.")
        });
        let model = Self::new(p, &config, trainable)?;
        let report = model.copy_weights(tensors, &weights)?;
        Ok((model, report))
    }

    /// Fills this model's parameters from a safetensors file (names with or without `bert.`).
    pub fn load_safetensors(&self, path: impl AsRef<Path>) -> Result<LoadReport, BertError> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(BertError::MissingFile {
                path: path.to_path_buf(),
                what: "model.safetensors (the weights)",
            });
        }
        let tensors = Tensor::read_safetensors(path).map_err(|source| BertError::Checkpoint {
            path: path.to_path_buf(),
            source,
        })?;
        self.copy_weights(tensors, path)
    }

    fn copy_weights(
        &self,
        tensors: Vec<(String, Tensor)>,
        source: &Path,
    ) -> Result<LoadReport, BertError> {
        let prefixed = tensors.iter().any(|(n, _)| n.starts_with("bert."))
            && !tensors.iter().any(|(n, _)| n.starts_with("embeddings."));
        let mut report = LoadReport {
            prefixed,
            ..Default::default()
        };
        let mut by_name: HashMap<String, (String, Tensor)> = HashMap::new();
        for (orig, t) in tensors {
            match if prefixed {
                orig.strip_prefix("bert.")
            } else {
                Some(orig.as_str())
            } {
                Some(n) => {
                    by_name.insert(n.to_string(), (orig.clone(), t));
                }
                None => report.ignored.push(orig),
            }
        }
        let ours: HashSet<&str> = self.params.iter().map(|(n, _)| n.as_str()).collect();
        let mut missing = Vec::new();
        for (name, var) in &self.params {
            let Some((_, src)) = by_name.get(name) else {
                missing.push(name.clone());
                continue;
            };
            if src.size() != var.size() {
                return Err(BertError::ShapeMismatch {
                    path: source.to_path_buf(),
                    name: name.clone(),
                    expected: var.size(),
                    found: src.size(),
                });
            }
            let mut dst = var.shallow_clone();
            tch::no_grad(|| dst.f_copy_(&src.to_kind(var.kind()))).map_err(|e| {
                BertError::Checkpoint {
                    path: source.to_path_buf(),
                    source: e,
                }
            })?;
            report.loaded += 1;
        }
        if !missing.is_empty() {
            return Err(BertError::MissingTensors {
                path: source.to_path_buf(),
                names: missing,
                expected: self.params.len(),
            });
        }
        let mut unexpected = Vec::new();
        for (name, (orig, _)) in by_name {
            if ours.contains(name.as_str()) {
                continue;
            }
            let buffer = name == "embeddings.position_ids" || name == "embeddings.token_type_ids";
            if !buffer && (name.starts_with("embeddings.") || name.starts_with("encoder.")) {
                unexpected.push(orig);
            } else {
                report.ignored.push(orig);
            }
        }
        if !unexpected.is_empty() {
            unexpected.sort();
            return Err(BertError::UnexpectedTensors {
                path: source.to_path_buf(),
                names: unexpected,
            });
        }
        report.ignored.sort();
        Ok(report)
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Whether the parameters are trainable (false: frozen).
    pub fn trainable(&self) -> bool {
        self.trainable
    }

    /// The parameters with their `transformers` names (relative to the build path).
    pub fn named_parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Inference forward (no dropout) with token type 0; see [`BertModel::forward_t`].
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> BertOutput {
        self.forward_t(input_ids, attention_mask, None, false)
    }

    /// Forward pass. `input_ids`: `[batch, len]` int64; `attention_mask`: `[batch, len]`,
    /// 1 (or true) on real tokens and 0 on padding, any dtype; `token_type_ids`: `[batch, len]`
    /// or zeros. `train` turns dropout on.
    ///
    /// Panics (like tch modules) when the shapes disagree or `len` exceeds
    /// `max_position_embeddings`.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> BertOutput {
        let (b, l) = input_ids.size2().expect("input_ids must be [batch, len]");
        assert_eq!(
            attention_mask.size(),
            [b, l],
            "attention_mask must have the shape of input_ids"
        );
        assert!(
            l <= self.config.max_position_embeddings,
            "sequence length {l} exceeds max_position_embeddings {}",
            self.config.max_position_embeddings
        );
        let device = self.word_embeddings.device();
        let kind = self.word_embeddings.kind();
        let c = &self.config;

        let position_ids = Tensor::arange(l, (Kind::Int64, device)).unsqueeze(0);
        let zeros;
        let token_type_ids = match token_type_ids {
            Some(t) => t,
            None => {
                zeros = input_ids.zeros_like();
                &zeros
            }
        };
        let words = Tensor::embedding(
            &self.word_embeddings,
            input_ids,
            c.pad_token_id,
            false,
            false,
        );
        let types = Tensor::embedding(
            &self.token_type_embeddings,
            token_type_ids,
            -1,
            false,
            false,
        );
        let positions =
            Tensor::embedding(&self.position_embeddings, &position_ids, -1, false, false);
        let embeddings = self
            .embeddings_norm
            .forward(&(words + types + positions))
            .dropout(c.hidden_dropout_prob, train);

        // [batch, 1, 1, len]: 0 where attended, the dtype's minimum on padding (as HF).
        let mask = (attention_mask.to_kind(kind).neg() + 1.0)
            .view([b, 1, 1, l])
            .to_device(device)
            * kind_min(kind);
        let (h, dh) = (c.num_attention_heads, c.head_dim());
        let attn_dropout = if train {
            c.attention_probs_dropout_prob
        } else {
            0.0
        };
        let mut hidden = embeddings.shallow_clone();
        for layer in &self.layers {
            let heads = |x: Tensor| x.view([b, l, h, dh]).transpose(1, 2);
            let q = heads(layer.query.forward(&hidden));
            let k = heads(layer.key.forward(&hidden));
            let v = heads(layer.value.forward(&hidden));
            let ctx = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&mask),
                attn_dropout,
                false,
                None,
                false,
            )
            .transpose(1, 2)
            .reshape([b, l, c.hidden_size]);
            let attended = layer.attention_norm.forward(
                &(layer
                    .attention_output
                    .forward(&ctx)
                    .dropout(c.hidden_dropout_prob, train)
                    + &hidden),
            );
            let inner = c.hidden_act.apply(&layer.intermediate.forward(&attended));
            hidden = layer.output_norm.forward(
                &(layer
                    .output
                    .forward(&inner)
                    .dropout(c.hidden_dropout_prob, train)
                    + &attended),
            );
        }
        BertOutput {
            last_hidden_state: hidden,
            embeddings,
        }
    }

    /// `transformers`' `pooler_output`: tanh(dense(first token)); `None` without a pooler.
    pub fn pool(&self, last_hidden_state: &Tensor) -> Option<Tensor> {
        self.pooler
            .as_ref()
            .map(|p| p.forward(&last_hidden_state.select(1, 0)).tanh())
    }
}

/// `torch.finfo(kind).min`, the additive mask value `transformers` uses.
fn kind_min(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}
