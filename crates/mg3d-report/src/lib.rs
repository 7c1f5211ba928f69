//! mg3d-report: radiology report knowledge with exact character offsets.
//!
//! - [`text`]: sentence and clause segmentation (byte ranges into the original text).
//! - [`reports`]: the `reports` stage (CT-RATE or mapped CSV/JSONL -> reports, sections, sentences,
//!   clauses, rejects).
//! - [`error`]: [`ReportError`], what the stages and their functions return.

pub mod entities;
pub mod entities_stage;
pub mod error;
pub mod evalset;
pub mod reports;
pub mod text;
pub mod tokens;
mod wording;

pub use error::ReportError;
