//! mg3d-eval: how good is the corpus and the model.
//!
//! - [`error`]: [`EvalError`], what the stage returns;
//! - [`features`]: a trained model's frozen image and clause features, and the prompts;
//! - [`align`]: CLIP alignment and what both alignment methods share;
//! - [`entity_align`]: clause-level finding targets from the entities stage and the
//!   entity-grounded alignment heads;
//! - [`tasks`]: label scoring with bootstrap intervals and the rows of eval.parquet;
//! - [`predictor`]: what eval keeps so `mg3d predict` scores a new scan as eval scored its
//!   samples (the `predictor/` folder);
//! - [`params`]: the eval stage's parameters;
//! - [`metrics`]: AUC (ties as half), Youden point, bootstrap intervals, Recall@K, MAP@K;
//! - [`probe`]: the linear probe (L2 logistic regression by Newton's method);
//! - [`scans`]: new scans (DICOM folders, NIfTI files) through ingest's, preprocess's and the
//!   shards' code into a trained model's frozen image features (`mg3d embed`);
//! - [`stage`]: the `eval` stage (CT-CLIP-style alignment on the train split, zero-shot labels,
//!   report→volume and volume→volume retrieval, linear probe) → eval.parquet, eval.json;

pub mod align;
pub mod entity_align;
pub mod error;
pub mod features;
pub mod metrics;
pub mod params;
pub mod predictor;
pub mod probe;
pub mod scans;
pub mod stage;
pub mod tasks;

pub use error::EvalError;
