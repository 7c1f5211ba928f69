//! mg3d-core: the stage engine every mg3d stage runs under.
//!
//! - [`pipeline`]: declarative pipeline files (TOML) with errors that name file, line and fix.
//! - [`stage`]: the [`Stage`] trait, its parameter schema and the [`StageContext`] a run receives.
//! - [`engine`]: stage keys, the lockfile, stale/fresh status with reasons, atomic output promotion.
//! - [`items`]: per-item keys so a stage over many items resumes and processes only new items.
//! - [`table`]: schema-checked Parquet tables (`schemas/*.json`), written with arrow-rs + parquet.
//! - [`budget`]: a memory budget in bytes shared by a stage's in-flight items.
//! - [`ids`]: keyed pseudonymous ids (no source identifier ever leaves ingest).
//! - [`plan`]: the volume geometry preprocess plans and shards and train check.
//! - [`ctrg`]: CTRG-Chest annotation files (read by ingest and reports).
//! - [`phi`]: identifying values seen in the inputs and the scrubber for messages and paths.

pub mod budget;
pub mod ctrg;
pub mod engine;
pub mod fsutil;
pub mod ids;
pub mod items;
pub mod labels;
pub mod lock;
pub mod phi;
pub mod pipeline;
pub mod plan;
/// One typed row struct per table of `schemas/` (`VolumesRow`, `RejectsRow`, ...), generated from
/// the schema files at build time; written and read with [`table::write_rows`] and
/// [`table::read_rows`].
pub mod rows {
    include!(concat!(env!("OUT_DIR"), "/rows.rs"));
}
pub mod stage;
pub mod table;

pub use engine::{Engine, RunOptions, RunReport, StageState, StageStatus};
pub use pipeline::{Pipeline, PipelineError, StageSpec};
pub use stage::{
    InputDecl, ParamDef, ParamType, Params, Stage, StageContext, StageError, StageRegistry,
};
pub use table::{TableError, TableSchema, TableWriter};
