//! One scan read outside a pipeline exactly as the pipeline reads it (`mg3d embed`,
//! `mg3d predict`): a DICOM series folder or a NIfTI file through ingest's code to its HU volume
//! as ingest stores it (int16, original grid), then through the preprocess code to the preset's
//! grid as preprocess stores it. Both int16 roundings happen in memory, through the same encoder
//! that writes the stages' files, so a scan's voxels equal the pipeline's for the same input.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mg3d_dicom::header::{checked_header, parse_header};
use mg3d_dicom::series::{SpacingRules, assemble, group_series};
use mg3d_volume::nifti_io::{NiftiReader, ReadOptions};
use mg3d_volume::nifti_write::EncodedI16;
use mg3d_volume::{Reject, Volume};

use crate::ingest::{nifti_hu, read_metadata};
use crate::preprocess::{Preset, apply_preset};
use crate::walk::{Found, Walker};
use mg3d_core::StageError;

/// How scans are read: the CT-RATE metadata rows (by `VolumeName`) that give NIfTI files their
/// rescale and spacing, as ingest's `ctrate_metadata`.
#[derive(Debug, Default, Clone)]
pub struct ScanOptions {
    metadata: HashMap<String, BTreeMap<String, String>>,
}

impl ScanOptions {
    /// Options with the rows of these CT-RATE metadata CSVs.
    pub fn with_ctrate_metadata(csvs: &[PathBuf]) -> Result<ScanOptions, StageError> {
        let mut metadata = HashMap::new();
        for path in csvs {
            read_metadata(path, &mut metadata)?;
        }
        Ok(ScanOptions { metadata })
    }
}

/// A scan as ingest keeps it.
#[derive(Debug)]
pub struct Scan {
    /// What ingest keys the volume's pseudonym from (namespace "volume"): the DICOM series key,
    /// or, for a NIfTI file, `nifti/<file name>` (ingest keys it from its root and relative path,
    /// which a lone file does not have).
    pub source_key: String,
    /// `dicom`, `nifti` or `ct-rate` (a NIfTI file with a metadata row).
    pub source_kind: &'static str,
    /// HU after ingest's int16 rounding, in the original grid.
    pub volume: Volume,
}

/// Reads a DICOM series folder (every file under it; exactly one image series) or a NIfTI file
/// (`.nii`, `.nii.gz`) as ingest does. A scan that ingest would reject is a reject here too.
pub fn read_scan(path: &Path, o: &ScanOptions) -> Result<Scan, Reject> {
    let guarded = std::panic::catch_unwind(|| read_scan_inner(path, o));
    let scan = guarded.unwrap_or_else(|_| Err(mg3d_volume::internal_error()))?;
    Ok(Scan {
        volume: round_trip_i16(&scan.volume)?,
        ..scan
    })
}

fn read_scan_inner(path: &Path, o: &ScanOptions) -> Result<Scan, Reject> {
    if path.is_dir() {
        return read_dicom_folder(path);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_lowercase();
    if !(lower.ends_with(".nii") || lower.ends_with(".nii.gz")) {
        return Err(Reject::new(
            "unsupported_input",
            "not a DICOM series folder nor a .nii/.nii.gz file",
        ));
    }
    let meta = o.metadata.get(&name);
    let (volume, _) = nifti_hu(NiftiReader::open(path)?, &ReadOptions::default(), meta)?;
    Ok(Scan {
        source_key: format!("nifti/{name}"),
        source_kind: if meta.is_some() { "ct-rate" } else { "nifti" },
        volume,
    })
}

fn read_dicom_folder(dir: &Path) -> Result<Scan, Reject> {
    let files = Walker::new()
        .walk(dir)
        .map_err(|e| Reject::new("unreadable", e.to_string()))?;
    // Files that are not DICOM images are not part of the series (as in ingest, where they are
    // rejects of their own).
    let headers = files
        .iter()
        .filter_map(|f| match f {
            Found::File(p) => parse_header(p).and_then(checked_header).ok(),
            Found::Skipped(..) => None,
        })
        .collect();
    let (groups, _) = group_series(headers);
    let g = match groups.as_slice() {
        [g] => g,
        [] => {
            return Err(Reject::new(
                "no_series",
                "no DICOM image series in the folder",
            ));
        }
        many => {
            return Err(Reject::new(
                "several_series",
                format!(
                    "{} image series in the folder ({} files): pass one series folder",
                    many.len(),
                    many.iter().map(|g| g.files.len()).sum::<usize>()
                ),
            ));
        }
    };
    let (volume, _) = assemble(g, &SpacingRules::default())?;
    volume.check_geometry()?;
    Ok(Scan {
        source_key: g.key.clone(),
        source_kind: "dicom",
        volume,
    })
}

/// The volume as the stages' int16 NIfTI files hold it: voxels rounded as they are written, the
/// affine as the header stores it.
pub fn round_trip_i16(v: &Volume) -> Result<Volume, Reject> {
    Ok(through_i16_file(v)?.0)
}

/// A scan on the preset's grid as preprocess stores it, with the content hash of its int16
/// voxels (`preprocessed.parquet`'s `content_hash` for the same input).
pub fn preprocess_scan(v: &Volume, preset: &Preset) -> Result<(Volume, String), Reject> {
    through_i16_file(&apply_preset(v, preset).0)
}

/// `v` written as the stages' int16 NIfTI file and read back, in memory; and the file's voxel hash.
fn through_i16_file(v: &Volume) -> Result<(Volume, String), Reject> {
    let file = EncodedI16::new(v);
    let hash = file.content_hash();
    let bytes: Arc<[u8]> = Arc::from(file.bytes());
    drop(file);
    let (out, _) =
        NiftiReader::from_bytes(bytes, "scan.nii".into())?.read(&ReadOptions::default())?;
    Ok((out, hash))
}
