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

use crate::dicom_io::{SeriesGroup, SpacingRules, assemble, group_series, read_header};
use crate::nifti_io::{read_nifti, write_nifti_i16};
use crate::{Reject, Volume};

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
}

/// One volumes.parquet row (also the per-item result).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRow {
    pub volume_id: String,
    pub patient_id: String,
    pub study_id: String,
    pub report_key: Option<String>,
    pub source_kind: String,
    pub source_root: String,
    pub source_ref: String,
    pub n_files: i32,
    pub modality: String,
    pub transfer_syntax: Option<String>,
    pub dims: [i32; 3],
    pub spacing_mm: [f64; 3],
    pub affine_ras: [f64; 16],
    pub axcodes: String,
    pub slope: Option<f64>,
    pub intercept: Option<f64>,
    pub hu_applied: String,
    pub hu_evidence: String,
    pub hu_min: f64,
    pub hu_max: f64,
    pub hu_mean: f64,
    pub sex: Option<String>,
    pub age_bucket: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub kernel: Option<String>,
    pub slice_thickness_mm: Option<f64>,
    pub warnings: Vec<String>,
    pub volume_file: String,
    pub content_hash: String,
}

/// One rejects.parquet row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectRow {
    pub stage: String,
    pub source_root: String,
    pub path: String,
    pub path_ref: String,
    pub level: String,
    pub n_files: i32,
    pub reason: String,
    pub message: String,
}

#[derive(Serialize, Deserialize)]
enum ItemResult {
    Volume(Box<VolumeRow>),
    Reject(RejectRow),
}

fn walk(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
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
        RejectRow {
            stage: "ingest".into(),
            source_root: root_label.into(),
            path: path.into(),
            path_ref: self.ctx.pseudonym("path", &format!("{root_label}/{path}")),
            level: level.into(),
            n_files,
            reason: r.code.into(),
            message: r.message.clone(),
        }
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
        let (vol, info) = match assemble(g, &self.rules) {
            Ok(v) => v,
            Err(r) => {
                let r = Reject::new(
                    r.code,
                    r.message.replace(&format!("{}/", root.display()), ""),
                );
                return Ok(ItemResult::Reject(
                    self.reject(label, &folder, "series", n, &r),
                ));
            }
        };
        let c = self.ctx;
        let series_uid = g.key.split('#').next().unwrap_or(&g.key);
        let pid = if h0.phi.is_empty() {
            h0.study_uid.clone()
        } else {
            h0.phi[0].clone()
        };
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
            report_key: self.accession.get(series_uid).cloned(),
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
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (mut vol, info) = match read_nifti(path, self.p.first_of_4d) {
            Ok(v) => v,
            Err(r) => {
                let r = Reject::new(
                    r.code,
                    r.message.replace(&format!("{}/", root.display()), ""),
                );
                return Ok(ItemResult::Reject(self.reject(label, &rp, "file", 1, &r)));
            }
        };
        let meta = self.metadata.get(&name);
        let mut warnings = Vec::new();
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
        let c = self.ctx;
        let (patient, study) = ctrate_ids(&name).unwrap_or_else(|| (rp.clone(), rp.clone()));
        let row = VolumeRow {
            volume_id: c.pseudonym("volume", &format!("{label}/{rp}")),
            patient_id: c.pseudonym("patient", &patient),
            study_id: c.pseudonym("study", &study),
            report_key: Some(name.clone()),
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
        "1"
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
                "volumes decoded at once (bounds memory)",
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
        Some(vec![
            "first_of_4d",
            "accession_map",
            "ctrate_metadata",
            "allowed_metadata",
        ])
    }
    fn sources_fingerprint(&self, params: &Params) -> Result<Option<String>, StageError> {
        // External roots: names and sizes of every file (content is hashed per item when it runs).
        let p: P = params.parse()?;
        let mut h = blake3::Hasher::new();
        let mut any = false;
        for r in p
            .dicom_roots
            .iter()
            .chain(&p.nifti_roots)
            .chain(&p.ctrate_metadata)
            .chain(std::iter::once(&p.accession_map))
        {
            if r.is_empty() || r.starts_with('@') {
                continue;
            }
            any = true;
            let root = PathBuf::from(r);
            let files = if root.is_dir() {
                walk(&root).map_err(|e| StageError::ctx(r, e))?
            } else {
                vec![root.clone()]
            };
            for f in files {
                h.update(rel(&root, &f).as_bytes());
                h.update(
                    &std::fs::metadata(&f)
                        .map(|m| m.len())
                        .unwrap_or(0)
                        .to_le_bytes(),
                );
            }
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
        let c = Ctx {
            ctx,
            p: &p,
            metadata,
            accession,
            rules: SpacingRules::default(),
        };
        let mut results: Vec<ItemResult> = Vec::new();
        let mut phi: BTreeSet<String> = BTreeSet::new();
        let mut dirs: Vec<(String, PathBuf)> = Vec::new();
        let chunk = p.max_in_flight.max(1) as usize;

        for (ri, r) in p.dicom_roots.iter().enumerate() {
            let label = format!("dicom_roots[{ri}]");
            let root = ctx.resolve(r)?;
            let files = walk(&root)
                .map_err(|e| StageError::ctx(format!("{label} {}", root.display()), e))?;
            let pb = ctx.progress_bar(files.len() as u64, "DICOM headers");
            let headers: Vec<Result<_, Reject>> = files
                .par_iter()
                .map(|f| {
                    let h = read_header(f);
                    pb.inc(1);
                    h
                })
                .collect();
            pb.finish_and_clear();
            let mut ok = Vec::new();
            for (f, h) in files.iter().zip(headers) {
                match h {
                    Ok(h) if !p.modalities.is_empty() && !p.modalities.contains(&h.modality) => {
                        phi.extend(h.phi.iter().cloned());
                        results.push(ItemResult::Reject(c.reject(
                            &label,
                            &rel(&root, f),
                            "file",
                            1,
                            &Reject::new(
                                "modality_not_allowed",
                                format!("Modality {:?} not in {:?}", h.modality, p.modalities),
                            ),
                        )));
                    }
                    Ok(h) => {
                        phi.extend(h.phi.iter().cloned());
                        ok.push(h);
                    }
                    Err(r) => {
                        let r = Reject::new(
                            r.code,
                            r.message.replace(&format!("{}/", root.display()), ""),
                        );
                        results.push(ItemResult::Reject(c.reject(
                            &label,
                            &rel(&root, f),
                            "file",
                            1,
                            &r,
                        )));
                    }
                }
            }
            let (groups, rejs) = group_series(ok);
            for (f, r) in rejs {
                results.push(ItemResult::Reject(c.reject(
                    &label,
                    &rel(&root, &f),
                    "file",
                    1,
                    &r,
                )));
            }
            let pb = ctx.progress_bar(groups.len() as u64, "series");
            for batch in groups.chunks(chunk) {
                ctx.check_cancelled()?;
                let out: Vec<Result<(ItemResult, PathBuf), StageError>> = batch
                    .par_iter()
                    .map(|g| {
                        let paths: Vec<&Path> = g.files.iter().map(|h| h.path.as_path()).collect();
                        let digest = file_digest(&paths, &root)?;
                        let key = ctx.items().key(&g.key, &digest);
                        let o = ctx.items().get_or_make::<StageError>(&key, |dir| {
                            let res = c.dicom_item(&root, &label, g, dir)?;
                            std::fs::write(
                                dir.join("result.json"),
                                serde_json::to_vec(&res).unwrap(),
                            )?;
                            Ok(())
                        })?;
                        pb.inc(1);
                        let res: ItemResult =
                            serde_json::from_slice(&std::fs::read(o.dir().join("result.json"))?)
                                .map_err(|e| StageError::msg(e.to_string()))?;
                        Ok((res, o.dir().to_path_buf()))
                    })
                    .collect();
                for r in out {
                    let (res, dir) = r?;
                    if let ItemResult::Volume(v) = &res {
                        dirs.push((v.volume_file.clone(), dir));
                    }
                    results.push(res);
                }
            }
            pb.finish_and_clear();
        }

        for (ri, r) in p.nifti_roots.iter().enumerate() {
            let label = format!("nifti_roots[{ri}]");
            let root = ctx.resolve(r)?;
            let files = walk(&root)
                .map_err(|e| StageError::ctx(format!("{label} {}", root.display()), e))?;
            let pb = ctx.progress_bar(files.len() as u64, "NIfTI files");
            for batch in files.chunks(chunk) {
                ctx.check_cancelled()?;
                let out: Vec<Result<(ItemResult, Option<PathBuf>), StageError>> = batch
                    .par_iter()
                    .map(|f| {
                        let name = f.file_name().unwrap().to_string_lossy().into_owned();
                        pb.inc(1);
                        if !(name.ends_with(".nii") || name.ends_with(".nii.gz")) {
                            return Ok((
                                ItemResult::Reject(c.reject(
                                    &label,
                                    &rel(&root, f),
                                    "file",
                                    1,
                                    &Reject::new(
                                        "not_nifti",
                                        "file name does not end in .nii or .nii.gz",
                                    ),
                                )),
                                None,
                            ));
                        }
                        let meta = c
                            .metadata
                            .get(&name)
                            .map(|m| serde_json::to_string(m).unwrap())
                            .unwrap_or_default();
                        let digest = format!(
                            "{}|{}",
                            file_digest(&[f.as_path()], &root)?,
                            blake3::hash(meta.as_bytes()).to_hex()
                        );
                        let key = ctx
                            .items()
                            .key(&format!("{label}/{}", rel(&root, f)), &digest);
                        let o = ctx.items().get_or_make::<StageError>(&key, |dir| {
                            let res = c.nifti_item(&root, &label, f, dir)?;
                            std::fs::write(
                                dir.join("result.json"),
                                serde_json::to_vec(&res).unwrap(),
                            )?;
                            Ok(())
                        })?;
                        let res: ItemResult =
                            serde_json::from_slice(&std::fs::read(o.dir().join("result.json"))?)
                                .map_err(|e| StageError::msg(e.to_string()))?;
                        Ok((res, Some(o.dir().to_path_buf())))
                    })
                    .collect();
                for r in out {
                    let (res, dir) = r?;
                    if let (ItemResult::Volume(v), Some(d)) = (&res, dir) {
                        dirs.push((v.volume_file.clone(), d));
                    }
                    results.push(res);
                }
            }
            pb.finish_and_clear();
        }

        // Place volumes (hard links into the item store when possible).
        std::fs::create_dir_all(ctx.out_dir.join("volumes"))?;
        for (file, dir) in &dirs {
            let src = dir.join("volume.nii.gz");
            let dst = ctx.out_dir.join(file);
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst)?;
            }
        }
        let (mut vols, mut rejects): (Vec<VolumeRow>, Vec<RejectRow>) = (vec![], vec![]);
        for r in results {
            match r {
                ItemResult::Volume(v) => vols.push(*v),
                ItemResult::Reject(r) => rejects.push(r),
            }
        }
        // Identifying values seen in headers never reach an output, not even through folder names.
        let scrub = scrubber(&phi);
        for r in rejects.iter_mut() {
            r.path = scrub(&r.path);
            r.message = scrub(&r.message);
        }
        for v in vols.iter_mut() {
            v.warnings = v.warnings.iter().map(|w| scrub(w)).collect();
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

/// Replaces every identifying value (and its path-safe variants) with "[redacted]", longest first.
pub fn scrubber(phi: &BTreeSet<String>) -> impl Fn(&str) -> String {
    let mut words: Vec<String> = phi.iter().filter(|w| w.len() >= 3).cloned().collect();
    words.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    move |s: &str| {
        let mut out = s.to_string();
        for w in &words {
            if out.contains(w.as_str()) {
                out = out.replace(w.as_str(), "[redacted]");
            }
        }
        out
    }
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
