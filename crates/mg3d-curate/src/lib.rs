//! Curated corpora: the `curate` stage (policies + polars SQL rules over one joined view, with every
//! exclusion explained and a corpus card) and `mg3d query` (polars SQL over every stage table).

pub mod query;
pub mod select;
pub mod stage;
pub mod view;

pub use stage::CurateStage;

/// Errors of the curate crate.
#[derive(Debug, thiserror::Error)]
pub enum CurateError {
    /// An input table is missing or unreadable.
    #[error("curate input: {0}")]
    Input(String),
    /// The joined view could not be built.
    #[error("building the curate view: {0}")]
    View(#[source] polars::prelude::PolarsError),
    /// A policy param is invalid (the message names it).
    #[error("{0}")]
    Params(String),
    /// A SQL rule does not parse.
    #[error("rule {rule:?} does not parse: {source}")]
    RuleSyntax {
        /// The rule.
        rule: String,
        /// The parser's error.
        source: polars::prelude::PolarsError,
    },
    /// A SQL rule reads a column the view does not have.
    #[error("rule {rule:?} names unknown column {column:?}; valid columns: {}", valid.join(", "))]
    UnknownColumn {
        /// The rule.
        rule: String,
        /// The column it names.
        column: String,
        /// The view's columns.
        valid: Vec<String>,
    },
    /// A rule or query is invalid.
    #[error("{0}")]
    Rule(String),
    /// An output could not be written.
    #[error("output: {0}")]
    Output(String),
}

impl From<CurateError> for mg3d_core::StageError {
    fn from(e: CurateError) -> Self {
        mg3d_core::StageError::wrap(e)
    }
}
