//! MG-3D's fusion layers, poolers, heads and MIM decoder (shared/reference/mg3d-method.md §2-3).
//!
//! Shapes use B batch, N image tokens, L text tokens, S clauses, H the hidden size.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Sigmoid-gated bidirectional cross layer (MLMCross / MIMCross): with per-modality q/k/v,
/// `A'_i = v_A(a_i) · mean_j σ(q_A(a_i)·k_B(b_j)/√d)` and symmetrically for B. No softmax,
/// residual, LayerNorm or mask, as released (padding takes part).
#[derive(Debug)]
pub struct GatedCross {
    qa: nn::Linear,
    ka: nn::Linear,
    va: nn::Linear,
    qb: nn::Linear,
    kb: nn::Linear,
    vb: nn::Linear,
    scale: f64,
}

impl GatedCross {
    /// A layer of width `h` under `p`.
    pub fn new(p: &nn::Path, h: i64) -> Self {
        let l = |n: &str| nn::linear(p / n, h, h, Default::default());
        GatedCross {
            qa: l("query_a"),
            ka: l("key_a"),
            va: l("value_a"),
            qb: l("query_b"),
            kb: l("key_b"),
            vb: l("value_b"),
            scale: 1.0 / (h as f64).sqrt(),
        }
    }

    /// (A', B') for A (B×n×H) and B (B×m×H).
    pub fn forward(&self, a: &Tensor, b: &Tensor) -> (Tensor, Tensor) {
        let gate_a = (self
            .qa
            .forward(a)
            .matmul(&self.kb.forward(b).transpose(1, 2))
            * self.scale)
            .sigmoid()
            .mean_dim([2i64].as_slice(), true, a.kind());
        let gate_b = (self
            .qb
            .forward(b)
            .matmul(&self.ka.forward(a).transpose(1, 2))
            * self.scale)
            .sigmoid()
            .mean_dim([2i64].as_slice(), true, b.kind());
        (self.va.forward(a) * gate_a, self.vb.forward(b) * gate_b)
    }
}

/// A stack of gated cross layers.
#[derive(Debug)]
pub struct Fusion {
    layers: Vec<GatedCross>,
}

impl Fusion {
    /// `n` layers of width `h`.
    pub fn new(p: &nn::Path, h: i64, n: usize) -> Self {
        Fusion {
            layers: (0..n).map(|i| GatedCross::new(&(p / i), h)).collect(),
        }
    }
    /// Runs the layers in turn.
    pub fn forward(&self, a: &Tensor, b: &Tensor) -> (Tensor, Tensor) {
        let (mut a, mut b) = (a.shallow_clone(), b.shallow_clone());
        for l in &self.layers {
            (a, b) = l.forward(&a, &b);
        }
        (a, b)
    }
}

/// Unidirectional gate (Unidir_LocalCrossAttention): `σ(q(query)·k(x)/√d) · v(x)` per element of x.
#[derive(Debug)]
pub struct UniGate {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    scale: f64,
}

impl UniGate {
    /// A gate of width `h`.
    pub fn new(p: &nn::Path, h: i64) -> Self {
        let l = |n: &str| nn::linear(p / n, h, h, Default::default());
        UniGate {
            q: l("query"),
            k: l("key"),
            v: l("value"),
            scale: 1.0 / (h as f64).sqrt(),
        }
    }
    /// `query` B×H, `x` B×S×H -> B×S×H.
    pub fn forward(&self, query: &Tensor, x: &Tensor) -> Tensor {
        let g = (self
            .k
            .forward(x)
            .matmul(&self.q.forward(query).unsqueeze(-1))
            * self.scale)
            .sigmoid(); // B×S×1
        self.v.forward(x) * g
    }
}

/// Masked mean over dim 1: `x` B×S×H, `mask` B×S (bool).
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(x.kind()).unsqueeze(-1);
    (x * &m).sum_dim_intlist([1i64].as_slice(), false, x.kind())
        / m.sum_dim_intlist([1i64].as_slice(), false, x.kind())
            .clamp_min(1.0)
}

/// SentenceAttentionPool: prepend the (masked) mean clause, one multi-head self-attention over
/// [mean; clauses] with the padding masked, output token 0.
#[derive(Debug)]
pub struct SentenceAttentionPool {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl SentenceAttentionPool {
    /// Width `h`, `heads` heads (MG-3D: 8).
    pub fn new(p: &nn::Path, h: i64, heads: i64) -> Self {
        let l = |n: &str| nn::linear(p / n, h, h, Default::default());
        SentenceAttentionPool {
            q: l("q_proj"),
            k: l("k_proj"),
            v: l("v_proj"),
            out: l("out_proj"),
            heads,
        }
    }
    /// `x` B×S×H, `mask` B×S -> B×H.
    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let (b, s, h) = x.size3().expect("B×S×H");
        let mean = masked_mean(x, mask).unsqueeze(1);
        let seq = Tensor::cat(&[mean, x.shallow_clone()], 1); // B×(S+1)×H
        let full = Tensor::cat(
            &[
                Tensor::ones([b, 1], (Kind::Bool, x.device())),
                mask.to_kind(Kind::Bool),
            ],
            1,
        );
        let dh = h / self.heads;
        let split = |t: Tensor| t.view([b, s + 1, self.heads, dh]).transpose(1, 2);
        let q = split(
            self.q
                .forward(&seq.narrow(1, 0, 1).expand([b, s + 1, h], false)),
        )
        .narrow(2, 0, 1);
        let k = split(self.k.forward(&seq));
        let v = split(self.v.forward(&seq));
        let scores = q.matmul(&k.transpose(2, 3)) / (dh as f64).sqrt(); // B×heads×1×(S+1)
        let bias = full.logical_not().to_kind(x.kind()).view([b, 1, 1, s + 1]) * -1e9;
        let att = (scores + bias).softmax(-1, x.kind());
        let o = att.matmul(&v).transpose(1, 2).reshape([b, h]);
        self.out.forward(&o)
    }
}

/// Swin_Pooler: a learned weighting over the N tokens (Linear N→1), then dense + tanh.
#[derive(Debug)]
pub struct TokenPooler {
    weight: nn::Linear,
    dense: nn::Linear,
}

impl TokenPooler {
    /// For `n` tokens of width `h`.
    pub fn new(p: &nn::Path, n: i64, h: i64) -> Self {
        TokenPooler {
            weight: nn::linear(p / "token_weight", n, 1, Default::default()),
            dense: nn::linear(p / "dense", h, h, Default::default()),
        }
    }
    /// `x` B×N×H -> B×H.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let pooled = self.weight.forward(&x.transpose(1, 2)).squeeze_dim(-1);
        self.dense.forward(&pooled).tanh()
    }
}

/// Batch normalisation without affine parameters, from the statistics of the rows in `mask`
/// (MG-3D's BN(affine=False) with batch statistics, over existing clauses only).
pub fn masked_batch_norm(x: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(x.kind()).unsqueeze(-1);
    let n = m.sum(x.kind()).clamp_min(1.0);
    let mean = (x * &m).sum_dim_intlist([0i64, 1].as_slice(), true, x.kind()) / &n;
    let var =
        ((x - &mean).square() * &m).sum_dim_intlist([0i64, 1].as_slice(), true, x.kind()) / &n;
    (x - mean) / (var + 1e-5).sqrt()
}

/// A two-layer MLP `in -> mid -> [BN] -> act -> out [-> tanh]` over B×S×in.
#[derive(Debug)]
pub struct ClauseMlp {
    l1: nn::Linear,
    l2: nn::Linear,
    batch_norm: bool,
    gelu: bool,
    tanh: bool,
}

impl ClauseMlp {
    /// Sentence_Pooler (H→384→BN→GELU→128→tanh) is `new(p, h, 384, 128, true, true, true)`, the SAL
    /// reconstruction MLP (H→128→BN→GELU→8) `(h, 128, 8, true, true, false)`, the SAL target MLP
    /// (d→384→ReLU→8) `(d, 384, 8, false, false, false)`.
    pub fn new(
        p: &nn::Path,
        d_in: i64,
        mid: i64,
        d_out: i64,
        batch_norm: bool,
        gelu: bool,
        tanh: bool,
    ) -> Self {
        ClauseMlp {
            l1: nn::linear(p / "fc1", d_in, mid, Default::default()),
            l2: nn::linear(p / "fc2", mid, d_out, Default::default()),
            batch_norm,
            gelu,
            tanh,
        }
    }
    /// `x` B×S×in, `mask` B×S -> B×S×out.
    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let mut h = self.l1.forward(x);
        if self.batch_norm {
            h = masked_batch_norm(&h, mask);
        }
        h = if self.gelu { h.gelu("none") } else { h.relu() };
        let o = self.l2.forward(&h);
        if self.tanh { o.tanh() } else { o }
    }
}

/// Contrastive head: LayerNorm then Linear without bias.
#[derive(Debug)]
pub struct ContrastHead {
    ln: nn::LayerNorm,
    fc: nn::Linear,
}

impl ContrastHead {
    /// `d_in -> d_out`.
    pub fn new(p: &nn::Path, d_in: i64, d_out: i64) -> Self {
        ContrastHead {
            ln: nn::layer_norm(p / "norm", vec![d_in], Default::default()),
            fc: nn::linear(
                p / "proj",
                d_in,
                d_out,
                nn::LinearConfig {
                    bias: false,
                    ..Default::default()
                },
            ),
        }
    }
    /// B×d_in -> B×d_out.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.fc.forward(&self.ln.forward(x))
    }
}

/// The MIM decoder: `stages` × [Conv3d 3³ → InstanceNorm → LeakyReLU → ×2 trilinear upsample]
/// halving the channels (not below `min_ch`), then a 1×1×1 conv to one channel.
#[derive(Debug)]
pub struct MimDecoder {
    convs: Vec<nn::Conv3D>,
    out: nn::Conv3D,
}

impl MimDecoder {
    /// From `h` channels, `stages` upsamplings.
    pub fn new(p: &nn::Path, h: i64, stages: usize, min_ch: i64) -> Self {
        let mut convs = Vec::new();
        let mut c = h;
        for i in 0..stages {
            let next = (c / 2).max(min_ch);
            convs.push(nn::conv3d(
                p / format!("block{i}"),
                c,
                next,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            ));
            c = next;
        }
        MimDecoder {
            convs,
            out: nn::conv3d(p / "out", c, 1, 1, Default::default()),
        }
    }
    /// `x` B×H×d×h×w -> B×1×(d·2^stages)×...
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = x.shallow_clone();
        for c in &self.convs {
            y = c.forward(&y);
            y = y.instance_norm(
                None::<&Tensor>,
                None::<&Tensor>,
                None::<&Tensor>,
                None::<&Tensor>,
                true,
                0.1,
                1e-5,
                false,
            );
            y = y.leaky_relu();
            let s = y.size();
            y = y.upsample_trilinear3d([s[2] * 2, s[3] * 2, s[4] * 2], false, None, None, None);
        }
        self.out.forward(&y)
    }
}
