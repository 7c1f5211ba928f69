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
}
