//! Errors of training: settings, the model, checkpoints and batches. The encoders' and the
//! device's own errors ([`SwinError`], [`BertError`], [`DeviceError`]) and the shards' pass
//! through unchanged.

use std::path::PathBuf;

use mg3d_core::StageError;
use mg3d_shard::ShardError;
use tch::TchError;

use crate::bert::BertError;
use crate::runtime::DeviceError;
use crate::swin::SwinError;

/// Errors of the `train` stage, [`crate::trainer`], [`crate::model::Mg3d::new`] and
/// [`crate::stage::load_trained`].
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A training setting is invalid (the message names the param).
    #[error("{0}")]
    Params(String),
    /// `objectives` names a setting that does not exist.
    #[error(
        "unknown objective setting {0:?}; valid: mim, mlm, sal, cml, dcl, ssm, temperature, mask_ratio, cube_fraction, mlm_probability"
    )]
    UnknownObjective(String),
    /// An `objectives` setting has the wrong type.
    #[error("{0}")]
    Objectives(#[source] serde_json::Error),
    /// A model input side is not a multiple of the encoder's total downsampling.
    #[error("model input {axis} = {size} is not a multiple of 32 (patch 2 and 4 merges)")]
    InputSize {
        /// `D`, `H` or `W`.
        axis: &'static str,
        /// The size given.
        size: i64,
    },
    /// The model input differs from the volumes the shards hold.
    #[error(
        "input {input:?} differs from the shards' volumes, [D, H, W] = {volumes:?}: set input = {volumes:?} (or change the preprocess preset and the shards' shape)"
    )]
    InputMismatch {
        /// The `input` param.
        input: [i64; 3],
        /// The shards' volume shape as [D, H, W].
        volumes: [i64; 3],
    },
    /// The train split cannot fill one batch.
    #[error("the train split has {samples} samples, fewer than batch_size {batch_size}")]
    TooFewSamples {
        /// Samples in the split.
        samples: usize,
        /// The batch size.
        batch_size: usize,
    },
    /// A batch lacks a field the model reads.
    #[error("the shards have no field {0:?}")]
    MissingField(String),
    /// A batch field the model reads as integers holds floats.
    #[error("field {0} is not integer")]
    NotInteger(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file (a run record, a checkpoint's state) is not what it should be.
    #[error("{path}: {source}")]
    Json {
        /// The file (or checkpoint directory).
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// libtorch could not read weights or optimiser moments.
    #[error("{path}: {source}")]
    Torch {
        /// The file (or checkpoint directory).
        path: PathBuf,
        /// The libtorch error.
        source: TchError,
    },
    /// A run record or checkpoint lacks something it must hold.
    #[error("{path}: {detail}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is missing and why.
        detail: String,
    },
    /// Writing a checkpoint failed.
    #[error("{path}: {what}: {source}")]
    Save {
        /// The checkpoint's temporary directory.
        path: PathBuf,
        /// What was being written: create, weights, optimizer, state, rename.
        what: &'static str,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Training ended without a checkpoint.
    #[error("training wrote no checkpoint")]
    NoCheckpoint,
    /// The image encoder's config or weights.
    #[error(transparent)]
    Swin(#[from] SwinError),
    /// The text encoder's folder, config or weights.
    #[error(transparent)]
    Bert(#[from] BertError),
    /// The text encoder's tokenizer files.
    #[error(transparent)]
    Tokenizer(#[from] mg3d_report::ReportError),
    /// The device spec.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The shards.
    #[error(transparent)]
    Shard(#[from] ShardError),
}

impl From<TrainError> for StageError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Shard(e) => e.into(),
            e => StageError::wrap(e),
        }
    }
}
