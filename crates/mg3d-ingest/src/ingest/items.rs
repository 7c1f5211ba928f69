//! One item of ingest: a DICOM series or a NIfTI file to a volume row and its volume file, or
//! to a reject row.

use super::*;

impl Ctx<'_> {
    pub(crate) fn reject(
        &self,
        root_label: &str,
        path: &str,
        level: &str,
        n_files: i32,
        r: &Reject,
    ) -> RejectsRow {
        // Folder and file names can identify patients (`Surname_Name_MRN/`), so the path itself
        // never leaves ingest: `mg3d locate` turns path_ref back into it where the inputs live.
        RejectsRow {
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
    pub(crate) fn reject_at(
        &self,
        root: &Path,
        label: &str,
        path: &Path,
        level: &str,
        n: i32,
        r: Reject,
    ) -> RejectsRow {
        let r = Reject::new(r.code, without_paths(&r.message, root, &[path]));
        self.reject(label, &rel(root, path), level, n, &r)
    }

    /// Holds `bytes` of the memory budget, or says why the item cannot be read at all.
    pub(crate) fn reserve(
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

    /// Fills the row's geometry, statistics and hash from `vol` and writes its file; the volume is
    /// dropped before the file is compressed (the two would otherwise be held together).
    pub(crate) fn finish_row(
        &self,
        dir: &Path,
        vol: Volume,
        mut row: VolumesRow,
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
        let file = EncodedI16::new(&vol);
        drop(vol);
        row.content_hash = file.content_hash();
        row.volume_file = format!("volumes/{}.nii.gz", row.volume_id);
        file.write(&dir.join("volume.nii.gz"), FileCompression::Gzip(1))
            .map_err(IngestError::from)?;
        Ok(ItemResult::Volume(Box::new(row)))
    }

    pub(crate) fn dicom_item(
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
        // The HU volume (f32), then its int16 file and the compressed copy (2 + at most 2).
        let voxels: u64 = g
            .files
            .iter()
            .map(|h| h.rows as u64 * h.cols as u64 * h.frames.max(1) as u64)
            .sum();
        let _held = match self.reserve(voxels, 8) {
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
        let row = VolumesRow {
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
            ..VolumesRow::default()
        };
        self.finish_row(dir, vol, row)
    }

    pub(crate) fn nifti_item(
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
        // The header's dims decide the memory before any voxel is read: the file whole and
        // inflated (about 3 bytes a voxel for int16 data) with the f32 values, then the int16
        // file written out and its compressed copy.
        let reader = match NiftiReader::open(path) {
            Ok(r) => r,
            Err(r) => return file_reject(r),
        };
        let voxels = reader.shape().spatial.iter().map(|&d| d as u64).product();
        let _held = match self.reserve(voxels, 8) {
            Ok(h) => h,
            Err(r) => return file_reject(r),
        };
        let opts = ReadOptions {
            first_of_4d: self.p.first_of_4d,
            max_voxels: self.p.max_volume_voxels.max(1) as u64,
        };
        let meta = self.metadata.get(&name);
        let (vol, hu) = match nifti_hu(reader, &opts, meta) {
            Ok(v) => v,
            Err(r) => return file_reject(r),
        };
        let mut warnings = hu.warnings;
        if meta.is_none() && label.starts_with("nifti") && !self.metadata.is_empty() {
            warnings.push("no metadata row for this file".into());
        }
        let num = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let (hu_applied, evidence, used) = (hu.applied, hu.evidence, hu.used);
        let c = self.ctx;
        let (patient, study) = ctrate_ids(&name).unwrap_or_else(|| (rp.clone(), rp.clone()));
        let row = VolumesRow {
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
            ..VolumesRow::default()
        };
        self.finish_row(dir, vol, row)
    }
}

/// How a NIfTI file's values became HU (see [`nifti_hu`]).
pub(crate) struct NiftiHu {
    /// `hu_applied` of the volumes row.
    pub(crate) applied: &'static str,
    /// Its evidence, in words.
    pub(crate) evidence: String,
    /// The slope and intercept used, if any.
    pub(crate) used: Option<(f64, f64)>,
    /// What was repaired on the way (units, metadata spacing).
    pub(crate) warnings: Vec<String>,
}

/// A NIfTI file's volume in HU and mm, as ingest keeps it: the affine in mm (`xyzt_units`), the
/// HU decision of [`apply_hu`] with the CT-RATE metadata row `meta`, the metadata spacing
/// trusted over the header, and the geometry checked.
pub(crate) fn nifti_hu(
    reader: NiftiReader,
    opts: &ReadOptions,
    meta: Option<&BTreeMap<String, String>>,
) -> Result<(Volume, NiftiHu), Reject> {
    let (mut vol, info) = reader.read(opts)?;
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
    let num = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let (applied, evidence, used) = apply_hu(
        &mut vol,
        &info,
        num("RescaleSlope"),
        num("RescaleIntercept"),
    );
    // Metadata spacing (CT-RATE): trust it over a header that disagrees, as the v2 repair does.
    if let Some(m) = meta {
        apply_metadata_spacing(&mut vol, m, &mut warnings)?;
    }
    vol.check_geometry()?;
    Ok((
        vol,
        NiftiHu {
            applied,
            evidence,
            used,
            warnings,
        },
    ))
}

/// HU of a NIfTI volume, decided once: the header's scl (applied by the reader), else the
/// CT-RATE metadata rescale unless the values are already HU, else the stored values. Returns
/// (`hu_applied`, its evidence, the slope and intercept used).
fn apply_hu(
    vol: &mut Volume,
    info: &NiftiInfo,
    slope: Option<f64>,
    intercept: Option<f64>,
) -> (&'static str, String, Option<(f64, f64)>) {
    if info.scaled {
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
            vol.data.par_chunks_mut(1 << 16).for_each(|c| {
                for x in c {
                    *x = (*x as f64 * s + i) as f32;
                }
            });
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
    }
}

/// The CT-RATE metadata spacing (XYSpacing, ZSpacing), trusted over a header that disagrees, as
/// the v2 repair does: the affine's axes are rescaled to it, with a warning.
fn apply_metadata_spacing(
    vol: &mut Volume,
    m: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<(), Reject> {
    let xy = m
        .get("XYSpacing")
        .map(|s| parse_list(s))
        .unwrap_or_default();
    let z = m.get("ZSpacing").and_then(|s| s.trim().parse::<f64>().ok());
    if let (2, Some(z)) = (xy.len(), z) {
        let want = [xy[0], xy[1], z];
        let have = vol.spacing();
        let usable = |s: &[f64; 3]| {
            s.iter()
                .all(|v| (mg3d_volume::MIN_SPACING_MM..=mg3d_volume::MAX_SPACING_MM).contains(v))
        };
        if !usable(&want) {
            return Err(Reject::new(
                "geometry_invalid",
                format!("metadata XYSpacing/ZSpacing {want:?} is not a plausible spacing in mm"),
            ));
        }
        if !usable(&have) {
            return Err(Reject::new(
                "geometry_invalid",
                format!("header spacing {have:?} cannot be rescaled to the metadata's {want:?}"),
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
    Ok(())
}
