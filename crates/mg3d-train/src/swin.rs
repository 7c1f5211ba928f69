//! The 3D Swin Transformer image encoder, computed as MONAI's `SwinViT` does it and with the same
//! parameter names, so SwinUNETR and MG-3D weights converted to safetensors load unchanged.
//!
//! The computation follows `monai/networks/nets/swin_unetr.py` (MONAI 1.x, `use_v2=False`,
//! `SwinTransformer`, the class behind `SwinUNETR.swinViT`):
//! - `patch_embed`: a Conv3d with kernel = stride = patch (after zero-padding the input up to a
//!   multiple of the patch), no patch norm, no dropout;
//! - `layers1`..`layers4`: each a one-element list holding a `BasicLayer` whose `blocks` alternate
//!   plain and shifted windows (shift = window / 2 on odd blocks). Window and shift are clamped per
//!   axis where the feature map is not larger than the window; features are zero-padded to a whole
//!   number of windows; shifted windows get MONAI's region mask (-100 between regions);
//! - window attention with a learned 3D relative position bias table and a fixed index computed
//!   for the configured window. As in MONAI, a clamped window of `n` tokens uses the top-left
//!   `n x n` corner of that index (a MONAI quirk kept so released weights compute what they did);
//! - each layer ends with patch merging: the 8 sub-volumes concatenated in the legacy `"merging"`
//!   order (or `"mergingv2"`'s `itertools.product` order), `LayerNorm(8C)`, `Linear(8C, 2C)` without
//!   bias;
//! - the five outputs (after patch embed and after each layer) are layer-normed over channels
//!   without affine parameters (MONAI's `proj_out(x, normalize=True)`).
//!
//! Parameter names (relative to the encoder's root) are MONAI's: `patch_embed.proj.weight`,
//! `layers1.0.blocks.0.norm1.weight`, `layers1.0.blocks.0.attn.relative_position_bias_table`,
//! `layers1.0.blocks.0.attn.qkv.weight`, `layers1.0.blocks.0.mlp.linear1.weight`,
//! `layers1.0.downsample.reduction.weight`, ... The buffers `...attn.relative_position_index` are not
//! variables: they are computed, checked against a loaded file and written on export, so that
//! MONAI's strict `load_state_dict` accepts an exported file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, TchError, Tensor};

/// Errors reading configs and moving weights in and out of the encoder.
#[derive(Debug, thiserror::Error)]
pub enum SwinError {
    /// A model config could not be read or is not a valid encoder config.
    #[error("model config {path}: {message}")]
    Config {
        /// The config file (or `<preset>` / `<string>`).
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// libtorch failed reading or writing a safetensors file.
    #[error("{path}: {source}")]
    Torch {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: TchError,
    },
    /// A `torch.save` file could not be read.
    #[error(transparent)]
    Pickle(#[from] crate::torch_pickle::PickleError),
    /// The file holds no SwinViT weights, or several encoders and no prefix was given.
    #[error("{path}: {message}")]
    NoEncoder {
        /// The file.
        path: PathBuf,
        /// What was found and what to do.
        message: String,
    },
    /// The file's encoder does not match the model built from the config.
    #[error(
        "{path} (prefix {prefix:?}) does not match the encoder config: {} missing, {} unexpected, {} with another shape{}{}{}; check that the model config (embed_dim, depths, heads, window, patch, in_chans) is the one the weights were trained with",
        missing.len(), unexpected.len(), shape.len(),
        list("missing", missing), list("unexpected", unexpected), list("shape", shape)
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The name prefix the encoder's names carry in the file.
        prefix: String,
        /// Encoder names the file lacks.
        missing: Vec<String>,
        /// Names under the prefix that the encoder does not have.
        unexpected: Vec<String>,
        /// `name: file [..] vs model [..]` for tensors whose shapes differ (or index buffers whose
        /// values differ).
        shape: Vec<String>,
    },
}

fn list(what: &str, names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
    let more = if names.len() > 8 {
        format!(", ... ({} more)", names.len() - 8)
    } else {
        String::new()
    };
    format!("; {what}: {}{more}", shown.join(", "))
}

/// How the 8 sub-volumes are ordered before patch merging (MONAI's `downsample` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Merging {
    /// MONAI's legacy `PatchMerging` (`"merging"`, the SwinUNETR default and what MG-3D uses):
    /// offsets (d,h,w) = 000, 100, 010, 001, 110, 101, 011, 111.
    #[default]
    #[serde(rename = "merging")]
    Merging,
    /// MONAI's `PatchMergingV2` (`"mergingv2"`): offsets in `itertools.product` order 000, 001, 010, ...
    #[serde(rename = "mergingv2")]
    MergingV2,
}

impl Merging {
    fn offsets(self) -> [[i64; 3]; 8] {
        match self {
            Merging::Merging => [
                [0, 0, 0],
                [1, 0, 0],
                [0, 1, 0],
                [0, 0, 1],
                [1, 1, 0],
                [1, 0, 1],
                [0, 1, 1],
                [1, 1, 1],
            ],
            Merging::MergingV2 => [
                [0, 0, 0],
                [0, 0, 1],
                [0, 1, 0],
                [0, 1, 1],
                [1, 0, 0],
                [1, 0, 1],
                [1, 1, 0],
                [1, 1, 1],
            ],
        }
    }
}

/// Sizes of the encoder: the `[swin]` table of `configs/model/*.toml`.
///
/// Qkv bias is always on, dropout, drop-path and the patch norm always off (as in MG-3D).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwinConfig {
    /// Input channels (1 for CT).
    pub in_chans: i64,
    /// Channels after the patch embedding (MONAI's `feature_size`); stage i has `embed_dim * 2^i`.
    pub embed_dim: i64,
    /// Blocks per stage (4 stages).
    pub depths: Vec<i64>,
    /// Attention heads per stage.
    pub heads: Vec<i64>,
    /// Window edge (the same on all three axes), clamped to the feature size per stage.
    pub window: i64,
    /// Patch edge of the embedding convolution (kernel = stride).
    pub patch: i64,
    /// MLP hidden width = `int(dim * mlp_ratio)`.
    pub mlp_ratio: f64,
    /// Sub-volume order in patch merging.
    #[serde(default)]
    pub downsample: Merging,
}

#[derive(Deserialize)]
struct ConfigFile {
    swin: SwinConfig,
}

impl SwinConfig {
    /// A small encoder for CPU tests and the demo: embed 12, depths [2,2,2,2], heads [1,2,4,8],
    /// window 4. At 32³ input the stages see 16³, 8³, 4³ and 2³ tokens, so shifted windows with
    /// their mask, windows clamped to the feature size and MONAI's corner-index quirk all occur.
    pub fn tiny() -> Self {
        SwinConfig {
            in_chans: 1,
            embed_dim: 12,
            depths: vec![2, 2, 2, 2],
            heads: vec![1, 2, 4, 8],
            window: 4,
            patch: 2,
            mlp_ratio: 4.0,
            downsample: Merging::Merging,
        }
    }

    /// MG-3D's "3D Swin-B": feature 48, heads [3,6,12,24], window 7 (about 8.06M parameters).
    pub fn swin_b() -> Self {
        SwinConfig {
            in_chans: 1,
            embed_dim: 48,
            depths: vec![2, 2, 2, 2],
            heads: vec![3, 6, 12, 24],
            window: 7,
            patch: 2,
            mlp_ratio: 4.0,
            downsample: Merging::Merging,
        }
    }

    /// MG-3D's "3D Swin-L": as Swin-B with feature 96 (about 31.6M parameters).
    pub fn swin_l() -> Self {
        SwinConfig {
            embed_dim: 96,
            ..Self::swin_b()
        }
    }

    /// A built-in preset by name: `tiny`, `swin-b`, `swin-l` (the same as `configs/model/NAME.toml`).
    pub fn preset(name: &str) -> Result<Self, SwinError> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "swin-b" => Ok(Self::swin_b()),
            "swin-l" => Ok(Self::swin_l()),
            other => Err(SwinError::Config {
                path: format!("<preset {other}>"),
                message: "unknown encoder preset; use tiny, swin-b or swin-l, or a configs/model/*.toml file".into(),
            }),
        }
    }

    /// Parses the `[swin]` table of a model config (other tables are left to their readers) and
    /// validates it. `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, SwinError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| SwinError::Config {
            path: origin.to_string(),
            message: format!("{e}; the file needs a [swin] table with in_chans, embed_dim, depths, heads, window, patch, mlp_ratio"),
        })?;
        if let Some(message) = file.swin.problem() {
            return Err(SwinError::Config {
                path: origin.to_string(),
                message,
            });
        }
        Ok(file.swin)
    }

    /// Reads a model config such as `configs/model/swin-b.toml`.
    pub fn from_file(path: &Path) -> Result<Self, SwinError> {
        let text = std::fs::read_to_string(path).map_err(|source| SwinError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Checks the sizes MONAI's layout needs: 4 stages, heads dividing each stage's width,
    /// positive sizes. The error is a [`SwinError::Config`] at path `<config>`.
    pub fn validate(&self) -> Result<(), SwinError> {
        match self.problem() {
            None => Ok(()),
            Some(message) => Err(SwinError::Config {
                path: "<config>".into(),
                message,
            }),
        }
    }

    /// What [`SwinConfig::validate`] finds wrong, if anything.
    fn problem(&self) -> Option<String> {
        if self.depths.len() != 4 || self.heads.len() != 4 {
            return Some(format!(
                "depths and heads need 4 entries (MONAI's layers1..layers4), got {} and {}",
                self.depths.len(),
                self.heads.len()
            ));
        }
        if self.in_chans < 1 || self.embed_dim < 1 || self.window < 1 || self.patch < 1 {
            return Some("in_chans, embed_dim, window and patch must be at least 1".into());
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 {
            return Some(format!(
                "mlp_ratio must be positive, got {}",
                self.mlp_ratio
            ));
        }
        for (i, (&d, &h)) in self.depths.iter().zip(&self.heads).enumerate() {
            let dim = self.stage_dim(i);
            if d < 1 || h < 1 || dim % h != 0 {
                return Some(format!(
                    "stage {} (width {dim}) has depth {d} and {h} heads; depth and heads must be positive and heads must divide the width",
                    i + 1
                ));
            }
        }
        None
    }

    /// Channels inside stage `i` (0-based): `embed_dim * 2^i`.
    pub fn stage_dim(&self, i: usize) -> i64 {
        self.embed_dim << i
    }

    /// Channels of the final output map: `embed_dim * 16` (768 for Swin-B).
    pub fn out_dim(&self) -> i64 {
        self.embed_dim * 16
    }

    /// Spatial size of output `k` (0 = after patch embed, 4 = final) for an input size, following
    /// MONAI's padding (patch embed pads up to a multiple of the patch, merging pads odd sizes).
    pub fn stage_grid(&self, input: [i64; 3], k: usize) -> [i64; 3] {
        let mut g = input.map(|s| (s + self.patch - 1) / self.patch);
        for _ in 0..k {
            g = g.map(|s| (s + 1) / 2);
        }
        g
    }
}

/// Window and shift for a feature size, clamped like MONAI's `get_window_size`.
fn window_and_shift(size: [i64; 3], window: i64, shift: i64) -> ([i64; 3], [i64; 3]) {
    let mut ws = [window; 3];
    let mut ss = [shift; 3];
    for i in 0..3 {
        if size[i] <= window {
            ws[i] = size[i];
            ss[i] = 0;
        }
    }
    (ws, ss)
}

/// MONAI's `relative_position_index` for a cubic window of edge `w`: `[w³, w³]` int64.
pub fn relative_position_index(w: i64) -> Tensor {
    let n = w * w * w;
    let coord = |t: i64| [t / (w * w), (t / w) % w, t % w];
    let span = 2 * w - 1;
    let mut idx = Vec::with_capacity((n * n) as usize);
    for i in 0..n {
        let ci = coord(i);
        for j in 0..n {
            let cj = coord(j);
            let r = [0, 1, 2].map(|a| ci[a] - cj[a] + w - 1);
            idx.push(r[0] * span * span + r[1] * span + r[2]);
        }
    }
    Tensor::from_slice(&idx).view([n, n])
}

/// `(b, d, h, w, c)` -> `(b * windows, ws0*ws1*ws2, c)`, windows in row-major order.
fn window_partition(x: &Tensor, ws: [i64; 3]) -> Tensor {
    let (b, d, h, w, c) = x.size5().expect("window_partition needs (b, d, h, w, c)");
    x.view(&[b, d / ws[0], ws[0], h / ws[1], ws[1], w / ws[2], ws[2], c][..])
        .permute([0, 1, 3, 5, 2, 4, 6, 7])
        .contiguous()
        .view([-1, ws[0] * ws[1] * ws[2], c])
}

/// Inverse of [`window_partition`] for a padded map of size `dims = [b, d, h, w]`.
fn window_reverse(windows: &Tensor, ws: [i64; 3], dims: [i64; 4]) -> Tensor {
    let [b, d, h, w] = dims;
    windows
        .view(&[b, d / ws[0], h / ws[1], w / ws[2], ws[0], ws[1], ws[2], -1][..])
        .permute([0, 1, 4, 2, 5, 3, 6, 7])
        .contiguous()
        .view([b, d, h, w, -1])
}

/// Python's `range(len)[start:stop]` for a step of 1.
fn py_slice(start: Option<i64>, stop: Option<i64>, len: i64) -> std::ops::Range<i64> {
    let norm = |v: i64| if v < 0 { (v + len).max(0) } else { v.min(len) };
    let a = start.map_or(0, norm);
    let b = stop.map_or(len, norm);
    a..b.max(a)
}

/// MONAI's `compute_mask`: `(windows, n, n)` with 0 within a region and -100 across regions.
fn compute_mask(
    dims: [i64; 3],
    ws: [i64; 3],
    ss: [i64; 3],
    kind: Kind,
    device: tch::Device,
) -> Tensor {
    // Region id per coordinate and axis: the last of the three slices that holds it (later
    // assignments overwrite earlier ones in MONAI's nested loops).
    let region = |a: usize| -> Vec<i64> {
        let len = dims[a];
        let slices = [
            py_slice(None, Some(-ws[a]), len),
            py_slice(Some(-ws[a]), Some(-ss[a]), len),
            py_slice(Some(-ss[a]), None, len),
        ];
        (0..len)
            .map(|i| {
                (0..3)
                    .rev()
                    .find(|&s| slices[s].contains(&i))
                    .expect("the three slices cover the axis") as i64
            })
            .collect()
    };
    let (rd, rh, rw) = (region(0), region(1), region(2));
    let mut labels = Vec::with_capacity((dims[0] * dims[1] * dims[2]) as usize);
    for &a in &rd {
        for &b in &rh {
            for &c in &rw {
                labels.push((9 * a + 3 * b + c) as f32);
            }
        }
    }
    let img = Tensor::from_slice(&labels)
        .view([1, dims[0], dims[1], dims[2], 1])
        .to_device(device);
    let mw = window_partition(&img, ws).squeeze_dim(-1);
    let diff = mw.unsqueeze(1) - mw.unsqueeze(2);
    (diff.ne(0.0).to_kind(kind) * -100.0).to_kind(kind)
}

/// Collects MONAI-named variables while the encoder is built.
struct Names {
    root: usize,
    params: Vec<(String, Tensor)>,
}

impl Names {
    fn add(&mut self, p: &nn::Path, name: &str, t: &Tensor) {
        let full = p.path(name);
        self.params
            .push((full[self.root..].to_string(), t.shallow_clone()));
    }
    fn linear(&mut self, p: nn::Path, i: i64, o: i64, bias: bool) -> nn::Linear {
        let l = nn::linear(
            &p,
            i,
            o,
            nn::LinearConfig {
                // PyTorch's nn.Linear default (kaiming_uniform with a = sqrt(5)): U(±1/sqrt(in)).
                ws_init: nn::Init::Uniform {
                    lo: -1.0 / (i as f64).sqrt(),
                    up: 1.0 / (i as f64).sqrt(),
                },
                bs_init: None,
                bias,
            },
        );
        self.add(&p, "weight", &l.ws);
        if let Some(b) = &l.bs {
            self.add(&p, "bias", b);
        }
        l
    }
    fn layer_norm(&mut self, p: nn::Path, dim: i64) -> nn::LayerNorm {
        let l = nn::layer_norm(&p, vec![dim], Default::default());
        self.add(&p, "weight", l.ws.as_ref().expect("affine"));
        self.add(&p, "bias", l.bs.as_ref().expect("affine"));
        l
    }
}

struct Attention {
    heads: i64,
    scale: f64,
    table: Tensor,
    index: Tensor,
    qkv: nn::Linear,
    proj: nn::Linear,
}

impl Attention {
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (b, n, c) = x.size3().expect("(windows, n, c)");
        let qkv = self
            .qkv
            .forward(x)
            .reshape([b, n, 3, self.heads, c / self.heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let idx = self.index.narrow(0, 0, n).narrow(1, 0, n).reshape([-1]);
        let bias = self
            .table
            .index_select(0, &idx)
            .reshape([n, n, -1])
            .permute([2, 0, 1])
            .contiguous();
        let attn = (q * self.scale).matmul(&k.transpose(-2, -1)) + bias.unsqueeze(0);
        let attn = match mask {
            Some(m) => {
                let nw = m.size()[0];
                (attn.view([b / nw, nw, self.heads, n, n]) + m.unsqueeze(1).unsqueeze(0))
                    .view([-1, self.heads, n, n])
            }
            None => attn,
        };
        let attn = attn.softmax(-1, None).to_kind(v.kind());
        let out = attn.matmul(&v).transpose(1, 2).reshape([b, n, c]);
        self.proj.forward(&out)
    }
}

struct Block {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    linear1: nn::Linear,
    linear2: nn::Linear,
    shift: i64,
}

impl Block {
    /// `x`: `(b, d, h, w, c)`; `mask` is the layer's shifted-window mask.
    fn forward(&self, x: &Tensor, window: i64, mask: Option<&Tensor>) -> Tensor {
        let (b, d, h, w, c) = x.size5().expect("(b, d, h, w, c)");
        let (ws, ss) = window_and_shift([d, h, w], window, self.shift);
        let y = self.norm1.forward(x);
        let pad = [d, h, w]
            .iter()
            .zip(ws)
            .map(|(&s, win)| (win - s % win) % win)
            .collect::<Vec<_>>();
        let y = if pad.iter().any(|&p| p > 0) {
            y.constant_pad_nd([0, 0, 0, pad[2], 0, pad[1], 0, pad[0]])
        } else {
            y
        };
        let dims = [b, d + pad[0], h + pad[1], w + pad[2]];
        let shifted = ss.iter().any(|&s| s > 0);
        let y = if shifted {
            y.roll([-ss[0], -ss[1], -ss[2]], [1, 2, 3])
        } else {
            y
        };
        let windows = window_partition(&y, ws);
        let attn = self
            .attn
            .forward(&windows, if shifted { mask } else { None })
            .view([-1, ws[0], ws[1], ws[2], c]);
        let y = window_reverse(&attn, ws, dims);
        let y = if shifted { y.roll(ss, [1, 2, 3]) } else { y };
        let y = if pad.iter().any(|&p| p > 0) {
            y.narrow(1, 0, d)
                .narrow(2, 0, h)
                .narrow(3, 0, w)
                .contiguous()
        } else {
            y
        };
        let x = x + y;
        let m = self
            .linear2
            .forward(&self.linear1.forward(&self.norm2.forward(&x)).gelu("none"));
        x + m
    }
}

struct Layer {
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    reduction: nn::Linear,
}

/// The encoder: MONAI's `SwinViT` (`monai.networks.nets.swin_unetr.SwinTransformer`).
pub struct SwinViT {
    cfg: SwinConfig,
    patch_embed: nn::Conv3D,
    layers: Vec<Layer>,
    params: Vec<(String, Tensor)>,
    buffers: Vec<(String, Tensor)>,
}

impl std::fmt::Debug for SwinViT {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwinViT")
            .field("cfg", &self.cfg)
            .field("parameters", &self.num_parameters())
            .finish()
    }
}

impl SwinViT {
    /// Builds the encoder under `path` (its variables are named `path.patch_embed.proj.weight`,
    /// `path.layers1.0.blocks.0...`), initialised like PyTorch's defaults with the relative position
    /// bias tables drawn with std 0.02. Panics on an invalid config (see [`SwinConfig::validate`]).
    pub fn new(path: &nn::Path, cfg: &SwinConfig) -> Self {
        if let Some(e) = cfg.problem() {
            panic!("invalid Swin config: {e}");
        }
        let root = {
            let p = path.path("x");
            p.len() - 1
        };
        let mut names = Names {
            root,
            params: Vec::new(),
        };
        let pe = path / "patch_embed" / "proj";
        let bound = 1.0 / ((cfg.in_chans * cfg.patch.pow(3)) as f64).sqrt();
        let patch_embed = nn::conv3d(
            &pe,
            cfg.in_chans,
            cfg.embed_dim,
            cfg.patch,
            nn::ConvConfig {
                stride: cfg.patch,
                ws_init: nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
                bs_init: nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
                ..Default::default()
            },
        );
        names.add(&pe, "weight", &patch_embed.ws);
        names.add(&pe, "bias", patch_embed.bs.as_ref().expect("bias"));
        let w = cfg.window;
        let index = relative_position_index(w).to_device(path.device());
        let mut buffers = Vec::new();
        let mut layers = Vec::new();
        for (i, (&depth, &heads)) in cfg.depths.iter().zip(&cfg.heads).enumerate() {
            let dim = cfg.stage_dim(i);
            let lp = path / format!("layers{}", i + 1) / 0;
            let mut blocks = Vec::new();
            for j in 0..depth {
                let bp = &lp / "blocks" / j;
                let norm1 = names.layer_norm(&bp / "norm1", dim);
                let ap = &bp / "attn";
                let table = ap.var(
                    "relative_position_bias_table",
                    &[(2 * w - 1).pow(3), heads],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: 0.02,
                    },
                );
                names.add(&ap, "relative_position_bias_table", &table);
                let full = ap.path("relative_position_index");
                buffers.push((full[root..].to_string(), index.shallow_clone()));
                let qkv = names.linear(&ap / "qkv", dim, 3 * dim, true);
                let proj = names.linear(&ap / "proj", dim, dim, true);
                let norm2 = names.layer_norm(&bp / "norm2", dim);
                let hidden = (dim as f64 * cfg.mlp_ratio) as i64;
                let linear1 = names.linear(&bp / "mlp" / "linear1", dim, hidden, true);
                let linear2 = names.linear(&bp / "mlp" / "linear2", hidden, dim, true);
                blocks.push(Block {
                    norm1,
                    attn: Attention {
                        heads,
                        scale: ((dim / heads) as f64).powf(-0.5),
                        table,
                        index: index.shallow_clone(),
                        qkv,
                        proj,
                    },
                    norm2,
                    linear1,
                    linear2,
                    shift: if j % 2 == 1 { w / 2 } else { 0 },
                });
            }
            // MONAI creates `reduction` before `norm`; the state_dict keeps that order.
            let reduction = names.linear(&lp / "downsample" / "reduction", 8 * dim, 2 * dim, false);
            let norm = names.layer_norm(&lp / "downsample" / "norm", 8 * dim);
            layers.push(Layer {
                blocks,
                norm,
                reduction,
            });
        }
        SwinViT {
            cfg: cfg.clone(),
            patch_embed,
            layers,
            params: names.params,
            buffers,
        }
    }

    /// The config the encoder was built with.
    pub fn config(&self) -> &SwinConfig {
        &self.cfg
    }

    /// Variables with MONAI names relative to the encoder root, in MONAI's state_dict order.
    /// The tensors share storage with the VarStore's variables.
    pub fn named_parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// The `relative_position_index` buffers (int64, computed, not trained) with MONAI names.
    pub fn named_buffers(&self) -> &[(String, Tensor)] {
        &self.buffers
    }

    /// Number of trainable scalars (8,062,002 for Swin-B, 31,593,474 for Swin-L).
    pub fn num_parameters(&self) -> i64 {
        self.params.iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// The five stage maps `(B, C_k, D_k, H_k, W_k)` for `x` = `(B, in_chans, D, H, W)`: after the
    /// patch embedding and after each of the four layers, each layer-normed over channels without
    /// affine parameters (MONAI's `SwinViT.forward(x, normalize=True)`).
    pub fn forward(&self, x: &Tensor) -> Vec<Tensor> {
        self.forward_with(x, true)
    }

    /// As [`SwinViT::forward`], with MONAI's `normalize` switch (false returns the raw maps).
    pub fn forward_with(&self, x: &Tensor, normalize: bool) -> Vec<Tensor> {
        let (_, _, d, h, w) = x.size5().expect("Swin input must be (B, C, D, H, W)");
        let p = self.cfg.patch;
        let pad = [d, h, w].map(|s| (p - s % p) % p);
        let x = if pad.iter().any(|&v| v > 0) {
            x.constant_pad_nd([0, pad[2], 0, pad[1], 0, pad[0]])
        } else {
            x.shallow_clone()
        };
        let mut x = self.patch_embed.forward(&x);
        let mut outs = vec![proj_out(&x, normalize)];
        for layer in &self.layers {
            x = self.layer_forward(layer, &x);
            outs.push(proj_out(&x, normalize));
        }
        outs
    }

    /// The final stage flattened to tokens `(B, D4*H4*W4, C4)` in (d, h, w) row-major order:
    /// 48 tokens x 768 for Swin-B at 128x96x128 (MG-3D's image tokens).
    pub fn tokens(&self, x: &Tensor) -> Tensor {
        tokens_of(&self.forward(x).pop().expect("five outputs"))
    }

    fn layer_forward(&self, layer: &Layer, x: &Tensor) -> Tensor {
        let (_, _, d, h, w) = x.size5().expect("(B, C, D, H, W)");
        let win = self.cfg.window;
        let (ws, ss) = window_and_shift([d, h, w], win, win / 2);
        let x = x.permute([0, 2, 3, 4, 1]);
        let padded = [d, h, w]
            .iter()
            .zip(ws)
            .map(|(&s, k)| (s + k - 1) / k * k)
            .collect::<Vec<_>>();
        let mask = compute_mask(
            [padded[0], padded[1], padded[2]],
            ws,
            ss,
            x.kind(),
            x.device(),
        );
        let mut x = x.contiguous();
        for blk in &layer.blocks {
            x = blk.forward(&x, win, Some(&mask));
        }
        let x = self.merge(layer, &x);
        x.permute([0, 4, 1, 2, 3])
    }

    /// Patch merging on `(b, d, h, w, c)`: pad odd sizes, concatenate the 8 sub-volumes, norm, reduce.
    fn merge(&self, layer: &Layer, x: &Tensor) -> Tensor {
        let (_, d, h, w, _) = x.size5().expect("(b, d, h, w, c)");
        let x = if d % 2 == 1 || h % 2 == 1 || w % 2 == 1 {
            x.constant_pad_nd([0, 0, 0, w % 2, 0, h % 2, 0, d % 2])
        } else {
            x.shallow_clone()
        };
        let parts: Vec<Tensor> = self
            .cfg
            .downsample
            .offsets()
            .iter()
            .map(|o| {
                x.slice(1, o[0], None, 2)
                    .slice(2, o[1], None, 2)
                    .slice(3, o[2], None, 2)
            })
            .collect();
        let x = Tensor::cat(&parts, -1);
        layer.reduction.forward(&layer.norm.forward(&x))
    }
}

/// A stage map `(B, C, D, H, W)` as tokens `(B, D*H*W, C)` in (d, h, w) row-major order.
pub fn tokens_of(map: &Tensor) -> Tensor {
    map.flatten(2, -1).transpose(1, 2)
}

/// MONAI's `proj_out`: layer norm over channels of `(B, C, D, H, W)`, no affine, eps 1e-5.
fn proj_out(x: &Tensor, normalize: bool) -> Tensor {
    if !normalize {
        return x.shallow_clone();
    }
    let c = x.size()[1];
    x.permute([0, 2, 3, 4, 1])
        .layer_norm([c], None::<&Tensor>, None::<&Tensor>, 1e-5, true)
        .permute([0, 4, 1, 2, 3])
}

/// What [`load_encoder_with`] found in a file.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The name prefix the encoder carries in the file (`""`, `"swinViT."`, ...).
    pub prefix: String,
    /// Variables copied from the file.
    pub loaded: usize,
    /// `relative_position_index` buffers found in the file and equal to the computed ones.
    pub buffers_checked: usize,
    /// Encoder variables the file lacks (an error unless `strict` is false).
    pub missing: Vec<String>,
    /// Names under the prefix the encoder does not have (an error unless `strict` is false).
    pub unexpected: Vec<String>,
    /// Tensors outside the prefix, left alone (a SwinUNETR decoder, text encoder, ...).
    pub ignored: usize,
}

/// Options for [`load_encoder_with`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The encoder's name prefix in the file; `None` finds it from the one name ending in
    /// `patch_embed.proj.weight`.
    pub prefix: Option<String>,
    /// Fail on missing or unexpected names (shape mismatches always fail).
    pub strict: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            prefix: None,
            strict: true,
        }
    }
}

/// The tensors of a weights file: safetensors, or a `torch.save` archive (`.pt`, `.pth`, `.bin`:
/// MONAI's and SwinUNETR's checkpoints), told apart by the zip signature.
pub fn read_weights_file(file: &Path) -> Result<Vec<(String, Tensor)>, SwinError> {
    let mut magic = [0u8; 4];
    let zip = std::fs::File::open(file)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .map(|_| magic == *b"PK\x03\x04")
        .unwrap_or(false);
    if zip {
        return Ok(crate::torch_pickle::read_state_dict(file)?);
    }
    Tensor::read_safetensors(file).map_err(|source| SwinError::Torch {
        path: file.to_path_buf(),
        source,
    })
}

/// Loads encoder weights from a safetensors or `torch.save` file holding MONAI-named tensors, bare
/// (`patch_embed.proj.weight`, ...) or under a prefix (`swinViT.patch_embed.proj.weight` in a
/// SwinUNETR checkpoint); the prefix is found from the file. Strict: any missing or unexpected name
/// under the prefix, differing shape, or index buffer that differs from the computed one is an
/// error naming the tensors.
pub fn load_encoder(model: &SwinViT, file: &Path) -> Result<LoadReport, SwinError> {
    load_encoder_with(model, file, &LoadOptions::default())
}

/// [`load_encoder`] with an explicit prefix and/or a non-strict mode.
pub fn load_encoder_with(
    model: &SwinViT,
    file: &Path,
    opts: &LoadOptions,
) -> Result<LoadReport, SwinError> {
    let mut tensors = read_weights_file(file)?;
    // The file's header order is arbitrary: by name, so reports and errors are reproducible.
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let prefix = match &opts.prefix {
        Some(p) => p.clone(),
        None => {
            const KEY: &str = "patch_embed.proj.weight";
            let found: BTreeSet<&str> = tensors
                .iter()
                .filter_map(|(n, _)| n.strip_suffix(KEY))
                .collect();
            match found.len() {
                1 => found.into_iter().next().unwrap_or_default().to_string(),
                0 => {
                    return Err(SwinError::NoEncoder {
                        path: file.to_path_buf(),
                        message: format!(
                            "no tensor named *{KEY} among {} tensors; is it a SwinViT / SwinUNETR / MG-3D state_dict saved as safetensors?",
                            tensors.len()
                        ),
                    });
                }
                _ => {
                    return Err(SwinError::NoEncoder {
                        path: file.to_path_buf(),
                        message: format!(
                            "several encoders (prefixes {:?}); pass the prefix to load",
                            found
                        ),
                    });
                }
            }
        }
    };
    let wanted: BTreeMap<&str, &Tensor> =
        model.params.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let buffers: BTreeMap<&str, &Tensor> =
        model.buffers.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut report = LoadReport {
        prefix: prefix.clone(),
        ..Default::default()
    };
    let mut shape = Vec::new();
    let mut seen = BTreeSet::new();
    let mut copies = Vec::new();
    for (name, t) in &tensors {
        let Some(rel) = name.strip_prefix(prefix.as_str()) else {
            report.ignored += 1;
            continue;
        };
        if let Some(var) = wanted.get(rel) {
            seen.insert(rel.to_string());
            if t.size() != var.size() {
                shape.push(format!(
                    "{name}: file {:?} vs model {:?}",
                    t.size(),
                    var.size()
                ));
            } else {
                copies.push((*var, t));
            }
        } else if let Some(buf) = buffers.get(rel) {
            let same =
                t.size() == buf.size() && t.to_kind(Kind::Int64).to_device(buf.device()).equal(buf);
            if same {
                report.buffers_checked += 1;
            } else {
                shape.push(format!(
                    "{name}: file index {:?} differs from the computed one (another window size?)",
                    t.size()
                ));
            }
        } else {
            report.unexpected.push(name.clone());
        }
    }
    report.missing = model
        .params
        .iter()
        .filter(|(n, _)| !seen.contains(n))
        .map(|(n, _)| format!("{prefix}{n}"))
        .collect();
    if !shape.is_empty()
        || (opts.strict && (!report.missing.is_empty() || !report.unexpected.is_empty()))
    {
        return Err(SwinError::Mismatch {
            path: file.to_path_buf(),
            prefix,
            missing: report.missing,
            unexpected: report.unexpected,
            shape,
        });
    }
    tch::no_grad(|| -> Result<(), SwinError> {
        for (var, t) in &copies {
            let mut v = var.shallow_clone();
            v.f_copy_(t).map_err(|source| SwinError::Torch {
                path: file.to_path_buf(),
                source,
            })?;
        }
        Ok(())
    })?;
    report.loaded = copies.len();
    Ok(report)
}

/// Writes the encoder's variables and index buffers to a safetensors file in MONAI's layout, each
/// name preceded by `prefix` (`""` for a bare SwinViT state_dict, `"swinViT."` for SwinUNETR), so
/// `SwinTransformer.load_state_dict(strict=True)` (or SwinUNETR's, for the encoder keys) accepts it.
/// The file is written beside its final name and renamed into place.
pub fn export_encoder(model: &SwinViT, file: &Path, prefix: &str) -> Result<(), SwinError> {
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (n, t) in model.params.iter().chain(&model.buffers) {
        out.push((
            format!("{prefix}{n}"),
            t.detach().to_device(tch::Device::Cpu).contiguous(),
        ));
    }
    let name = file
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "encoder.safetensors".into());
    let tmp = file.with_file_name(format!(".{name}.tmp"));
    Tensor::write_safetensors(&out, &tmp).map_err(|source| SwinError::Torch {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, file).map_err(|source| SwinError::Io {
        path: file.to_path_buf(),
        source,
    })
}
