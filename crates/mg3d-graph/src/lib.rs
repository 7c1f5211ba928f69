//! Cross-patient correlation graph from fine-grained report knowledge (MG-3D's inter-patient
//! learning, shared/reference/mg3d-method.md §3.4–3.5).
//!
//! - [`regions`]: the region/finding layout (`configs/graph/regions.toml`);
//! - [`signature`]: per-report signatures and the disentangled similarity (defined there);
//! - [`graph`]: collapse identical signatures, inverted-index candidates, parallel scoring, top-k;
//! - [`stage`]: the `graph` stage (polars for the joins, rayon for scoring).

pub mod graph;
pub mod regions;
pub mod signature;
pub mod stage;

pub use graph::{Graph, GraphParams};
pub use regions::{Layout, SimilarityParams};
pub use signature::{Metric, Signature, SignatureBuilder, State, similarity};
pub use stage::GraphStage;

/// Errors of the graph crate.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A bad regions config.
    #[error("graph config: {0}")]
    Config(String),
    /// An input table could not be read or joined.
    #[error("graph input: {0}")]
    Input(String),
    /// Writing outputs failed.
    #[error("graph output: {0}")]
    Output(String),
    /// An input table is not there.
    #[error("{path}: missing; rerun the stage that writes it")]
    Missing {
        /// The table file.
        path: std::path::PathBuf,
    },
    /// A path polars cannot take (it reads UTF-8 paths only).
    #[error("{path}: path is not UTF-8")]
    NotUtf8 {
        /// The path.
        path: std::path::PathBuf,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A param is out of range (the message names it).
    #[error("{0}")]
    Params(String),
}

impl From<GraphError> for mg3d_core::StageError {
    fn from(e: GraphError) -> Self {
        mg3d_core::StageError::wrap(e)
    }
}
