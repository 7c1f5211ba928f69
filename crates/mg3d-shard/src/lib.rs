//! mg3d-shard: training-ready shards and a deterministic, resumable loader.
//!
//! - [`split`]: patient-level train/val/test splits from a hash of `(seed, patient_id)`.
//! - [`writer`]: fixed-shape samples stacked into safetensors shards of a configured size, with
//!   `index.json` (shards with sha256, samples with ids, field dtypes/shapes, seed).
//! - [`reader`]: [`ShardIndex`] and the memory-mapped [`Loader`]: a `(seed, epoch)` permutation
//!   independent of worker count, `skip_to(epoch, sample_in_epoch)`, rank/world partitioning, a
//!   prefetch thread pool, optional checksum verification and a graph-neighbour batch sampler.
//! - [`order`]: the permutation and batch partitioning (pure functions).
//! - [`stage`]: the `shards` stage (preprocess + tokens + entities [+ graph] [+ curate]).
//! - [`bench`]: loader read throughput against `cat` of the same files.
//!
//! See the crate README for the file format and a Python snippet that reads the same values.

#![warn(missing_docs)]

pub mod bench;
pub mod format;
pub mod order;
pub mod reader;
pub mod split;
pub mod stage;
pub mod writer;

use std::path::PathBuf;

pub use bench::{BenchReport, bench_read};
pub use format::{Dtype, FieldSpec, IndexFile, SampleEntry, ShardEntry, SplitIndex};
pub use reader::{
    Batch, Loader, LoaderConfig, LoaderState, NeighborSampler, ShardIndex, TensorBuf,
};
pub use stage::ShardsStage;
pub use writer::{
    SampleRecord, ShardCache, ShardMade, VolumeSource, WriteSummary, WriterConfig, volume_field,
    write_shards,
};

/// Shard errors. Each names the file at fault and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A shard or `index.json` is malformed or disagrees with the index.
    #[error(
        "{path}: {detail}; the shards are damaged or from another version: rebuild them with `mg3d run PIPELINE --stage shards`"
    )]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A shard's sha256 differs from `index.json`.
    #[error(
        "{path}: sha256 {actual} does not match index.json ({expected}): the shard is corrupt or was changed after writing; rebuild it with `mg3d run PIPELINE --stage shards --force`"
    )]
    Checksum {
        /// Shard file.
        path: PathBuf,
        /// sha256 recorded in the index.
        expected: String,
        /// sha256 of the file now.
        actual: String,
    },
    /// An input record or table is unusable.
    #[error("{path}: {detail}")]
    Input {
        /// File (or record) at fault.
        path: PathBuf,
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// Invalid writer or loader settings.
    #[error("{0}")]
    Config(String),
    /// The work was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Nothing to shard: no volume has both a report and tokens.
    #[error(
        "no volume-report pairs to shard ({counts}); check that volumes have reports (volumes.report_key = reports.report_key) and that tokens exist"
    )]
    NoPairs {
        /// What was left out at each step, as the stage counts it.
        counts: String,
    },
}

impl From<ShardError> for mg3d_core::StageError {
    fn from(e: ShardError) -> Self {
        match e {
            ShardError::Cancelled => mg3d_core::StageError::Cancelled,
            e => mg3d_core::StageError::wrap(e),
        }
    }
}
