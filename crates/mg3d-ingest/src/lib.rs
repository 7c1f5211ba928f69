//! mg3d-ingest: the stages that turn an archive into volumes a model can read.
//!
//! - [`error`]: [`IngestError`], what the stages return when they cannot go on.
//! - [`ingest`]: the `ingest` stage: DICOM roots and NIfTI roots (CT-RATE metadata, accession
//!   map) to `volumes.parquet` and validated RAS volumes, every other input a reject with a reason;
//!   identifiers scrubbed, ids keyed.
//! - [`preprocess`]: the `preprocess` stage: RAS, resampling to the preset's spacing, HU window,
//!   crop/pad to the preset's shape.
//! - [`scan`]: one DICOM folder or NIfTI file read outside a pipeline exactly as ingest and
//!   preprocess read it (`mg3d embed`, `mg3d predict`).
//! - [`walk`]: following symlinks with cycle detection, every file accounted for once.
//! - [`inspect`]: what mg3d reads from one DICOM or NIfTI file (`mg3d inspect`).

pub mod error;
pub mod ingest;
pub mod inspect;
pub mod preprocess;
pub mod scan;
pub mod walk;

pub use error::IngestError;
