//! Hugging Face tokenizer folders in both layouts: `tokenizer.json` (the `tokenizers` format), or
//! the older BERT layout of `vocab.txt` with `tokenizer_config.json` (RadBERT, MG-3D's text
//! encoder, ships only these), built here as `transformers`' `BertTokenizerFast` builds it: BERT
//! normaliser (lower-casing and accent stripping as configured), BERT pre-tokeniser, WordPiece with
//! `##` continuations, `[CLS] ... [SEP]`, and the special tokens the vocabulary holds.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;

use crate::ReportError;

/// BERT's special tokens, in the order `transformers` adds them.
pub const BERT_SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Where a tokenizer comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerFiles {
    /// A `tokenizer.json` (given, or in the folder).
    Json(PathBuf),
    /// A BERT folder without `tokenizer.json`: its `vocab.txt` and, if present,
    /// `tokenizer_config.json`.
    Vocab {
        /// vocab.txt.
        vocab: PathBuf,
        /// tokenizer_config.json.
        config: Option<PathBuf>,
    },
}

impl TokenizerFiles {
    /// The tokenizer behind `path`: a `tokenizer.json` file, or a folder holding one, or a folder
    /// holding `vocab.txt`.
    pub fn find(path: &Path) -> Result<TokenizerFiles, ReportError> {
        if !path.is_dir() {
            return Ok(TokenizerFiles::Json(path.to_path_buf()));
        }
        let json = path.join("tokenizer.json");
        if json.is_file() {
            return Ok(TokenizerFiles::Json(json));
        }
        let vocab = path.join("vocab.txt");
        if vocab.is_file() {
            let config = path.join("tokenizer_config.json");
            return Ok(TokenizerFiles::Vocab {
                vocab,
                config: config.is_file().then_some(config),
            });
        }
        Err(ReportError::Io {
            path: json,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the folder has neither tokenizer.json nor vocab.txt (a Hugging Face tokenizer folder has one)",
            ),
        })
    }

    /// The files whose bytes define the tokenizer.
    pub fn files(&self) -> Vec<&Path> {
        match self {
            TokenizerFiles::Json(p) => vec![p],
            TokenizerFiles::Vocab { vocab, config } => std::iter::once(vocab.as_path())
                .chain(config.as_deref())
                .collect(),
        }
    }

    /// Loads (or, for a vocabulary, builds) the tokenizer.
    pub fn load(&self) -> Result<Tokenizer, ReportError> {
        match self {
            TokenizerFiles::Json(file) => {
                Tokenizer::from_file(file).map_err(|source| ReportError::TokenizerFile {
                    path: file.clone(),
                    source,
                })
            }
            TokenizerFiles::Vocab { vocab, config } => {
                let settings = match config {
                    Some(c) => read_config(c)?,
                    None => BertSettings::default(),
                };
                bert_wordpiece(vocab, &settings)
            }
        }
    }
}

/// What `tokenizer_config.json` says about a BERT tokenizer (`transformers`' defaults otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct BertSettings {
    /// `do_lower_case` (default true).
    pub lowercase: bool,
    /// `strip_accents` (default: null, which follows `do_lower_case`).
    pub strip_accents: Option<bool>,
    /// `tokenize_chinese_chars` (default true).
    pub chinese_chars: bool,
}

impl Default for BertSettings {
    fn default() -> Self {
        BertSettings {
            lowercase: true,
            strip_accents: None,
            chinese_chars: true,
        }
    }
}

fn read_config(path: &Path) -> Result<BertSettings, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| ReportError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let d = BertSettings::default();
    Ok(BertSettings {
        lowercase: v["do_lower_case"].as_bool().unwrap_or(d.lowercase),
        strip_accents: v["strip_accents"].as_bool(),
        chinese_chars: v["tokenize_chinese_chars"]
            .as_bool()
            .unwrap_or(d.chinese_chars),
    })
}

/// A BERT WordPiece tokenizer over `vocab_file` (one token per line, ids by line).
pub fn bert_wordpiece(vocab_file: &Path, s: &BertSettings) -> Result<Tokenizer, ReportError> {
    let model = WordPiece::from_file(&vocab_file.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(ReportError::Tokenizer)?;
    let mut tk = Tokenizer::new(model);
    let id = |t: &str| {
        tk.token_to_id(t).ok_or_else(|| ReportError::Io {
            path: vocab_file.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the vocabulary has no {t} token"),
            ),
        })
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    tk.with_normalizer(Some(BertNormalizer::new(
        true,
        s.chinese_chars,
        s.strip_accents,
        s.lowercase,
    )))
    .map_err(ReportError::Tokenizer)?;
    tk.with_pre_tokenizer(Some(BertPreTokenizer));
    tk.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    tk.with_decoder(Some(WordPieceDecoder::default()));
    let specials: Vec<tokenizers::AddedToken> = BERT_SPECIALS
        .iter()
        .filter(|t| tk.token_to_id(t).is_some())
        .map(|t| tokenizers::AddedToken::from(*t, true))
        .collect();
    tk.add_special_tokens(specials)
        .map_err(ReportError::Tokenizer)?;
    Ok(tk)
}
