//! mg3d-report: radiology report knowledge with exact character offsets.
//!
//! - [`text`]: sentence and clause segmentation (byte ranges into the original text).
//! - [`reports`]: the `reports` stage (CT-RATE or mapped CSV/JSONL -> reports, sections, sentences,
//!   clauses, rejects).
//! - [`hf_tokenizer`]: Hugging Face tokenizer folders, `tokenizer.json` or BERT's `vocab.txt`.
//! - [`error`]: [`ReportError`], what the stages and their functions return.

pub mod entities;
pub mod entities_stage;
pub mod error;
pub mod evalset;
pub mod hf_tokenizer;
pub mod reports;
pub mod text;
pub mod tokens;
mod wording;

pub use error::ReportError;
