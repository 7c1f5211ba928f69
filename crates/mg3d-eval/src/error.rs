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
    /// A preprocess preset that cannot be loaded.
    #[error(transparent)]
    Ingest(#[from] mg3d_ingest::IngestError),
    /// Writing a table.
    #[error(transparent)]
    Table(#[from] mg3d_core::table::TableError),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A predictor folder (the eval output's `predictor/`) that cannot be used.
    #[error("{path}: {detail}; rerun the eval stage to write it again")]
    Predictor {
        /// The file at fault.
        path: std::path::PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A model folder that does not record how its training volumes were made.
    #[error(
        "{0}: config.json records no preprocess preset of its volumes (a model trained before shards recorded it); retrain it to embed scans"
    )]
    NoPreset(std::path::PathBuf),
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
