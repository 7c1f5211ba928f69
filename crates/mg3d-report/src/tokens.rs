//! The `tokens` stage: Hugging Face `tokenizers` over the findings + impression clauses.
//!
//! Clauses (clauses.parquet, findings then impression, in order) are lower-cased and joined with
//! single spaces, encoded once with special tokens, truncated to `max_length` keeping the final
//! [SEP], and padded. Each token's clause comes from its character offset, so clause boundaries are
//! exact whatever the tokenizer does inside words. Word-start flags come from the encoding's word ids.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int8Builder, Int32Array, Int32Builder, ListBuilder, StringArray,
};
use mg3d_core::stage::{InputDecl, ParamDef, ParamType, Params, Stage, StageContext, StageError};
use mg3d_core::table::{TableSchema, read_table, write_columns};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// One report's tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    /// Ids, padded.
    pub ids: Vec<i32>,
    /// Attention mask.
    pub mask: Vec<i8>,
    /// Clause per token (-1 for special tokens and padding).
    pub clause: Vec<i32>,
    /// Word-start flags.
    pub word_start: Vec<i8>,
    /// Real tokens.
    pub length: usize,
    /// Longer than max_length.
    pub truncated: bool,
}

/// Loads `tokenizer.json` (a file, or a model folder holding one), set up to truncate and pad.
pub fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer, String> {
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    let mut tk = Tokenizer::from_file(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let pad_id = tk.token_to_id("[PAD]").unwrap_or(0);
    tk.with_truncation(Some(TruncationParams {
        max_length,
        ..Default::default()
    }))
    .map_err(|e| e.to_string())?;
    tk.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(max_length),
        pad_id,
        pad_token: "[PAD]".into(),
        ..Default::default()
    }));
    Ok(tk)
}

/// Tokenizes clauses as MG-3D does (lower-cased, joined, clause index per token).
pub fn tokenize_clauses(tk: &Tokenizer, clauses: &[String]) -> Result<Tokenized, String> {
    let mut text = String::new();
    let mut bounds = Vec::new();
    for c in clauses {
        if !text.is_empty() {
            text.push(' ');
        }
        let start = text.len();
        text.push_str(&c.to_lowercase());
        bounds.push(start..text.len());
    }
    let enc = tk.encode(text.as_str(), true).map_err(|e| e.to_string())?;
    let special = enc.get_special_tokens_mask();
    let offsets = enc.get_offsets();
    let words = enc.get_word_ids();
    let mask: Vec<i8> = enc.get_attention_mask().iter().map(|&m| m as i8).collect();
    let mut clause = Vec::with_capacity(mask.len());
    let mut word_start = Vec::with_capacity(mask.len());
    let mut prev_word: Option<u32> = None;
    for i in 0..mask.len() {
        if special[i] == 1 || mask[i] == 0 {
            clause.push(-1);
            word_start.push(0);
            prev_word = None;
            continue;
        }
        let off = offsets[i].0;
        clause.push(
            bounds
                .iter()
                .position(|b| off >= b.start && off < b.end.max(b.start + 1))
                .map(|p| p as i32)
                .unwrap_or(-1),
        );
        word_start.push((words[i] != prev_word || words[i].is_none()) as i8);
        prev_word = words[i];
    }
    let length = mask.iter().filter(|&&m| m == 1).count();
    Ok(Tokenized {
        ids: enc.get_ids().iter().map(|&x| x as i32).collect(),
        mask,
        clause,
        word_start,
        length,
        truncated: !enc.get_overflowing().is_empty(),
    })
}

/// Stage kind `tokens`.
pub struct TokensStage;

#[derive(Deserialize)]
struct P {
    tokenizer: String,
    max_length: i64,
}

impl Stage for TokensStage {
    fn kind(&self) -> &'static str {
        "tokens"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "findings + impression clauses -> token ids, masks, clause index per token (HF tokenizers)"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![
            ParamDef::required(
                "tokenizer",
                ParamType::Str,
                "tokenizer.json or a Hugging Face model folder (e.g. .venv/minilm, RadBERT)",
            ),
            ParamDef::new(
                "max_length",
                ParamType::Int,
                json!(250),
                "tokens per report, [CLS] and [SEP] included",
            ),
        ]
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "reports",
            required: true,
        }]
    }
    fn sources_fingerprint(&self, params: &Params) -> Result<Option<String>, StageError> {
        let p: P = params.parse()?;
        let path = PathBuf::from(&p.tokenizer);
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path
        };
        let d =
            mg3d_core::fsutil::hash_file(&file).map_err(|e| StageError::ctx(file.display(), e))?;
        Ok(Some(d.blake3))
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: P = ctx.params.parse()?;
        let tk = load_tokenizer(Path::new(&p.tokenizer), p.max_length as usize)
            .map_err(StageError::msg)?;
        let dir = ctx.input("reports")?;
        let mut clauses: BTreeMap<String, Vec<(i32, String)>> = BTreeMap::new();
        for b in read_table(&dir.join("clauses.parquet"), &TableSchema::get("clauses")?)? {
            let id = b
                .column_by_name("report_id")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            let ci = b
                .column_by_name("clause_idx")
                .unwrap()
                .as_any()
                .downcast_ref::<Int32Array>()
                .unwrap()
                .clone();
            let t = b
                .column_by_name("text")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            for r in 0..b.num_rows() {
                clauses
                    .entry(id.value(r).to_string())
                    .or_default()
                    .push((ci.value(r), t.value(r).to_string()));
            }
        }
        let items: Vec<(String, Vec<String>)> = clauses
            .into_iter()
            .map(|(id, mut v)| {
                v.sort_by_key(|c| c.0);
                (id, v.into_iter().map(|c| c.1).collect())
            })
            .collect();
        use rayon::prelude::*;
        let out: Vec<Tokenized> = items
            .par_iter()
            .map(|(_, c)| tokenize_clauses(&tk, c))
            .collect::<Result<_, _>>()
            .map_err(StageError::msg)?;
        let mut ids = ListBuilder::new(Int32Builder::new());
        let mut mask = ListBuilder::new(Int8Builder::new());
        let mut clause = ListBuilder::new(Int32Builder::new());
        let mut ws = ListBuilder::new(Int8Builder::new());
        for t in &out {
            ids.values().append_slice(&t.ids);
            ids.append(true);
            mask.values().append_slice(&t.mask);
            mask.append(true);
            clause.values().append_slice(&t.clause);
            clause.append(true);
            ws.values().append_slice(&t.word_start);
            ws.append(true);
        }
        let n_clauses: Vec<i32> = out
            .iter()
            .map(|t| {
                t.clause
                    .iter()
                    .filter(|&&c| c >= 0)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len() as i32
            })
            .collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(
                items.iter().map(|i| i.0.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(ids.finish()),
            Arc::new(mask.finish()),
            Arc::new(clause.finish()),
            Arc::new(ws.finish()),
            Arc::new(Int32Array::from(
                out.iter().map(|t| t.length as i32).collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(
                out.iter().map(|t| t.truncated).collect::<Vec<_>>(),
            )),
            Arc::new(Int32Array::from(n_clauses)),
        ];
        write_columns(
            &ctx.out_dir.join("tokens.parquet"),
            &TableSchema::get("tokens")?,
            cols,
        )?;
        // The tokenizer used, for provenance and for the trainer.
        let src = PathBuf::from(&p.tokenizer);
        let file = if src.is_dir() {
            src.join("tokenizer.json")
        } else {
            src
        };
        std::fs::copy(&file, ctx.out_dir.join("tokenizer.json"))?;
        let truncated = out.iter().filter(|t| t.truncated).count();
        let mean_len = out.iter().map(|t| t.length).sum::<usize>() as f64 / out.len().max(1) as f64;
        Ok(
            json!({"reports": out.len(), "truncated": truncated, "mean_tokens": (mean_len * 10.0).round() / 10.0, "vocab": tk.get_vocab_size(true)}),
        )
    }
}
