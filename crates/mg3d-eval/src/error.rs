//! Errors of the `eval` stage. The trained model's, the shards' and the tokenizer's errors pass
//! through unchanged.

use mg3d_core::StageError;
use mg3d_report::ReportError;
use mg3d_shard::ShardError;
use mg3d_train::TrainError;

/// Errors of the `eval` stage.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A param is invalid (the message names it and says what to give).
    #[error("{0}")]
    Params(String),
    /// The entity alignment was asked for without its inputs.
    #[error(
        "alignment = \"entity\" needs the entities and reports stages as inputs (clause-level finding assertions); add them, or set alignment = \"clip\""
    )]
    EntityInputs,
    /// The evaluated splits hold no samples.
    #[error(
        "the evaluated splits {0:?} hold no samples; evaluate other splits or build a larger corpus"
    )]
    NoSamples(Vec<String>),
    /// The train split is too small to fit the alignment.
    #[error("the train split needs at least 2 samples to fit the alignment")]
    TooFewTrainSamples,
    /// The shards hold no labels.
    #[error("the shards have no labels field")]
    NoLabels,
    /// Loading or running the trained model.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Reading the shards.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// Tokenising the prompts.
    #[error(transparent)]
    Report(#[from] ReportError),
}

impl From<EvalError> for StageError {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::Shard(e) => e.into(),
            EvalError::Train(e) => e.into(),
            e => StageError::wrap(e),
        }
    }
}
