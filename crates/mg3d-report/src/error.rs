//! Errors of the report stages. Each names the file, lexicon or param at fault.

use std::path::PathBuf;

use mg3d_core::StageError;

/// Errors of the `reports`, `entities` and `tokens` stages and the functions they use.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A report CSV could not be opened or its header read.
    #[error("{path}: {source}")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The CSV error.
        source: csv::Error,
    },
    /// A lexicon or the context rules are not valid TOML of their shape.
    #[error("{what}: {source}")]
    Lexicon {
        /// Which file: `findings lexicon`, `anatomy lexicon`, `modifiers lexicon` or `context rules`.
        what: &'static str,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A context rule is invalid.
    #[error("context rule {literals:?}: {detail}")]
    ContextRule {
        /// The rule's literals.
        literals: Vec<String>,
        /// What is wrong.
        detail: String,
    },
    /// A tokenizer file could not be loaded.
    #[error("{path}: {source}")]
    TokenizerFile {
        /// The tokenizer.json.
        path: PathBuf,
        /// The tokenizers error.
        source: tokenizers::Error,
    },
    /// The tokenizer failed being set up, trained, saved or encoding a text.
    #[error("{0}")]
    Tokenizer(#[source] tokenizers::Error),
    /// `section_columns` names a section that does not exist.
    #[error("section_columns: unknown section {0:?}; use {sections}", sections = crate::reports::SECTIONS.join(", "))]
    UnknownSection(String),
    /// The tokens stage has neither a tokenizer nor a vocabulary size to train one.
    #[error("set tokenizer (a tokenizer.json or model folder) or train_vocab_size (to train one)")]
    NoTokenizer,
}

impl From<ReportError> for StageError {
    fn from(e: ReportError) -> Self {
        StageError::wrap(e)
    }
}
