//! New scans through a trained model (`mg3d embed`, `mg3d predict`): each DICOM series folder or
//! NIfTI file goes through ingest's and preprocess's code ([`mg3d_ingest::scan`]) with the preset
//! the model's volumes were made with, then into the shards' volume field as the model was
//! trained on it, then through the frozen image encoder, so that a scan of the corpus gets the
//! features the eval stage computes for it.

use std::path::Path;

use mg3d_ingest::preprocess::{Preset, load_preset};
use mg3d_ingest::scan::{ScanOptions, preprocess_scan, read_scan};
use mg3d_shard::reader::TensorBuf;
use mg3d_train::stage::{ModelVolume, TrainedModel};
use mg3d_volume::Reject;
use tch::Tensor;

use crate::EvalError;
use crate::features::rows;

/// A scan ready for the model.
pub struct PreparedScan {
    /// What its pseudonym is keyed from (see [`mg3d_ingest::scan::Scan::source_key`]).
    pub source_key: String,
    /// `dicom`, `nifti` or `ct-rate`.
    pub source_kind: &'static str,
    /// Content hash of its preprocessed int16 voxels.
    pub preprocess_hash: String,
    field: TensorBuf,
}

/// Reads scans into a model's volume field (no model needed: shareable between threads).
pub struct ScanReader {
    preset: Preset,
    volume: ModelVolume,
    options: ScanOptions,
}

impl ScanReader {
    /// Reads and preprocesses one scan; a scan the pipeline would reject is a reject here.
    pub fn prepare(&self, path: &Path) -> Result<PreparedScan, Reject> {
        let scan = read_scan(path, &self.options)?;
        let (pre, preprocess_hash) = preprocess_scan(&scan.volume, &self.preset)?;
        drop(scan.volume);
        Ok(PreparedScan {
            source_key: scan.source_key,
            source_kind: scan.source_kind,
            preprocess_hash,
            field: mg3d_shard::volume_field(&pre, &self.volume.spec, self.volume.dtype),
        })
    }
}

/// Turns scans into a trained model's frozen image features.
pub struct ScanEncoder<'a> {
    model: &'a TrainedModel,
    reader: ScanReader,
}

impl<'a> ScanEncoder<'a> {
    /// An encoder for `model` (loaded from `dir`), reading NIfTI files with `options`.
    pub fn new(
        model: &'a TrainedModel,
        dir: &Path,
        options: ScanOptions,
    ) -> Result<ScanEncoder<'a>, EvalError> {
        let volume = model.volume.clone();
        let Some((volume, preset)) = volume.and_then(|v| v.spec.preset.clone().map(|p| (v, p)))
        else {
            return Err(EvalError::NoPreset(dir.to_path_buf()));
        };
        Ok(ScanEncoder {
            model,
            reader: ScanReader {
                preset: load_preset(&preset)?,
                volume,
                options,
            },
        })
    }

    /// The scan reader (preprocessing as the model's volumes were).
    pub fn reader(&self) -> &ScanReader {
        &self.reader
    }

    /// The frozen image features of prepared scans, one row each, computed as one batch.
    pub fn features(&self, scans: &[&PreparedScan]) -> Vec<Vec<f32>> {
        if scans.is_empty() {
            return vec![];
        }
        let batch: Vec<Tensor> = scans
            .iter()
            .map(|s| {
                let shape: Vec<i64> = s.field.shape.iter().map(|&d| d as i64).collect();
                Tensor::from_slice(&s.field.to_f32()).view(shape.as_slice())
            })
            .collect();
        let x = mg3d_train::trainer::fit(&Tensor::cat(&batch, 0), self.model.input)
            .to_device(self.model.model.device());
        rows(&tch::no_grad(|| self.model.model.image_features(&x)))
    }
}
