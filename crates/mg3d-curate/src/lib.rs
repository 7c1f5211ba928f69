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
    /// A rule or query is invalid.
    #[error("{0}")]
    Rule(String),
    /// An output could not be written.
    #[error("output: {0}")]
    Output(String),
}
