//! The `tokens` stage: Hugging Face `tokenizers` over the findings + impression clauses.
//!
//! Clauses (clauses.parquet, findings then impression, in order) are lower-cased and joined with
//! single spaces, encoded once with special tokens, truncated to `max_length` keeping the final
//! [SEP], and padded. Each token's clause comes from its character offset, so clause boundaries are
//! exact whatever the tokenizer does inside words. Word-start flags come from the encoding's word ids.

use std::collections::BTreeMap;
use std::path::Path;

use mg3d_core::rows::{ClausesRow, TokensRow};
use mg3d_core::stage::{InputDecl, ParamDef, Params, Stage, StageContext, StageError};
use mg3d_core::table::{read_rows, write_rows};
use serde_json::{Value, json};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::ReportError;
use crate::hf_tokenizer::{BERT_SPECIALS, BertSettings, TokenizerFiles, bert_wordpiece};

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

/// Loads a tokenizer (a `tokenizer.json`, or a Hugging Face folder in either layout: see
/// [`TokenizerFiles`]), set up to truncate and pad.
pub fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer, ReportError> {
    let mut tk = TokenizerFiles::find(path)?.load()?;
    let pad_id = tk.token_to_id("[PAD]").unwrap_or(0);
    tk.with_truncation(Some(TruncationParams {
        max_length,
        ..Default::default()
    }))
    .map_err(ReportError::Tokenizer)?;
    tk.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(max_length),
        pad_id,
        pad_token: "[PAD]".into(),
        ..Default::default()
    }));
    Ok(tk)
}

/// Tokenizes clauses as MG-3D does (lower-cased, joined, clause index per token).
pub fn tokenize_clauses(tk: &Tokenizer, clauses: &[String]) -> Result<Tokenized, ReportError> {
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
    let enc = tk
        .encode(text.as_str(), true)
        .map_err(ReportError::Tokenizer)?;
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

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct TokensParams {
        /// tokenizer.json or a Hugging Face model folder (e.g. .venv/minilm, RadBERT); empty = train
        /// one
        tokenizer: String = json!(""),
        /// with no tokenizer: train a deterministic WordPiece vocabulary of this size on the clauses
        train_vocab_size: i64 = json!(0),
        /// tokens per report, [CLS] and [SEP] included
        max_length: i64 = json!(250),
    }
}

/// Every report's clause texts in clause order, by report_id.
fn report_clauses(dir: &Path) -> Result<Vec<(String, Vec<String>)>, StageError> {
    let mut clauses: BTreeMap<String, Vec<(i32, String)>> = BTreeMap::new();
    for c in read_rows::<ClausesRow>(&dir.join("clauses.parquet"))? {
        clauses
            .entry(c.report_id)
            .or_default()
            .push((c.clause_idx, c.text));
    }
    let items: Vec<(String, Vec<String>)> = clauses
        .into_iter()
        .map(|(id, mut v)| {
            v.sort_by_key(|c| c.0);
            (id, v.into_iter().map(|c| c.1).collect())
        })
        .collect();
    Ok(items)
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
    fn partitioned(&self) -> bool {
        true
    }
    fn params(&self) -> Vec<ParamDef> {
        TokensParams::defs()
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "reports",
            required: true,
        }]
    }
    fn sources_fingerprint(&self, params: &Params) -> Result<Option<String>, StageError> {
        let p: TokensParams = params.parse()?;
        if p.tokenizer.is_empty() {
            return Ok(None);
        }
        let files = TokenizerFiles::find(Path::new(&p.tokenizer))?;
        let mut digests = Vec::new();
        for f in files.files() {
            let d = mg3d_core::fsutil::hash_file(f).map_err(|source| ReportError::Io {
                path: f.to_path_buf(),
                source,
            })?;
            digests.push(d.blake3);
        }
        Ok(Some(digests.join("+")))
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: TokensParams = ctx.params.parse()?;
        if p.tokenizer.is_empty() && p.train_vocab_size <= 0 {
            return Err(ReportError::NoTokenizer.into());
        }
        let dir = ctx.input("reports")?;
        let items = report_clauses(dir)?;
        let tokenizer_file = ctx.out_dir.join("tokenizer.json");
        if p.tokenizer.is_empty() {
            let texts: Vec<String> = items
                .iter()
                .flat_map(|(_, c)| c.iter().map(|t| t.to_lowercase()))
                .collect();
            // Trained once on all reports, kept in the store: every partition and the merge
            // need the same vocabulary.
            let mut h = blake3::Hasher::new();
            h.update(&p.train_vocab_size.to_le_bytes());
            for t in &texts {
                h.update(&(t.len() as u64).to_le_bytes());
                h.update(t.as_bytes());
            }
            let key = ctx.items().key("trained-tokenizer", &h.finalize().to_hex());
            let o = ctx.items().get_or_make_shared::<StageError>(&key, |dir| {
                let trained = train_wordpiece(&texts, p.train_vocab_size as usize, dir)?;
                trained
                    .save(dir.join("tokenizer.json"), true)
                    .map_err(ReportError::Tokenizer)?;
                Ok(())
            })?;
            for f in ["tokenizer.json", "vocab.txt"] {
                std::fs::copy(o.dir().join(f), ctx.out_dir.join(f))?;
            }
        } else {
            match TokenizerFiles::find(Path::new(&p.tokenizer))? {
                TokenizerFiles::Json(file) => {
                    std::fs::copy(&file, &tokenizer_file)?;
                }
                // A vocab.txt folder: the output holds the tokenizer built from it, as JSON.
                vocab => vocab
                    .load()?
                    .save(&tokenizer_file, true)
                    .map_err(ReportError::Tokenizer)?,
            }
        }
        let tk = load_tokenizer(&tokenizer_file, p.max_length as usize)?;
        // Each report's tokens depend on the tokenizer's bytes (copied or trained) and its clauses.
        let vocab = mg3d_core::fsutil::hash_file(&tokenizer_file)?.blake3;
        let rows: Vec<Option<TokensRow>> = ctx.map_items(
            &items,
            "reports",
            |(id, c)| {
                let mut h = blake3::Hasher::new();
                h.update(vocab.as_bytes());
                for t in c {
                    h.update(&[0]);
                    h.update(t.as_bytes());
                }
                (id.clone(), h.finalize().to_hex().to_string())
            },
            |(id, c)| {
                let t = tokenize_clauses(&tk, c)?;
                Ok(TokensRow {
                    report_id: id.clone(),
                    n_clauses: t
                        .clause
                        .iter()
                        .filter(|&&c| c >= 0)
                        .collect::<std::collections::BTreeSet<_>>()
                        .len() as i32,
                    input_ids: t.ids,
                    attention_mask: t.mask,
                    clause_index: t.clause,
                    word_start: t.word_start,
                    length: t.length as i32,
                    truncated: t.truncated,
                })
            },
        )?;
        if ctx.is_partition() {
            return Ok(Value::Null);
        }
        let rows: Vec<TokensRow> = rows.into_iter().flatten().collect();
        write_rows(&ctx.out_dir.join("tokens.parquet"), &rows)?;
        let truncated = rows.iter().filter(|t| t.truncated).count();
        let mean_len =
            rows.iter().map(|t| t.length as usize).sum::<usize>() as f64 / rows.len().max(1) as f64;
        Ok(
            json!({"reports": rows.len(), "truncated": truncated, "mean_tokens": (mean_len * 10.0).round() / 10.0, "vocab": tk.get_vocab_size(true)}),
        )
    }
}

/// Trains a BERT-style WordPiece tokenizer on `texts`, deterministically (the `tokenizers` trainer is
/// not: its tie-breaking follows hash order). Vocabulary: [PAD] [UNK] [CLS] [SEP] [MASK], every
/// printable ASCII character and every character seen (word-initial and `##` continuation), then whole words and word pieces ranked by
/// corpus frequency (ties broken alphabetically) up to `vocab_size`. Greedy longest-match encoding
/// always succeeds because every character is in the vocabulary.
pub fn train_wordpiece(
    texts: &[String],
    vocab_size: usize,
    dir: &Path,
) -> Result<Tokenizer, ReportError> {
    use std::collections::{BTreeMap, BTreeSet};
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::{
        NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString,
        PreTokenizer,
    };

    let normalizer = BertNormalizer::default();
    let mut words: BTreeMap<String, u64> = BTreeMap::new();
    for t in texts {
        let mut n = NormalizedString::from(t.as_str());
        normalizer
            .normalize(&mut n)
            .map_err(ReportError::Tokenizer)?;
        let mut pre = PreTokenizedString::from(n);
        BertPreTokenizer
            .pre_tokenize(&mut pre)
            .map_err(ReportError::Tokenizer)?;
        for (w, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *words.entry(w.to_string()).or_default() += 1;
        }
    }
    let specials = BERT_SPECIALS;
    // Base alphabet: printable ASCII (lower-cased, as the normaliser does) plus every character seen.
    let mut chars: BTreeSet<String> = BTreeSet::new();
    for c in (33u8..127)
        .map(char::from)
        .filter(|c| !c.is_ascii_uppercase())
    {
        chars.insert(c.to_string());
        chars.insert(format!("##{c}"));
    }
    let mut pieces: BTreeMap<String, u64> = BTreeMap::new();
    for (w, &n) in &words {
        let cs: Vec<(usize, char)> = w.char_indices().collect();
        for &(_, c) in &cs {
            chars.insert(c.to_string());
            chars.insert(format!("##{c}"));
        }
        *pieces.entry(w.clone()).or_default() += n * 2; // whole words weigh double
        // Word-initial prefixes and continuation pieces of 2..=6 characters.
        for (k, &(b, _)) in cs.iter().enumerate() {
            for len in 2..=6 {
                if k + len > cs.len() {
                    break;
                }
                let e = if k + len == cs.len() {
                    w.len()
                } else {
                    cs[k + len].0
                };
                let p = if b == 0 {
                    w[..e].to_string()
                } else {
                    format!("##{}", &w[b..e])
                };
                *pieces.entry(p).or_default() += n;
            }
        }
    }
    let mut vocab: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    vocab.extend(chars.iter().cloned());
    let mut ranked: Vec<(String, u64)> = pieces
        .into_iter()
        .filter(|(p, _)| !chars.contains(p))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (p, _) in ranked {
        if vocab.len() >= vocab_size.max(specials.len()) {
            break;
        }
        vocab.push(p);
    }
    let vocab_file = dir.join("vocab.txt");
    std::fs::write(&vocab_file, vocab.join("\n") + "\n").map_err(|source| ReportError::Io {
        path: vocab_file.clone(),
        source,
    })?;
    bert_wordpiece(&vocab_file, &BertSettings::default())
}
