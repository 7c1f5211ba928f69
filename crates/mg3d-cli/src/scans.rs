//! The arguments of `mg3d embed` and `mg3d predict` (new scans through a trained or evaluated
//! model; the work itself is in `mg3d-torch`), and the salt their ids are keyed with.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

/// What `embed` and `predict` share: the scans and how to read them.
#[derive(Args, Debug, Clone)]
pub struct ScanArgs {
    /// DICOM series folders and NIfTI files (.nii, .nii.gz).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// CT-RATE metadata CSVs giving NIfTI files their rescale and spacing (as ingest's
    /// ctrate_metadata).
    #[arg(long)]
    pub ctrate_metadata: Vec<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Scans encoded at once.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Key the output's volume pseudonyms with this pipeline's salt (so that a DICOM series gets
    /// the volume_id the pipeline gives it).
    #[arg(long, conflicts_with = "salt_env")]
    pub pipeline: Option<PathBuf>,
    /// Else the environment variable holding the salt.
    #[arg(long, default_value = "MG3D_SALT")]
    pub salt_env: String,
}

/// The arguments of `mg3d embed`.
#[derive(Args, Debug, Clone)]
pub struct EmbedArgs {
    /// The scans.
    #[command(flatten)]
    pub scans: ScanArgs,
    /// A model folder: the train stage's output, or an eval output's predictor/model.
    #[arg(long)]
    pub model: PathBuf,
    /// Output: .parquet (table `embeddings`, `mg3d schema embeddings`) or .safetensors (tensor
    /// `features`, N x F; ids, sources and hashes in the header's metadata).
    #[arg(long)]
    pub out: PathBuf,
}

/// The arguments of `mg3d predict`.
#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    /// The scans.
    #[command(flatten)]
    pub scans: ScanArgs,
    /// The eval stage's output (its predictor/ folder), or a copy of that folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Nearest training reports to list per scan.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Also write the predictions as Parquet (table `predictions`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The salt of `--pipeline`, else of `--salt-env`'s variable.
pub(crate) fn salt(a: &ScanArgs, reg: &mg3d_core::StageRegistry) -> Result<String> {
    if let Some(p) = &a.pipeline {
        return Ok(mg3d_core::Pipeline::load(p, reg)?.salt);
    }
    match std::env::var(&a.salt_env) {
        Ok(s) if !s.is_empty() => Ok(s),
        _ => bail!(
            "volume ids are keyed hashes: give --pipeline FILE (its salt) or set ${} to the salt",
            a.salt_env
        ),
    }
}
