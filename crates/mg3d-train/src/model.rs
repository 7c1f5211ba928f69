//! The MG-3D model: Swin3D + BERT encoders, projections, three gated fusion stacks, poolers,
//! heads and decoders, and one training step's five losses (shared/reference/mg3d-method.md §2-3,
//! with §3.7's quirks 1-4 fixed: cube masking, final stage as tokens, masked text encoded every
//! step, a single projection in the ITC path).

use std::path::Path;

use mg3d_report::hf_tokenizer::TokenizerFiles;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::TrainError;
use crate::bert::BertModel;
use crate::fusion::{
    ClauseMlp, ContrastHead, Fusion, MimDecoder, SentenceAttentionPool, TokenPooler, UniGate,
    masked_mean,
};
use crate::losses::{
    clause_gather, cube_mask, info_nce, mim_loss, mlm_loss, sal_loss, ssm_loss, whole_word_mask,
};
use crate::swin::{SwinConfig, SwinViT};

/// Loss weights and objective settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Objectives {
    /// Weight of the masked volume reconstruction.
    pub mim: f64,
    /// Weight of the MLM (+ SAL) term.
    pub mlm: f64,
    /// SAL weight inside the MLM term (MG-3D: 0.1).
    pub sal: f64,
    /// Weight of the fused-vs-unfused global contrast.
    pub cml: f64,
    /// Weight of the disentangled aggregation contrast.
    pub dcl: f64,
    /// Weight of the inter-patient clause similarity matching.
    pub ssm: f64,
    /// Contrastive temperature.
    pub temperature: f64,
    /// Fraction of cubes zeroed for MIM.
    pub mask_ratio: f64,
    /// Cube edge as a fraction of the input edge (MG-3D: 16/128 = 0.125).
    pub cube_fraction: f64,
    /// Whole-word masking probability.
    pub mlm_probability: f64,
}

impl Default for Objectives {
    fn default() -> Self {
        Objectives {
            mim: 1.0,
            mlm: 1.0,
            sal: 0.1,
            cml: 0.1,
            dcl: 0.1,
            ssm: 0.1,
            temperature: 0.1,
            mask_ratio: 0.5,
            cube_fraction: 0.125,
            mlm_probability: 0.15,
        }
    }
}

/// Model settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    /// Image encoder.
    pub swin: SwinConfig,
    /// Hidden width of the fusion part (MG-3D: 768).
    pub hidden: i64,
    /// Gated cross layers per fusion stack (MG-3D: 2).
    pub fusion_layers: usize,
    /// Heads of the sentence attention pool (MG-3D: 8).
    pub pool_heads: i64,
    /// Volume input D×H×W (a multiple of 32 per axis for 4 merges after a 2³ patch).
    pub input: [i64; 3],
    /// Train the text encoder too.
    pub text_trainable: bool,
}

/// The per-step losses.
#[derive(Debug)]
pub struct Losses {
    /// Weighted sum.
    pub total: Tensor,
    /// Masked volume reconstruction.
    pub mim: Tensor,
    /// Masked language modelling.
    pub mlm: Tensor,
    /// Clause alignment (unweighted).
    pub sal: Tensor,
    /// Fused-vs-unfused global contrast.
    pub cml: Tensor,
    /// Disentangled aggregation contrast.
    pub dcl: Tensor,
    /// Inter-patient clause similarity matching.
    pub ssm: Tensor,
}

/// One batch on the model's device.
#[derive(Debug)]
pub struct Inputs {
    /// B×1×D×H×W in [0, 1].
    pub volume: Tensor,
    /// B×L token ids (int64).
    pub input_ids: Tensor,
    /// B×L attention mask (int64).
    pub attention_mask: Tensor,
    /// B×L clause per token (int64, -1 none).
    pub clause_index: Tensor,
    /// Per sample, word-start flags (for whole-word masking).
    pub word_start: Vec<Vec<i8>>,
}

/// The whole model. Variable names: `swinViT.*` (MONAI layout), `text.*` (Hugging Face BERT
/// layout), everything else under its module name; names containing `multi_modal` or a `_head`
/// suffix get the ×5 learning rate (MG-3D's groups).
pub struct Mg3d {
    /// Settings.
    pub cfg: ModelConfig,
    swin: SwinViT,
    bert: BertModel,
    text_proj: nn::Linear,
    vision_proj: nn::Linear,
    type_emb: nn::Embedding,
    fuse_mim: Fusion,
    fuse_mlm: Fusion,
    fuse_itc: Fusion,
    pool_uni: SentenceAttentionPool,
    pool_fused: SentenceAttentionPool,
    swin_pool_uni: TokenPooler,
    swin_pool_fused: TokenPooler,
    cml_head_f: ContrastHead,
    cml_head_u: ContrastHead,
    dcl_gates: Vec<UniGate>,
    dcl_agg: Vec<nn::Linear>,
    dcl_head_g: ContrastHead,
    dcl_head_a: ContrastHead,
    sentence_pooler: ClauseMlp,
    mlm_transform: nn::Linear,
    mlm_norm: nn::LayerNorm,
    mlm_decoder: nn::Linear,
    sal_r: ClauseMlp,
    sal_t: ClauseMlp,
    mim_decoder: MimDecoder,
    grid: [i64; 3],
    mask_id: i64,
    special_ids: Vec<i64>,
    vocab: i64,
}

impl std::fmt::Debug for Mg3d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mg3d").field("cfg", &self.cfg).finish()
    }
}

impl Mg3d {
    /// Builds the model in `vs`, loading the text encoder from a Hugging Face folder.
    pub fn new(
        vs: &nn::VarStore,
        cfg: ModelConfig,
        text_folder: &Path,
    ) -> Result<Mg3d, TrainError> {
        Self::build(vs, cfg, text_folder, |p, trainable| {
            Ok(BertModel::load_into(p, text_folder, trainable)?.0)
        })
    }

    /// Builds the model in `vs` with an untrained text encoder of `bert` (a saved model's weights
    /// are loaded into `vs` next); `tokenizer_folder` holds the tokenizer (for the MLM ids).
    pub fn with_text_config(
        vs: &nn::VarStore,
        cfg: ModelConfig,
        bert: &crate::bert::BertConfig,
        tokenizer_folder: &Path,
    ) -> Result<Mg3d, TrainError> {
        Self::build(vs, cfg, tokenizer_folder, |p, trainable| {
            Ok(BertModel::new(p, bert, trainable)?)
        })
    }

    fn build(
        vs: &nn::VarStore,
        cfg: ModelConfig,
        text_folder: &Path,
        text: impl FnOnce(&nn::Path, bool) -> Result<BertModel, TrainError>,
    ) -> Result<Mg3d, TrainError> {
        let root = vs.root();
        for (&size, axis) in cfg.input.iter().zip(["D", "H", "W"]) {
            if size % 32 != 0 {
                return Err(TrainError::InputSize { axis, size });
            }
        }
        let swin = SwinViT::new(&(&root / "swinViT"), &cfg.swin);
        let bert = text(&(&root / "text"), cfg.text_trainable)?;
        let bh = bert.config().hidden_size;
        let vocab = bert.config().vocab_size;
        let h = cfg.hidden;
        let grid = cfg.swin.stage_grid(cfg.input, 4);
        let n_tokens = grid[0] * grid[1] * grid[2];
        let cv = cfg.swin.out_dim();
        let p = |s: &str| &root / s;
        let lin = |s: &str, a: i64, b: i64| nn::linear(p(s), a, b, Default::default());
        let (mask_id, special_ids) = special_tokens(text_folder);
        Ok(Mg3d {
            text_proj: lin("multi_modal_text_proj", bh, h),
            vision_proj: lin("multi_modal_vision_proj", cv, h),
            type_emb: nn::embedding(p("token_type_embeddings"), 2, h, Default::default()),
            fuse_mim: Fusion::new(&p("mim_cross"), h, cfg.fusion_layers),
            fuse_mlm: Fusion::new(&p("mlm_cross"), h, cfg.fusion_layers),
            fuse_itc: Fusion::new(&p("itc_cross"), h, cfg.fusion_layers),
            pool_uni: SentenceAttentionPool::new(&p("multi_modal_text_pool"), h, cfg.pool_heads),
            pool_fused: SentenceAttentionPool::new(
                &p("multi_modal_text_pool_fused"),
                h,
                cfg.pool_heads,
            ),
            swin_pool_uni: TokenPooler::new(&p("multi_modal_vision_pool"), n_tokens, h),
            swin_pool_fused: TokenPooler::new(&p("multi_modal_vision_pool_fused"), n_tokens, h),
            cml_head_f: ContrastHead::new(&p("itc_head_fused"), 2 * h, h),
            cml_head_u: ContrastHead::new(&p("itc_head_uni"), 2 * h, h),
            dcl_gates: (0..2)
                .map(|i| UniGate::new(&p(&format!("dcl_gate{i}")), h))
                .collect(),
            dcl_agg: (0..2)
                .map(|i| lin(&format!("dcl_aggregate{i}"), h, h))
                .collect(),
            dcl_head_g: ContrastHead::new(&p("itc_agg_head_image"), h, h),
            dcl_head_a: ContrastHead::new(&p("itc_agg_head_aggregate"), h, h),
            sentence_pooler: ClauseMlp::new(
                &p("multi_modal_sentence_pooler"),
                h,
                384,
                128,
                true,
                true,
                true,
            ),
            mlm_transform: lin("mlm_head_transform", h, h),
            mlm_norm: nn::layer_norm(p("mlm_head_norm"), vec![h], Default::default()),
            mlm_decoder: lin("mlm_head_decoder", h, vocab),
            sal_r: ClauseMlp::new(&p("sal_head_reconstruct"), h, 128, 8, true, true, false),
            sal_t: ClauseMlp::new(&p("sal_head_target"), bh, 384, 8, false, false, false),
            mim_decoder: MimDecoder::new(&p("mim_head_decoder"), h, 5, 16),
            grid,
            mask_id,
            special_ids,
            vocab,
            swin,
            bert,
            cfg,
        })
    }

    /// The image encoder.
    pub fn encoder(&self) -> &SwinViT {
        &self.swin
    }

    /// The text encoder.
    pub fn text_encoder(&self) -> &BertModel {
        &self.bert
    }

    /// The settings the model was built with.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Learning-rate multiplier of a variable: ×5 for heads and `multi_modal` modules.
    pub fn lr_multiplier(name: &str) -> f64 {
        if name.contains("multi_modal") || name.contains("_head") {
            5.0
        } else {
            1.0
        }
    }

    fn text_features(&self, ids: &Tensor, mask: &Tensor) -> (Tensor, Tensor) {
        let out = self.bert.forward(ids, mask);
        let t = self.text_proj.forward(&out.last_hidden_state)
            + self
                .type_emb
                .forward(&Tensor::zeros_like(ids).to_kind(Kind::Int64));
        (t, out.embeddings)
    }

    fn vision_tokens(&self, x: &Tensor) -> Tensor {
        self.project_vision(&self.swin.tokens(x))
    }

    fn project_vision(&self, tok: &Tensor) -> Tensor {
        let (b, n, _) = tok.size3().expect("B×N×C");
        self.vision_proj.forward(tok)
            + self
                .type_emb
                .forward(&Tensor::ones([b, n], (Kind::Int64, tok.device())))
    }

    /// The step's whole-word-masked token ids (seeded by `step_seed`) and their MLM labels.
    fn mlm_inputs(&self, inp: &Inputs, obj: &Objectives, step_seed: u64) -> (Tensor, Tensor) {
        let dev = inp.volume.device();
        let b = inp.volume.size()[0];
        let mut rng = ChaCha8Rng::seed_from_u64(step_seed ^ 0x6d6c6d);
        let ids: Vec<i64> = inp.input_ids.view([-1]).try_into().unwrap_or_default();
        let att: Vec<i64> = inp.attention_mask.view([-1]).try_into().unwrap_or_default();
        let l = inp.input_ids.size()[1] as usize;
        let (mut mids, mut labels) = (Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()));
        for s in 0..b as usize {
            let att8: Vec<i8> = att[s * l..(s + 1) * l].iter().map(|&a| a as i8).collect();
            let special = |x: i64| self.special_ids.contains(&x);
            let (m, lab) = whole_word_mask(
                &ids[s * l..(s + 1) * l],
                &inp.word_start[s],
                &att8,
                &special,
                self.mask_id,
                self.vocab,
                obj.mlm_probability,
                &mut rng,
            );
            mids.extend(m);
            labels.extend(lab);
        }
        let mids = Tensor::from_slice(&mids).view([b, l as i64]).to_device(dev);
        let labels = Tensor::from_slice(&labels)
            .view([b, l as i64])
            .to_device(dev);
        (mids, labels)
    }

    /// The five losses of one step. `step_seed` fixes the MIM cubes and MLM words of the step.
    pub fn losses(&self, inp: &Inputs, obj: &Objectives, step_seed: u64) -> Losses {
        let dev = inp.volume.device();
        let b = inp.volume.size()[0];
        // Unmasked text and image.
        let (text, emb) = self.text_features(&inp.input_ids, &inp.attention_mask);
        let (clauses, cmask) = clause_gather(&text, &inp.clause_index);
        let v = self.vision_tokens(&inp.volume);

        // MLM + SAL (masked text recomputed every step; the image unmasked).
        let (mids, labels) = self.mlm_inputs(inp, obj, step_seed);
        let (masked_text, _) = self.text_features(&mids, &inp.attention_mask);
        let (fused_text, _) = self.fuse_mlm.forward(&masked_text, &v);
        let transformed = self
            .mlm_norm
            .forward(&self.mlm_transform.forward(&fused_text).gelu("none"));
        let mlm = mlm_loss(&self.mlm_decoder.forward(&transformed), &labels);
        let (rec, _) = clause_gather(&transformed, &inp.clause_index);
        // Clause means of the embedding-layer outputs: SAL's targets and (detached) SSM's.
        let (tgt, _) = clause_gather(&emb, &inp.clause_index);
        let sal = sal_loss(
            &self.sal_r.forward(&rec, &cmask),
            &self.sal_t.forward(&tgt, &cmask),
            &cmask,
            1.0,
        );

        // MIM: cubes zeroed, guided by the clauses.
        let [d, hh, w] = self.cfg.input;
        let cube = |a: i64| ((a as f64 * obj.cube_fraction).round() as i64).max(1);
        let mask = cube_mask(
            [d, hh, w],
            [cube(d), cube(hh), cube(w)],
            obj.mask_ratio,
            step_seed ^ 0x6d696d,
        )
        .to_device(dev);
        let masked = &inp.volume * (mask.ones_like() - &mask);
        let vm = self.vision_tokens(&masked);
        let (fused_img, _) = self.fuse_mim.forward(&vm, &clauses);
        let [gd, gh, gw] = self.grid;
        let grid = fused_img
            .transpose(1, 2)
            .reshape([b, self.cfg.hidden, gd, gh, gw]);
        let recon = self.mim_decoder.forward(&grid);
        let mim = mim_loss(&recon, &inp.volume, &mask, obj.mask_ratio);

        // CML: fused vs unfused global pairs.
        let (v_f, s_f) = self.fuse_itc.forward(&v, &clauses);
        let img_uni = self.swin_pool_uni.forward(&v);
        let img_fused = self.swin_pool_fused.forward(&v_f);
        let u = Tensor::cat(
            &[
                self.pool_uni.forward(&clauses, &cmask),
                img_uni.shallow_clone(),
            ],
            1,
        );
        let f = Tensor::cat(
            &[
                self.pool_fused.forward(&s_f, &cmask),
                img_fused.shallow_clone(),
            ],
            1,
        );
        let cml = info_nce(
            &self.cml_head_f.forward(&f),
            &self.cml_head_u.forward(&u),
            obj.temperature,
        );

        // DCL: the image vector queries each clause, aggregated twice.
        let mut x = clauses.shallow_clone();
        let mut y = img_uni;
        for (gate, agg) in self.dcl_gates.iter().zip(&self.dcl_agg) {
            let x2 = gate.forward(&y, &x);
            y = agg.forward(&masked_mean(&x2, &cmask)).tanh();
            x = x2;
        }
        let dcl = info_nce(
            &self.dcl_head_g.forward(&img_fused),
            &self.dcl_head_a.forward(&y),
            obj.temperature,
        );

        // SSM: clause visual features vs clause text targets (embedding layer, no gradient).
        let visual = self.sentence_pooler.forward(&x, &cmask);
        let ssm = ssm_loss(&tgt, &visual, &cmask);

        let total = &mim * obj.mim
            + (&mlm + &sal * obj.sal) * obj.mlm
            + &cml * obj.cml
            + &dcl * obj.dcl
            + &ssm * obj.ssm;
        Losses {
            total,
            mim,
            mlm,
            sal,
            cml,
            dcl,
            ssm,
        }
    }

    /// Image features for evaluation: the pooled unimodal image vector (B×H).
    pub fn image_embedding(&self, volume: &Tensor) -> Tensor {
        self.swin_pool_uni.forward(&self.vision_tokens(volume))
    }

    /// Frozen image features for probes and alignment: per encoder stage (the patch embedding and
    /// the four layers, each layer-normed as the exported encoder gives them) the spatial mean and
    /// maximum of the map, then the pooled unimodal image vector, as one B×F tensor (F = 2·ΣC_k + H).
    /// The maxima keep small local findings (a nodule, a calcification) that the final stage's
    /// mean averages away.
    pub fn image_features(&self, volume: &Tensor) -> Tensor {
        let maps = self.swin.forward(volume);
        let mut parts: Vec<Tensor> = Vec::with_capacity(2 * maps.len() + 1);
        for m in &maps {
            let flat = m.flatten(2, -1);
            parts.push(flat.mean_dim(2, false, flat.kind()));
            parts.push(flat.amax(2, false));
        }
        let tok = crate::swin::tokens_of(maps.last().expect("five stage maps"));
        parts.push(self.swin_pool_uni.forward(&self.project_vision(&tok)));
        Tensor::cat(&parts, 1)
    }

    /// The frozen text encoder's clause features for evaluation: clause means of the text
    /// encoder's last hidden state (B×S×D) and the mask of existing clauses (B×S). `clause_index`
    /// is B×L (-1 for special tokens and padding).
    pub fn clause_text_features(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        clause_index: &Tensor,
    ) -> (Tensor, Tensor) {
        let out = self.bert.forward(input_ids, attention_mask);
        clause_gather(&out.last_hidden_state, clause_index)
    }

    /// The device of the model's variables.
    pub fn device(&self) -> Device {
        self.type_emb.ws.device()
    }
}

/// The `[MASK]` id and the special token ids of the text folder's tokenizer (either Hugging Face
/// layout, see `mg3d_report::hf_tokenizer`), or bert-base-uncased's when it has none.
fn special_tokens(text_folder: &Path) -> (i64, Vec<i64>) {
    let Ok(tk) = TokenizerFiles::find(text_folder).and_then(|f| f.load()) else {
        return (103, vec![0, 100, 101, 102, 103]);
    };
    let mut special: Vec<i64> = tk
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id as i64)
        .collect();
    special.sort_unstable();
    (tk.token_to_id("[MASK]").map_or(103, i64::from), special)
}

#[cfg(test)]
mod tests {
    use super::special_tokens;

    #[test]
    fn special_tokens_come_from_vocab_txt_in_the_older_layout() {
        let d = tempfile::tempdir().unwrap();
        let vocab = ["[UNK]", "a", "[CLS]", "[SEP]", "b", "[MASK]", "[PAD]"];
        std::fs::write(d.path().join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
        assert_eq!(special_tokens(d.path()), (5, vec![0, 2, 3, 5, 6]));
        // No tokenizer file at all: bert-base-uncased's ids.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            special_tokens(empty.path()),
            (103, vec![0, 100, 101, 102, 103])
        );
    }
}
