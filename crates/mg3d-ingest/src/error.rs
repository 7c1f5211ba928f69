//! Errors of the `ingest` and `preprocess` stages. A bad input file is not one of them: it is a
//! reject row with a reason ([`mg3d_volume::Reject`]).

use std::path::PathBuf;

use mg3d_core::StageError;
use mg3d_volume::VolumeError;

/// Errors of the `ingest` and `preprocess` stages and [`crate::preprocess::load_preset`].
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A preset name is neither built in nor a readable file.
    #[error(
        "preset {name:?} is not built in (demo, demo-64, ct-clip, mg3d) and not a readable file: {source}"
    )]
    UnknownPreset {
        /// The `preset` param.
        name: String,
        /// Why the file could not be read.
        source: std::io::Error,
    },
    /// A preset is not valid TOML of a preset's shape.
    #[error("preset {name}: {source}")]
    PresetSyntax {
        /// The `preset` param.
        name: String,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A preset's `crop` is not one of the known ones.
    #[error("preset {name}: crop must be center or foreground")]
    PresetCrop {
        /// The `preset` param.
        name: String,
    },
    /// A param is invalid (the message names it and what to give).
    #[error("{0}")]
    Params(String),
    /// The roots hold no file at all.
    #[error(
        "no input files under dicom_roots {dicom_roots:?} or nifti_roots {nifti_roots:?}: check that they are the right folders and are mounted, or set allow_empty = true"
    )]
    NoInputs {
        /// The `dicom_roots` param.
        dicom_roots: Vec<String>,
        /// The `nifti_roots` param.
        nifti_roots: Vec<String>,
    },
    /// A root, a source file or a folder could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The path, as the params give it (or a root's label and path).
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A CSV (CT-RATE metadata, the accession map) could not be read.
    #[error("{path}: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The CSV error.
        source: csv::Error,
    },
    /// An item's stored result could not be written or read back.
    #[error("{path}: {source}")]
    Item {
        /// The item's directory.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A volume result came without the item that holds its file (a bug).
    #[error("a volume without its item")]
    VolumeWithoutItem,
    /// Writing a volume failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

impl From<IngestError> for StageError {
    fn from(e: IngestError) -> Self {
        StageError::wrap(e)
    }
}
