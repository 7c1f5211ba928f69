//! The rows ingest writes (volumes.parquet, rejects.parquet) and their tables.

use super::*;

/// One volumes.parquet row (also the per-item result).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRow {
    /// Keyed pseudonym of the volume's source identity (SeriesInstanceUID or relative file path).
    pub volume_id: String,
    /// Keyed pseudonym of the patient (DICOM PatientID, or the CT-RATE train_<n> prefix).
    pub patient_id: String,
    /// Keyed pseudonym of the study (StudyInstanceUID, or CT-RATE train_<n>_<scan>).
    pub study_id: String,
    /// Pseudonym (namespace "report") of the source report id (CT-RATE VolumeName from the file
    /// name, or the accession map's id); equals reports.report_id of its report; null if unknown.
    pub report_key: Option<String>,
    /// dicom | nifti | ct-rate.
    pub source_kind: String,
    /// Which configured source (e.g. dicom_roots[0]); never a path.
    pub source_root: String,
    /// Keyed hash of the relative source path (folder or file), to find it again with the salt.
    pub source_ref: String,
    /// Input files making up the volume.
    pub n_files: i32,
    /// DICOM Modality (CT for NIfTI sources).
    pub modality: String,
    /// DICOM transfer syntax UID (null for NIfTI).
    pub transfer_syntax: Option<String>,
    /// Voxels along i, j, k.
    pub dims: [i32; 3],
    /// Voxel spacing along i, j, k (mm).
    pub spacing_mm: [f64; 3],
    /// Voxel (i,j,k) -> RAS mm, row-major 4x4 (nibabel's convention).
    pub affine_ras: [f64; 16],
    /// Orientation codes of the source grid (nibabel aff2axcodes), e.g. LPS.
    pub axcodes: String,
    /// Rescale slope applied (null when none).
    pub slope: Option<f64>,
    /// Rescale intercept applied (null when none).
    pub intercept: Option<f64>,
    /// How values became HU, exactly once: dicom_rescale | nifti_scl | ctrate_metadata | already_hu
    /// | none.
    pub hu_applied: String,
    /// Why that choice (e.g. 'min -1024 < 0 with intercept -1024: values are already HU').
    pub hu_evidence: String,
    /// Minimum value after conversion.
    pub hu_min: f64,
    /// Maximum value after conversion.
    pub hu_max: f64,
    /// Mean value after conversion.
    pub hu_mean: f64,
    /// PatientSex (allowed metadata).
    pub sex: Option<String>,
    /// Age in 10-year buckets ('60-69'), 90+ collapsed.
    pub age_bucket: Option<String>,
    /// Scanner manufacturer (allowed metadata).
    pub manufacturer: Option<String>,
    /// Scanner model (allowed metadata).
    pub model: Option<String>,
    /// Reconstruction kernel (allowed metadata).
    pub kernel: Option<String>,
    /// SliceThickness tag / metadata (allowed metadata).
    pub slice_thickness_mm: Option<f64>,
    /// Things noticed and handled (padding, MONOCHROME1, spacing vs thickness, metadata
    /// disagreements).
    pub warnings: Vec<String>,
    /// The HU volume in this stage's output (volumes/<volume_id>.nii.gz, int16).
    pub volume_file: String,
    /// blake3 of the HU voxels (int16 LE, (k,j,i) order).
    pub content_hash: String,
}

/// One rejects.parquet row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectRow {
    /// Stage that rejected it (ingest, reports, ...).
    pub stage: String,
    /// Which configured source (e.g. nifti_roots[0]).
    pub source_root: String,
    /// Where the input is, when that cannot identify anyone: "row N" for report rows; empty for
    /// ingest, whose folder and file names can (`mg3d locate PIPELINE PATH_REF` prints the path on
    /// the machine holding the inputs).
    pub path: String,
    /// Keyed hash of the unredacted relative path.
    pub path_ref: String,
    /// file | series | row.
    pub level: String,
    /// Input files covered by this row (a series counts its files).
    pub n_files: i32,
    /// Stable reason code, e.g. series_missing_slice (docs/ARCHITECTURE.md lists them).
    pub reason: String,
    /// What was found, naming no input path (files of a series as "file N") and with identifying
    /// values seen in the inputs replaced by [redacted].
    pub message: String,
}

pub(crate) fn empty_row() -> VolumeRow {
    VolumeRow {
        volume_id: String::new(),
        patient_id: String::new(),
        study_id: String::new(),
        report_key: None,
        source_kind: String::new(),
        source_root: String::new(),
        source_ref: String::new(),
        n_files: 0,
        modality: String::new(),
        transfer_syntax: None,
        dims: [0; 3],
        spacing_mm: [0.0; 3],
        affine_ras: [0.0; 16],
        axcodes: String::new(),
        slope: None,
        intercept: None,
        hu_applied: String::new(),
        hu_evidence: String::new(),
        hu_min: 0.0,
        hu_max: 0.0,
        hu_mean: 0.0,
        sex: None,
        age_bucket: None,
        manufacturer: None,
        model: None,
        kernel: None,
        slice_thickness_mm: None,
        warnings: vec![],
        volume_file: String::new(),
        content_hash: String::new(),
    }
}

pub(crate) fn strings<'a>(v: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(v.collect::<StringArray>())
}

pub(crate) fn fixed_f64<const N: usize>(rows: impl Iterator<Item = [f64; N]>) -> ArrayRef {
    let mut b = FixedSizeListBuilder::new(Float64Builder::new(), N as i32);
    for r in rows {
        b.values().append_slice(&r);
        b.append(true);
    }
    Arc::new(b.finish())
}

pub(crate) fn write_volumes(path: &Path, v: &[VolumeRow]) -> Result<(), StageError> {
    let schema = TableSchema::get("volumes")?;
    let mut dims = FixedSizeListBuilder::new(Int32Builder::new(), 3);
    for r in v {
        dims.values().append_slice(&r.dims);
        dims.append(true);
    }
    let mut warnings = ListBuilder::new(StringBuilder::new());
    for r in v {
        for w in &r.warnings {
            warnings.values().append_value(w);
        }
        warnings.append(true);
    }
    let f64s = |f: &dyn Fn(&VolumeRow) -> Option<f64>| {
        Arc::new(v.iter().map(f).collect::<Float64Array>()) as ArrayRef
    };
    let cols: Vec<ArrayRef> = vec![
        strings(v.iter().map(|r| Some(r.volume_id.as_str()))),
        strings(v.iter().map(|r| Some(r.patient_id.as_str()))),
        strings(v.iter().map(|r| Some(r.study_id.as_str()))),
        strings(v.iter().map(|r| r.report_key.as_deref())),
        strings(v.iter().map(|r| Some(r.source_kind.as_str()))),
        strings(v.iter().map(|r| Some(r.source_root.as_str()))),
        strings(v.iter().map(|r| Some(r.source_ref.as_str()))),
        Arc::new(v.iter().map(|r| Some(r.n_files)).collect::<Int32Array>()),
        strings(v.iter().map(|r| Some(r.modality.as_str()))),
        strings(v.iter().map(|r| r.transfer_syntax.as_deref())),
        Arc::new(dims.finish()),
        fixed_f64(v.iter().map(|r| r.spacing_mm)),
        fixed_f64(v.iter().map(|r| r.affine_ras)),
        strings(v.iter().map(|r| Some(r.axcodes.as_str()))),
        f64s(&|r| r.slope),
        f64s(&|r| r.intercept),
        strings(v.iter().map(|r| Some(r.hu_applied.as_str()))),
        strings(v.iter().map(|r| Some(r.hu_evidence.as_str()))),
        f64s(&|r| Some(r.hu_min)),
        f64s(&|r| Some(r.hu_max)),
        f64s(&|r| Some(r.hu_mean)),
        strings(v.iter().map(|r| r.sex.as_deref())),
        strings(v.iter().map(|r| r.age_bucket.as_deref())),
        strings(v.iter().map(|r| r.manufacturer.as_deref())),
        strings(v.iter().map(|r| r.model.as_deref())),
        strings(v.iter().map(|r| r.kernel.as_deref())),
        f64s(&|r| r.slice_thickness_mm),
        Arc::new(warnings.finish()),
        strings(v.iter().map(|r| Some(r.volume_file.as_str()))),
        strings(v.iter().map(|r| Some(r.content_hash.as_str()))),
    ];
    write_columns(path, &schema, cols)?;
    Ok(())
}

pub(crate) fn write_rejects(path: &Path, v: &[RejectRow]) -> Result<(), StageError> {
    let schema = TableSchema::get("rejects")?;
    let cols: Vec<ArrayRef> = vec![
        strings(v.iter().map(|r| Some(r.stage.as_str()))),
        strings(v.iter().map(|r| Some(r.source_root.as_str()))),
        strings(v.iter().map(|r| Some(r.path.as_str()))),
        strings(v.iter().map(|r| Some(r.path_ref.as_str()))),
        strings(v.iter().map(|r| Some(r.level.as_str()))),
        Arc::new(v.iter().map(|r| Some(r.n_files)).collect::<Int32Array>()),
        strings(v.iter().map(|r| Some(r.reason.as_str()))),
        strings(v.iter().map(|r| Some(r.message.as_str()))),
    ];
    write_columns(path, &schema, cols)?;
    Ok(())
}
