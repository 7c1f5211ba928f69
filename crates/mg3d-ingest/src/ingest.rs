//! The `ingest` stage: DICOM roots, NIfTI roots and CT-RATE metadata into HU volumes in their
//! original grid (`volumes/<volume_id>.nii.gz`), `volumes.parquet` and `rejects.parquet`.
//! Every input file ends up in exactly one of them. Per-series / per-file work is keyed by content.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeListBuilder, Float64Array, Float64Builder, Int32Array, Int32Builder,
    ListBuilder, StringArray, StringBuilder,
};
use mg3d_core::stage::{InputDecl, ParamDef, ParamType, Params, Stage, StageContext, StageError};
use mg3d_core::table::{TableSchema, write_columns};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use mg3d_core::budget::ByteBudget;
use mg3d_core::phi::Phi;

use crate::walk::{Found, Walker};
use mg3d_dicom::header::{SliceHeader, checked_header, parse_header};
use mg3d_dicom::series::{SeriesGroup, SpacingRules, assemble, group_series};
use mg3d_volume::nifti_io::{NiftiReader, ReadOptions, write_nifti_i16};
use mg3d_volume::{Reject, Volume};

/// Stage kind `ingest`.
pub struct IngestStage;

#[derive(Deserialize)]
struct P {
    dicom_roots: Vec<String>,
    nifti_roots: Vec<String>,
    ctrate_metadata: Vec<String>,
    accession_map: String,
    modalities: Vec<String>,
    allowed_metadata: Vec<String>,
    first_of_4d: bool,
    max_in_flight: i64,
    memory_budget_mb: i64,
    max_volume_voxels: i64,
    allow_empty: bool,
}

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

#[derive(Serialize, Deserialize)]
enum ItemResult {
    Volume(Box<VolumeRow>),
    Reject(RejectRow),
}

impl ItemResult {
    /// Removes the values of `phi` from the texts a result carries (messages, warnings).
    fn scrub(&mut self, phi: &Phi) {
        match self {
            ItemResult::Volume(v) => v.warnings.iter_mut().for_each(|w| *w = phi.scrub(w)),
            ItemResult::Reject(r) => {
                r.path = phi.scrub(&r.path);
                r.message = phi.scrub(&r.message);
            }
        }
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// "063Y" -> "60-69"; 90 and over collapse to "90+" (HIPAA safe harbour).
pub fn age_bucket(age: &str) -> Option<String> {
    let t = age.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u32 = num.parse().ok()?;
    let years = match unit.trim() {
        "" | "Y" => n,
        "M" => n / 12,
        "W" => n / 52,
        "D" => n / 365,
        _ => return None,
    };
    Some(if years >= 90 {
        "90+".into()
    } else {
        format!("{}-{}", years / 10 * 10, years / 10 * 10 + 9)
    })
}

fn hash_i16(v: &Volume) -> String {
    let mut h = blake3::Hasher::new();
    for x in &v.data {
        h.update(&(x.round().clamp(-32768.0, 32767.0) as i16).to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

fn read_csv(path: &Path) -> Result<Vec<BTreeMap<String, String>>, StageError> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| StageError::ctx(path.display(), e))?;
    let headers = r
        .headers()
        .map_err(|e| StageError::ctx(path.display(), e))?
        .clone();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| StageError::ctx(path.display(), e))?;
        rows.push(
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect(),
        );
    }
    Ok(rows)
}

/// "[0.75, 0.75]" -> [0.75, 0.75]
fn parse_list(s: &str) -> Vec<f64> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect()
}

/// CT-RATE style ids from a VolumeName: (patient, study).
fn ctrate_ids(name: &str) -> Option<(String, String)> {
    let stem = name.trim_end_matches(".gz").trim_end_matches(".nii");
    let parts: Vec<&str> = stem.split('_').collect();
    if parts.len() >= 4
        && ["train", "valid", "test"].contains(&parts[0])
        && parts[1].chars().all(|c| c.is_ascii_digit())
    {
        return Some((
            format!("{}_{}", parts[0], parts[1]),
            format!("{}_{}_{}", parts[0], parts[1], parts[2]),
        ));
    }
    None
}

struct Ctx<'a> {
    ctx: &'a StageContext<'a>,
    p: &'a P,
    metadata: HashMap<String, BTreeMap<String, String>>,
    accession: HashMap<String, String>,
    rules: SpacingRules,
    budget: ByteBudget,
}

impl Ctx<'_> {
    fn reject(
        &self,
        root_label: &str,
        path: &str,
        level: &str,
        n_files: i32,
        r: &Reject,
    ) -> RejectRow {
        // Folder and file names can identify patients (`Surname_Name_MRN/`), so the path itself
        // never leaves ingest: `mg3d locate` turns path_ref back into it where the inputs live.
        RejectRow {
            stage: "ingest".into(),
            source_root: root_label.into(),
            path: String::new(),
            path_ref: self.ctx.pseudonym("path", &format!("{root_label}/{path}")),
            level: level.into(),
            n_files,
            reason: r.code.into(),
            message: r.message.clone(),
        }
    }

    /// A reject for `path` under `root`; the message names no path.
    fn reject_at(
        &self,
        root: &Path,
        label: &str,
        path: &Path,
        level: &str,
        n: i32,
        r: Reject,
    ) -> RejectRow {
        let r = Reject::new(r.code, without_paths(&r.message, root, &[path]));
        self.reject(label, &rel(root, path), level, n, &r)
    }

    /// Holds `bytes` of the memory budget, or says why the item cannot be read at all.
    fn reserve(
        &self,
        voxels: u64,
        bytes_per_voxel: u64,
    ) -> Result<mg3d_core::budget::Reservation<'_>, Reject> {
        let max = self.p.max_volume_voxels.max(1) as u64;
        if voxels > max {
            return Err(Reject::new(
                "volume_too_large",
                format!("{voxels} voxels, over max_volume_voxels = {max}"),
            ));
        }
        let bytes = voxels.saturating_mul(bytes_per_voxel);
        self.budget.reserve(bytes).ok_or_else(|| {
            Reject::new(
                "over_memory_budget",
                format!(
                    "needs about {} MB, more than memory_budget_mb = {}",
                    bytes >> 20,
                    self.budget.total() >> 20
                ),
            )
        })
    }

    fn finish_row(
        &self,
        dir: &Path,
        vol: &Volume,
        mut row: VolumeRow,
    ) -> Result<ItemResult, StageError> {
        // Only the metadata the pipeline allows leaves ingest.
        let allow = |k: &str| self.p.allowed_metadata.iter().any(|a| a == k);
        if !allow("sex") {
            row.sex = None;
        }
        if !allow("age_bucket") {
            row.age_bucket = None;
        }
        if !allow("manufacturer") {
            row.manufacturer = None;
        }
        if !allow("model") {
            row.model = None;
        }
        if !allow("kernel") {
            row.kernel = None;
        }
        if !allow("slice_thickness_mm") {
            row.slice_thickness_mm = None;
        }
        let st = vol.stats();
        row.dims = [vol.dims[0] as i32, vol.dims[1] as i32, vol.dims[2] as i32];
        row.spacing_mm = vol.spacing();
        row.affine_ras = std::array::from_fn(|i| vol.affine[i / 4][i % 4]);
        row.axcodes = vol.axcodes();
        row.hu_min = st.min;
        row.hu_max = st.max;
        row.hu_mean = st.mean;
        row.content_hash = hash_i16(vol);
        row.volume_file = format!("volumes/{}.nii.gz", row.volume_id);
        write_nifti_i16(&dir.join("volume.nii.gz"), vol).map_err(StageError::msg)?;
        Ok(ItemResult::Volume(Box::new(row)))
    }

    fn dicom_item(
        &self,
        root: &Path,
        label: &str,
        g: &SeriesGroup,
        dir: &Path,
    ) -> Result<ItemResult, StageError> {
        let h0 = &g.files[0];
        let folder = rel(root, h0.path.parent().unwrap_or(root));
        let n = g.files.len() as i32;
        let series_reject = |r: Reject| {
            let paths: Vec<&Path> = g.files.iter().map(|h| h.path.as_path()).collect();
            let r = Reject::new(r.code, without_paths(&r.message, root, &paths));
            Ok(ItemResult::Reject(
                self.reject(label, &folder, "series", n, &r),
            ))
        };
        // Stored values (f64) and HU (f32) of every plane are alive at once while assembling.
        let voxels: u64 = g
            .files
            .iter()
            .map(|h| h.rows as u64 * h.cols as u64 * h.frames.max(1) as u64)
            .sum();
        let _held = match self.reserve(voxels, 12) {
            Ok(h) => h,
            Err(r) => return series_reject(r),
        };
        let (vol, info) = match assemble(g, &self.rules).and_then(|(v, i)| {
            v.check_geometry()?;
            Ok((v, i))
        }) {
            Ok(v) => v,
            Err(r) => return series_reject(r),
        };
        let c = self.ctx;
        let series_uid = g.key.split('#').next().unwrap_or(&g.key);
        let pid = h0
            .patient_id
            .clone()
            .unwrap_or_else(|| h0.study_uid.clone());
        let has_rescale = h0.has_rescale
            || h0
                .frames_geo
                .iter()
                .any(|f| f.slope.is_some() || f.intercept.is_some());
        let hu_applied = if has_rescale { "dicom_rescale" } else { "none" };
        let row = VolumeRow {
            volume_id: c.pseudonym("volume", &g.key),
            patient_id: c.pseudonym("patient", &pid),
            study_id: c.pseudonym("study", &h0.study_uid),
            report_key: self
                .accession
                .get(series_uid)
                .map(|k| c.pseudonym("report", k)),
            source_kind: "dicom".into(),
            source_root: label.into(),
            source_ref: c.pseudonym("path", &format!("{label}/{folder}")),
            n_files: n,
            modality: h0.modality.clone(),
            transfer_syntax: Some(info.transfer_syntax.clone()),
            slope: Some(info.slope),
            intercept: Some(info.intercept),
            hu_applied: hu_applied.into(),
            hu_evidence: if has_rescale {
                format!(
                    "RescaleSlope {} / RescaleIntercept {} applied per slice{}",
                    info.slope,
                    info.intercept,
                    if info.rescale_varies {
                        " (varies between slices)"
                    } else {
                        ""
                    }
                )
            } else {
                "no RescaleSlope/RescaleIntercept in the headers".into()
            },
            sex: h0.allowed.get("PatientSex").cloned(),
            age_bucket: h0.allowed.get("PatientAge").and_then(|a| age_bucket(a)),
            manufacturer: h0.allowed.get("Manufacturer").cloned(),
            model: h0.allowed.get("ManufacturerModelName").cloned(),
            kernel: h0.allowed.get("ConvolutionKernel").cloned(),
            slice_thickness_mm: h0.slice_thickness,
            warnings: info.warnings.clone(),
            ..empty_row()
        };
        self.finish_row(dir, &vol, row)
    }

    fn nifti_item(
        &self,
        root: &Path,
        label: &str,
        path: &Path,
        dir: &Path,
    ) -> Result<ItemResult, StageError> {
        let rp = rel(root, path);
        let name = file_name(path);
        let file_reject = |r: Reject| {
            Ok(ItemResult::Reject(
                self.reject_at(root, label, path, "file", 1, r),
            ))
        };
        // The header's dims decide the memory before any voxel is read: f32 values plus the
        // int16 copy written out.
        let reader = match NiftiReader::open(path) {
            Ok(r) => r,
            Err(r) => return file_reject(r),
        };
        let voxels = reader.shape().spatial.iter().map(|&d| d as u64).product();
        let _held = match self.reserve(voxels, 6) {
            Ok(h) => h,
            Err(r) => return file_reject(r),
        };
        let opts = ReadOptions {
            first_of_4d: self.p.first_of_4d,
            max_voxels: self.p.max_volume_voxels.max(1) as u64,
        };
        let (mut vol, info) = match reader.read(&opts) {
            Ok(v) => v,
            Err(r) => return file_reject(r),
        };
        let mut warnings = Vec::new();
        if info.mm_per_unit != 1.0 {
            for row in vol.affine.iter_mut().take(3) {
                for x in row.iter_mut() {
                    *x *= info.mm_per_unit;
                }
            }
            warnings.push(format!(
                "xyzt_units gives {} mm per unit; the affine was converted to mm",
                info.mm_per_unit
            ));
        }
        let meta = self.metadata.get(&name);
        let num = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let (slope, intercept) = (num("RescaleSlope"), num("RescaleIntercept"));
        let (hu_applied, evidence, used) = if info.scaled {
            let note = if slope.is_some() {
                "; the metadata rescale is not applied again"
            } else {
                ""
            };
            (
                "nifti_scl",
                format!(
                    "header scl_slope {} / scl_inter {} applied by the reader{note}",
                    info.scl_slope, info.scl_inter
                ),
                Some((info.scl_slope, info.scl_inter)),
            )
        } else if let (Some(s), Some(i)) = (slope, intercept) {
            let st = vol.stats();
            if st.min < -200.0 && i < 0.0 {
                (
                    "already_hu",
                    format!(
                        "min {} < -200 while metadata intercept is {i}: values are already HU; metadata slope/intercept not applied",
                        st.min
                    ),
                    None,
                )
            } else {
                vol.data
                    .par_iter_mut()
                    .for_each(|x| *x = (*x as f64 * s + i) as f32);
                (
                    "ctrate_metadata",
                    format!(
                        "min {} >= -200: stored values; metadata RescaleSlope {s} / RescaleIntercept {i} applied",
                        st.min
                    ),
                    Some((s, i)),
                )
            }
        } else {
            (
                "none",
                "no scl in the header and no metadata rescale: values used as stored".to_string(),
                None,
            )
        };
        // Metadata spacing (CT-RATE): trust it over a header that disagrees, as the v2 repair does.
        if let Some(m) = meta {
            let xy = m
                .get("XYSpacing")
                .map(|s| parse_list(s))
                .unwrap_or_default();
            let z = m.get("ZSpacing").and_then(|s| s.trim().parse::<f64>().ok());
            if let (2, Some(z)) = (xy.len(), z) {
                let want = [xy[0], xy[1], z];
                let have = vol.spacing();
                let usable = |s: &[f64; 3]| {
                    s.iter().all(|v| {
                        (mg3d_volume::MIN_SPACING_MM..=mg3d_volume::MAX_SPACING_MM).contains(v)
                    })
                };
                if !usable(&want) {
                    return file_reject(Reject::new(
                        "geometry_invalid",
                        format!(
                            "metadata XYSpacing/ZSpacing {want:?} is not a plausible spacing in mm"
                        ),
                    ));
                }
                if !usable(&have) {
                    return file_reject(Reject::new(
                        "geometry_invalid",
                        format!(
                            "header spacing {have:?} cannot be rescaled to the metadata's {want:?}"
                        ),
                    ));
                }
                if (0..3).any(|a| (want[a] - have[a]).abs() > 0.01 * want[a]) {
                    warnings.push(format!(
                        "header spacing {have:?} differs from metadata {want:?}; metadata used"
                    ));
                    for c in 0..3 {
                        for r in 0..3 {
                            vol.affine[r][c] *= want[c] / have[c];
                        }
                    }
                }
            }
        } else if label.starts_with("nifti") && !self.metadata.is_empty() {
            warnings.push("no metadata row for this file".into());
        }
        if let Err(r) = vol.check_geometry() {
            return file_reject(r);
        }
        let c = self.ctx;
        let (patient, study) = ctrate_ids(&name).unwrap_or_else(|| (rp.clone(), rp.clone()));
        let row = VolumeRow {
            volume_id: c.pseudonym("volume", &format!("{label}/{rp}")),
            patient_id: c.pseudonym("patient", &patient),
            study_id: c.pseudonym("study", &study),
            report_key: Some(c.pseudonym("report", &name)),
            source_kind: if meta.is_some() { "ct-rate" } else { "nifti" }.into(),
            source_root: label.into(),
            source_ref: c.pseudonym("path", &format!("{label}/{rp}")),
            n_files: 1,
            modality: "CT".into(),
            slope: used.map(|u| u.0),
            intercept: used.map(|u| u.1),
            hu_applied: hu_applied.into(),
            hu_evidence: evidence,
            sex: meta
                .and_then(|m| m.get("PatientSex"))
                .cloned()
                .filter(|s| !s.is_empty()),
            age_bucket: meta
                .and_then(|m| m.get("PatientAge"))
                .and_then(|a| age_bucket(a)),
            manufacturer: meta
                .and_then(|m| m.get("Manufacturer"))
                .cloned()
                .filter(|s| !s.is_empty()),
            model: meta
                .and_then(|m| m.get("ManufacturerModelName"))
                .cloned()
                .filter(|s| !s.is_empty()),
            slice_thickness_mm: num("SliceThickness"),
            warnings,
            ..empty_row()
        };
        self.finish_row(dir, &vol, row)
    }
}

fn empty_row() -> VolumeRow {
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

fn file_digest(paths: &[&Path], root: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    for p in paths {
        h.update(rel(root, p).as_bytes());
        h.update(&[0]);
        h.update(mg3d_core::fsutil::hash_file(p)?.blake3.as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

impl Stage for IngestStage {
    fn kind(&self) -> &'static str {
        "ingest"
    }
    fn code_version(&self) -> &'static str {
        "2"
    }
    fn describe(&self) -> &'static str {
        "DICOM series, NIfTI files and CT-RATE metadata -> HU volumes (original grid), volumes.parquet, rejects.parquet"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![
            ParamDef::new(
                "dicom_roots",
                ParamType::List,
                json!([]),
                "folders scanned recursively for DICOM files (@stage/path = an input's output)",
            ),
            ParamDef::new(
                "nifti_roots",
                ParamType::List,
                json!([]),
                "folders scanned recursively for .nii/.nii.gz",
            ),
            ParamDef::new(
                "ctrate_metadata",
                ParamType::List,
                json!([]),
                "CT-RATE metadata CSVs (VolumeName, XYSpacing, ZSpacing, RescaleSlope, RescaleIntercept, ...)",
            ),
            ParamDef::new(
                "accession_map",
                ParamType::Str,
                json!(""),
                "CSV with SeriesInstanceUID and VolumeName columns, to key DICOM volumes to reports",
            ),
            ParamDef::new(
                "modalities",
                ParamType::List,
                json!(["CT"]),
                "DICOM modalities accepted",
            ),
            ParamDef::new(
                "allowed_metadata",
                ParamType::List,
                json!([
                    "sex",
                    "age_bucket",
                    "manufacturer",
                    "model",
                    "kernel",
                    "slice_thickness_mm"
                ]),
                "non-identifying metadata columns to fill (others stay null)",
            ),
            ParamDef::new(
                "first_of_4d",
                ParamType::Bool,
                json!(false),
                "take the first volume of 4D NIfTI instead of rejecting it",
            ),
            ParamDef::new(
                "max_in_flight",
                ParamType::Int,
                json!(4),
                "volumes decoded at once",
            ),
            ParamDef::new(
                "memory_budget_mb",
                ParamType::Int,
                json!(8192),
                "memory shared by the volumes decoded at once (estimated from headers before reading); a volume needing more alone is rejected (over_memory_budget)",
            ),
            ParamDef::new(
                "max_volume_voxels",
                ParamType::Int,
                json!(1i64 << 30),
                "largest volume accepted, in voxels (volume_too_large above it)",
            ),
            ParamDef::new(
                "allow_empty",
                ParamType::Bool,
                json!(false),
                "succeed with 0 volumes when the roots hold no files (otherwise an error: an empty or unmounted root)",
            ),
        ]
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "synth",
            required: false,
        }]
    }
    fn item_params(&self) -> Option<Vec<&'static str>> {
        Some(vec!["first_of_4d", "max_volume_voxels", "allowed_metadata"])
    }
    fn sources_fingerprint(&self, params: &Params) -> Result<Option<String>, StageError> {
        // Roots: the name and size of every file reached (content is hashed per item when it
        // runs). Metadata CSVs and the accession map: their content, since a same-length edit
        // changes volumes.
        let p: P = params.parse()?;
        let mut h = blake3::Hasher::new();
        let mut any = false;
        let external = |r: &&String| !r.is_empty() && !r.starts_with('@');
        let mut walker = Walker::new();
        for r in p.dicom_roots.iter().chain(&p.nifti_roots).filter(external) {
            any = true;
            let root = PathBuf::from(r);
            h.update(r.as_bytes());
            for f in walker.walk(&root).map_err(|e| StageError::ctx(r, e))? {
                h.update(rel(&root, f.path()).as_bytes());
                let len = std::fs::metadata(f.path())
                    .map(|m| m.len())
                    .unwrap_or(u64::MAX);
                h.update(&len.to_le_bytes());
            }
        }
        for r in p
            .ctrate_metadata
            .iter()
            .chain(std::iter::once(&p.accession_map))
            .filter(external)
        {
            any = true;
            let d =
                mg3d_core::fsutil::hash_file(Path::new(r)).map_err(|e| StageError::ctx(r, e))?;
            h.update(d.blake3.as_bytes());
        }
        Ok(any.then(|| h.finalize().to_hex().to_string()))
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: P = ctx.params.parse()?;
        const KNOWN: [&str; 6] = [
            "sex",
            "age_bucket",
            "manufacturer",
            "model",
            "kernel",
            "slice_thickness_mm",
        ];
        if let Some(bad) = p
            .allowed_metadata
            .iter()
            .find(|a| !KNOWN.contains(&a.as_str()))
        {
            return Err(StageError::msg(format!(
                "allowed_metadata: unknown field {bad:?}; allowed fields are {}",
                KNOWN.join(", ")
            )));
        }
        let mut metadata = HashMap::new();
        for m in &p.ctrate_metadata {
            for row in read_csv(&ctx.resolve(m)?)? {
                if let Some(n) = row.get("VolumeName") {
                    metadata.insert(n.clone(), row.clone());
                }
            }
        }
        let mut accession = HashMap::new();
        if !p.accession_map.is_empty() {
            for row in read_csv(&ctx.resolve(&p.accession_map)?)? {
                if let (Some(s), Some(v)) = (row.get("SeriesInstanceUID"), row.get("VolumeName")) {
                    accession.insert(s.clone(), v.clone());
                }
            }
        }
        let budget_mb = p.memory_budget_mb.max(1) as u64;
        let c = Ctx {
            ctx,
            p: &p,
            metadata,
            accession,
            rules: SpacingRules::default(),
            budget: ByteBudget::new(budget_mb << 20),
        };
        let mut out = Collected::default();
        for k in c.accession.values() {
            out.phi.add_value(k);
        }
        let mut walker = Walker::new();
        for (ri, r) in p.dicom_roots.iter().enumerate() {
            let label = format!("dicom_roots[{ri}]");
            let root = ctx.resolve(r)?;
            let files = c.walk_root(&mut walker, &root, &label, &mut out)?;
            c.dicom_root(&root, &label, files, &mut out)?;
        }
        for (ri, r) in p.nifti_roots.iter().enumerate() {
            let label = format!("nifti_roots[{ri}]");
            let root = ctx.resolve(r)?;
            let files = c.walk_root(&mut walker, &root, &label, &mut out)?;
            c.nifti_root(&root, &label, files, &mut out)?;
        }
        // Every file found becomes a result (a reject, or part of a volume).
        if out.results.is_empty() && !p.allow_empty {
            return Err(StageError::msg(format!(
                "no input files under dicom_roots {:?} or nifti_roots {:?}: check that they are the right folders and are mounted, or set allow_empty = true",
                p.dicom_roots, p.nifti_roots
            )));
        }
        out.finish(ctx)
    }
}

/// What the roots produced so far: item results, the volume files to place, identifying values.
#[derive(Default)]
struct Collected {
    /// Each result with its item directory (where a volume's file is).
    results: Vec<(ItemResult, Option<PathBuf>)>,
    /// Every identifying value seen: header values, input paths, the accession map's keys.
    phi: Phi,
}

impl Collected {
    fn push(&mut self, res: ItemResult, dir: Option<PathBuf>) {
        self.results.push((res, dir));
    }

    /// Places the volumes, scrubs, sorts and writes both tables; returns the summary.
    fn finish(self, ctx: &StageContext) -> Result<Value, StageError> {
        let (mut vols, mut rejects): (Vec<VolumeRow>, Vec<RejectRow>) = (vec![], vec![]);
        let mut placed: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (mut r, dir) in self.results {
            // Items were scrubbed of their own values; a value seen in another item (a name in
            // one series' header, quoted by another's message) is removed here.
            r.scrub(&self.phi);
            match r {
                // The same series under two roots (or copied twice) is one volume; the later
                // copy is a reject, never a second writer of the same file.
                ItemResult::Volume(v) if placed.contains_key(&v.volume_id) => {
                    rejects.push(RejectRow {
                        stage: "ingest".into(),
                        source_root: v.source_root.clone(),
                        path: String::new(),
                        path_ref: v.source_ref.clone(),
                        level: "series".into(),
                        n_files: v.n_files,
                        reason: "duplicate_volume".into(),
                        message: "the same volume was already read from another path or root"
                            .into(),
                    });
                }
                ItemResult::Volume(v) => {
                    let dir = dir.ok_or_else(|| StageError::msg("a volume without its item"))?;
                    placed.insert(v.volume_id.clone(), dir);
                    vols.push(*v);
                }
                ItemResult::Reject(r) => rejects.push(r),
            }
        }
        std::fs::create_dir_all(ctx.out_dir.join("volumes"))?;
        for v in &vols {
            let src = placed[&v.volume_id].join("volume.nii.gz");
            mg3d_core::fsutil::link_or_copy(&src, &ctx.out_dir.join(&v.volume_file))?;
        }
        vols.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        rejects.sort_by(|a, b| {
            (&a.source_root, &a.path_ref, &a.reason).cmp(&(&b.source_root, &b.path_ref, &b.reason))
        });
        write_volumes(&ctx.out_dir.join("volumes.parquet"), &vols)?;
        write_rejects(&ctx.out_dir.join("rejects.parquet"), &rejects)?;
        let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
        for r in &rejects {
            *by_reason.entry(r.reason.clone()).or_default() += 1;
        }
        Ok(
            json!({"volumes": vols.len(), "rejects": rejects.len(), "files_in_volumes": vols.iter().map(|v| v.n_files as i64).sum::<i64>(), "rejects_by_reason": by_reason}),
        )
    }
}

/// A reader's message with the input paths it may quote replaced: each of `paths` by "file N"
/// (its index in the item, so a series message still tells which slices), anything else under
/// `root` by "[path]".
fn without_paths(msg: &str, root: &Path, paths: &[&Path]) -> String {
    let mut out = msg.to_string();
    let mut named: Vec<(String, usize)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.display().to_string(), i))
        .collect();
    named.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (p, i) in named {
        if !p.is_empty() && out.contains(&p) {
            let label = if paths.len() == 1 {
                "the file".to_string()
            } else {
                format!("file {}", i + 1)
            };
            out = out.replace(&p, &label);
        }
    }
    let root = root.display().to_string();
    if root.is_empty() {
        return out;
    }
    let (mut done, mut rest) = (String::new(), out.as_str());
    while let Some(at) = rest.find(&root) {
        done.push_str(&rest[..at]);
        done.push_str("[path]");
        let tail = &rest[at + root.len()..];
        rest = &tail[tail.find([':', ' ', ',', ')']).unwrap_or(tail.len())..];
    }
    done.push_str(rest);
    done
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Ctx<'_> {
    /// The files under one root; what cannot be read as a file becomes a reject now.
    fn walk_root(
        &self,
        walker: &mut Walker,
        root: &Path,
        label: &str,
        out: &mut Collected,
    ) -> Result<Vec<PathBuf>, StageError> {
        let found = walker
            .walk(root)
            .map_err(|e| StageError::ctx(format!("{label} {}", root.display()), e))?;
        let mut files = Vec::new();
        for f in found {
            let p = match &f {
                Found::File(p) | Found::Skipped(p, ..) => p,
            };
            out.phi.add_path(Path::new(&rel(root, p)));
            match f {
                Found::File(p) => files.push(p),
                Found::Skipped(p, code, msg) => out.push(
                    ItemResult::Reject(self.reject_at(
                        root,
                        label,
                        &p,
                        "file",
                        1,
                        Reject::new(code, msg),
                    )),
                    None,
                ),
            }
        }
        Ok(files)
    }

    /// Reads one item through the item store: reused when its key is unchanged, else made now.
    /// A panic in `make` becomes the item's reject (`on_panic`), not the stage's failure.
    /// The result is scrubbed of the item's own identifying values (`phi`) before it is stored.
    fn stored_item(
        &self,
        key: &str,
        phi: &Phi,
        on_panic: impl FnOnce() -> RejectRow,
        make: impl FnOnce(&Path) -> Result<ItemResult, StageError>,
    ) -> Result<(ItemResult, Option<PathBuf>), StageError> {
        let o = self.ctx.items().get_or_make::<StageError>(key, |dir| {
            let mut res =
                mg3d_volume::catch_panic(|| make(dir), |_| Ok(ItemResult::Reject(on_panic())))?;
            res.scrub(phi);
            let json = serde_json::to_vec(&res).map_err(|e| StageError::msg(e.to_string()))?;
            std::fs::write(dir.join("result.json"), json)?;
            Ok(())
        })?;
        let res: ItemResult = serde_json::from_slice(&std::fs::read(o.dir().join("result.json"))?)
            .map_err(|e| StageError::ctx(o.dir().display(), e))?;
        Ok((res, Some(o.dir().to_path_buf())))
    }

    fn dicom_root(
        &self,
        root: &Path,
        label: &str,
        files: Vec<PathBuf>,
        out: &mut Collected,
    ) -> Result<(), StageError> {
        let ctx = self.ctx;
        let p = self.p;
        let pb = ctx.progress_bar(files.len() as u64, "DICOM headers");
        let headers: Vec<Result<SliceHeader, Reject>> = files
            .par_iter()
            .map(|f| {
                let h = mg3d_volume::catch_panic(|| parse_header(f), Err);
                pb.inc(1);
                h
            })
            .collect();
        pb.finish_and_clear();
        let mut ok = Vec::new();
        // A series must not lose a slice silently to a file-level reject. Files whose header
        // parsed but that cannot be read (truncated, oversized) name their series and instance;
        // for the others only their folder is known.
        let mut lost: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut unreadable: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for (f, h) in files.iter().zip(headers) {
            let h = match h.map(|h| (h.series_uid.clone(), h.sop_uid.clone(), checked_header(h))) {
                Ok((series, sop, Err(r))) => {
                    lost.entry(series).or_default().insert(sop);
                    Err(r)
                }
                Ok((.., Ok(h))) => Ok(h),
                Err(r) => {
                    if !matches!(r.code, "not_dicom" | "empty_file") {
                        *unreadable
                            .entry(f.parent().unwrap_or(root).to_path_buf())
                            .or_default() += 1;
                    }
                    Err(r)
                }
            };
            match h {
                Ok(h) => {
                    out.phi.extend(&h.phi);
                    if !p.modalities.is_empty() && !p.modalities.contains(&h.modality) {
                        let r = Reject::new(
                            "modality_not_allowed",
                            format!("Modality {:?} not in {:?}", h.modality, p.modalities),
                        );
                        out.push(
                            ItemResult::Reject(self.reject_at(root, label, f, "file", 1, r)),
                            None,
                        );
                    } else {
                        ok.push(h);
                    }
                }
                Err(r) => out.push(
                    ItemResult::Reject(self.reject_at(root, label, f, "file", 1, r)),
                    None,
                ),
            }
        }
        let (groups, rejs) = group_series(ok);
        for (f, r) in rejs {
            out.push(
                ItemResult::Reject(self.reject_at(root, label, &f, "file", 1, r)),
                None,
            );
        }
        let mut series_in: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for g in &groups {
            *series_in
                .entry(g.files[0].path.parent().unwrap_or(root).to_path_buf())
                .or_default() += 1;
        }
        self.in_batches(&groups, "series", out, |g| {
            let paths: Vec<&Path> = g.files.iter().map(|h| h.path.as_path()).collect();
            // The report key the accession map gives this series is part of its result.
            let series_uid = g.key.split('#').next().unwrap_or(&g.key);
            let digest = format!(
                "{}|{:?}",
                file_digest(&paths, root)?,
                self.accession.get(series_uid)
            );
            let key = ctx.items().key(&g.key, &digest);
            let folder = rel(root, g.files[0].path.parent().unwrap_or(root));
            let n = g.files.len() as i32;
            let mut phi = Phi::new();
            for h in &g.files {
                phi.extend(&h.phi);
                phi.add_path(Path::new(&rel(root, &h.path)));
            }
            let (mut res, dir) = self.stored_item(
                &key,
                &phi,
                || self.reject(label, &folder, "series", n, &mg3d_volume::internal_error()),
                |dir| self.dicom_item(root, label, g, dir),
            )?;
            let parent = g.files[0].path.parent().unwrap_or(root);
            let ItemResult::Volume(v) = &mut res else {
                return Ok((res, dir));
            };
            // An unreadable copy of a slice the series has is no loss.
            let missing = lost.get(series_uid).map_or(0, |sops| {
                sops.iter()
                    .filter(|s| !g.files.iter().any(|h| &h.sop_uid == *s))
                    .count()
            });
            if missing > 0 {
                let r = Reject::new(
                    "series_incomplete",
                    format!("{missing} slice file(s) of this series could not be read"),
                );
                return Ok((
                    ItemResult::Reject(self.reject(label, &folder, "series", n, &r)),
                    None,
                ));
            }
            if let Some(&bad) = unreadable.get(parent) {
                let m = format!(
                    "{bad} DICOM file(s) in the series' folder could not be read: the series may be missing those slices"
                );
                if series_in.get(parent) == Some(&1) {
                    // The folder's only series: the unreadable files are almost surely its own.
                    let r = Reject::new("series_incomplete", m);
                    return Ok((
                        ItemResult::Reject(self.reject(label, &folder, "series", n, &r)),
                        None,
                    ));
                }
                v.warnings.push(m);
            }
            Ok((res, dir))
        })
    }

    fn nifti_root(
        &self,
        root: &Path,
        label: &str,
        files: Vec<PathBuf>,
        out: &mut Collected,
    ) -> Result<(), StageError> {
        self.in_batches(&files, "NIfTI files", out, |f| {
            let name = file_name(f);
            if !(name.ends_with(".nii") || name.ends_with(".nii.gz")) {
                let r = Reject::new("not_nifti", "file name does not end in .nii or .nii.gz");
                return Ok((
                    ItemResult::Reject(self.reject_at(root, label, f, "file", 1, r)),
                    None,
                ));
            }
            let meta = self
                .metadata
                .get(&name)
                .map(|m| serde_json::to_string(m).unwrap_or_default())
                .unwrap_or_default();
            let digest = format!(
                "{}|{}",
                file_digest(&[f.as_path()], root)?,
                blake3::hash(meta.as_bytes()).to_hex()
            );
            let key = self
                .ctx
                .items()
                .key(&format!("{label}/{}", rel(root, f)), &digest);
            let mut phi = Phi::new();
            phi.add_path(Path::new(&rel(root, f)));
            self.stored_item(
                &key,
                &phi,
                || self.reject_at(root, label, f, "file", 1, mg3d_volume::internal_error()),
                |dir| self.nifti_item(root, label, f, dir),
            )
        })
    }

    /// Runs `work` on `items`, `max_in_flight` at a time in parallel, with a progress bar and a
    /// cancellation check between batches; collects the results in item order.
    fn in_batches<T: Sync>(
        &self,
        items: &[T],
        what: &str,
        out: &mut Collected,
        work: impl Fn(&T) -> Result<(ItemResult, Option<PathBuf>), StageError> + Sync,
    ) -> Result<(), StageError> {
        let pb = self.ctx.progress_bar(items.len() as u64, what);
        for batch in items.chunks(self.p.max_in_flight.max(1) as usize) {
            self.ctx.check_cancelled()?;
            let done: Vec<_> = batch
                .par_iter()
                .map(|it| {
                    let r = work(it);
                    pb.inc(1);
                    r
                })
                .collect();
            for r in done {
                let (res, dir) = r?;
                out.push(res, dir);
            }
        }
        pb.finish_and_clear();
        Ok(())
    }
}

/// The input paths behind reject `path_ref`s of an ingest stage: walks its roots (`resolve` turns
/// a root param, including `@stage/...`, into a folder) and returns (ref, path) for each match. For
/// the operator's terminal only: the paths are what outputs must not hold.
pub fn locate(
    params: &Params,
    salt: &str,
    resolve: impl Fn(&str) -> PathBuf,
    refs: &[String],
) -> Result<Vec<(String, PathBuf)>, StageError> {
    let p: P = params.parse()?;
    let mut out = Vec::new();
    let mut walker = Walker::new();
    let roots = p
        .dicom_roots
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("dicom_roots[{i}]"), r))
        .chain(
            p.nifti_roots
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("nifti_roots[{i}]"), r)),
        );
    for (label, r) in roots {
        let root = resolve(r);
        let mut seen = BTreeSet::new();
        for f in walker.walk(&root).map_err(|e| StageError::ctx(r, e))? {
            // A file's own ref, and its folder's (series rejects name the folder).
            let folder = f.path().parent().unwrap_or(&root).to_path_buf();
            for cand in [f.path().to_path_buf(), folder] {
                let id = mg3d_core::ids::pseudonym(
                    salt,
                    "path",
                    &format!("{label}/{}", rel(&root, &cand)),
                );
                if refs.contains(&id) && seen.insert(cand.clone()) {
                    out.push((id, cand));
                }
            }
        }
    }
    Ok(out)
}

fn strings<'a>(v: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(v.collect::<StringArray>())
}

fn fixed_f64<const N: usize>(rows: impl Iterator<Item = [f64; N]>) -> ArrayRef {
    let mut b = FixedSizeListBuilder::new(Float64Builder::new(), N as i32);
    for r in rows {
        b.values().append_slice(&r);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn write_volumes(path: &Path, v: &[VolumeRow]) -> Result<(), StageError> {
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

fn write_rejects(path: &Path, v: &[RejectRow]) -> Result<(), StageError> {
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
