//! The `ingest` stage: DICOM roots, NIfTI roots and CT-RATE metadata into HU volumes in their
//! original grid (`volumes/<volume_id>.nii.gz`), `volumes.parquet` and `rejects.parquet`.
//! Every input file ends up in exactly one of them. Per-series / per-file work is keyed by content.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use mg3d_core::rows::{RejectsRow, VolumesRow};
use mg3d_core::stage::{InputDecl, ParamDef, Params, Stage, StageContext, StageError};
use mg3d_core::table::write_rows;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use mg3d_core::budget::ByteBudget;
use mg3d_core::phi::Phi;

use crate::IngestError;
use crate::walk::{Found, Walker};
use mg3d_dicom::header::{SliceHeader, checked_header, parse_header};
use mg3d_dicom::series::{SeriesGroup, SpacingRules, assemble, group_series};
use mg3d_volume::nifti_io::{NiftiInfo, NiftiReader, ReadOptions};
use mg3d_volume::nifti_write::{EncodedI16, FileCompression};
use mg3d_volume::{Reject, Volume};

mod ctrg;
mod items;
pub(crate) use items::nifti_hu;
mod roots;
mod sources;

pub use sources::locate;
use sources::{
    age_bucket, ctrate_ids, file_digest, file_name, parse_list, read_csv, read_err, rel,
    without_paths,
};

/// Stage kind `ingest`.
pub struct IngestStage;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct IngestParams {
        /// folders scanned recursively for DICOM files (@stage/path = an input's output)
        dicom_roots: Vec<String> = json!([]),
        /// folders scanned recursively for .nii/.nii.gz
        nifti_roots: Vec<String> = json!([]),
        /// CT-RATE metadata CSVs (VolumeName, XYSpacing, ZSpacing, RescaleSlope, RescaleIntercept, ...)
        ctrate_metadata: Vec<String> = json!([]),
        /// CSV with SeriesInstanceUID and VolumeName columns, to key DICOM volumes to reports
        accession_map: String = json!(""),
        /// DICOM modalities accepted
        modalities: Vec<String> = json!(["CT"]),
        /// non-identifying metadata columns to fill (others stay null)
        allowed_metadata: Vec<String> = json!([
                    "sex",
                    "age_bucket",
                    "manufacturer",
                    "model",
                    "kernel",
                    "slice_thickness_mm"
                ]),
        /// take the first volume of 4D NIfTI instead of rejecting it
        first_of_4d: bool = json!(false),
        /// volumes decoded at once
        max_in_flight: i64 = json!(4),
        /// memory shared by the volumes decoded at once (estimated from headers before reading); a
        /// volume needing more alone is rejected (over_memory_budget)
        memory_budget_mb: i64 = json!(8192),
        /// largest volume accepted, in voxels (volume_too_large above it)
        max_volume_voxels: i64 = json!(1i64 << 30),
        /// CTRG-Chest annotation JSON files ({id, report, result, image_path, split}; slice folders
        /// of 8-bit JPEGs relative to the file)
        ctrg_annotations: Vec<String> = json!([]),
        /// spacing assumed for CTRG slices (columns, rows, slices; mm): JPEGs carry none
        ctrg_spacing_mm: [f64; 3] = json!([0.75, 0.75, 1.5]),
        /// which end CTRG slice 1 is: superior or inferior
        ctrg_first_slice: String = json!("superior"),
        /// succeed with 0 volumes when the roots hold no files (otherwise an error: an empty or
        /// unmounted root)
        allow_empty: bool = json!(false),
    }
}

#[derive(Serialize, Deserialize)]
enum ItemResult {
    Volume(Box<VolumesRow>),
    Reject(RejectsRow),
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

/// Adds the rows of a CT-RATE metadata CSV to `metadata`, by `VolumeName`.
pub(crate) fn read_metadata(
    path: &Path,
    metadata: &mut HashMap<String, BTreeMap<String, String>>,
) -> Result<(), StageError> {
    for row in read_csv(path)? {
        if let Some(n) = row.get("VolumeName") {
            metadata.insert(n.clone(), row.clone());
        }
    }
    Ok(())
}

struct Ctx<'a> {
    ctx: &'a StageContext<'a>,
    p: &'a IngestParams,
    metadata: HashMap<String, BTreeMap<String, String>>,
    accession: HashMap<String, String>,
    rules: SpacingRules,
    budget: ByteBudget,
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
        IngestParams::defs()
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "synth",
            required: false,
        }]
    }
    fn partitioned(&self) -> bool {
        true
    }
    fn item_params(&self) -> Option<Vec<&'static str>> {
        Some(vec!["first_of_4d", "max_volume_voxels", "allowed_metadata"])
    }
    fn sources_fingerprint(&self, params: &Params) -> Result<Option<String>, StageError> {
        // Roots: the name, size and modification time of every file reached (content is hashed
        // per item when it runs; the time catches a same-size rewrite in place). Metadata CSVs
        // and the accession map: their content, since a same-length edit changes volumes.
        let p: IngestParams = params.parse()?;
        let mut h = blake3::Hasher::new();
        let mut any = false;
        let external = |r: &&String| !r.is_empty() && !r.starts_with('@');
        let mut walker = Walker::new();
        // A CTRG annotation file's folder holds its slice folders.
        let ctrg_folders: Vec<String> = p
            .ctrg_annotations
            .iter()
            .filter(external)
            .map(|a| {
                Path::new(a)
                    .parent()
                    .map_or(".".into(), |d| d.to_string_lossy().into_owned())
            })
            .collect();
        for r in p
            .dicom_roots
            .iter()
            .chain(&p.nifti_roots)
            .filter(external)
            .chain(&ctrg_folders)
        {
            any = true;
            let root = PathBuf::from(r);
            h.update(r.as_bytes());
            for f in walker.walk(&root).map_err(read_err(r))? {
                h.update(rel(&root, f.path()).as_bytes());
                let (len, modified) = std::fs::metadata(f.path())
                    .map(|m| {
                        let t = m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                        (m.len(), t.map_or(u128::MAX, |d| d.as_nanos()))
                    })
                    .unwrap_or((u64::MAX, u128::MAX));
                h.update(&len.to_le_bytes());
                h.update(&modified.to_le_bytes());
            }
        }
        for r in p
            .ctrate_metadata
            .iter()
            .chain(&p.ctrg_annotations)
            .chain(std::iter::once(&p.accession_map))
            .filter(external)
        {
            any = true;
            let d = mg3d_core::fsutil::hash_file(Path::new(r)).map_err(read_err(r))?;
            h.update(d.blake3.as_bytes());
        }
        Ok(any.then(|| h.finalize().to_hex().to_string()))
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: IngestParams = ctx.params.parse()?;
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
            return Err(IngestError::Params(format!(
                "allowed_metadata: unknown field {bad:?}; allowed fields are {}",
                KNOWN.join(", ")
            ))
            .into());
        }
        if !["superior", "inferior"].contains(&p.ctrg_first_slice.as_str()) {
            return Err(IngestError::Params(format!(
                "ctrg_first_slice = {:?}: use superior or inferior",
                p.ctrg_first_slice
            ))
            .into());
        }
        let mut metadata = HashMap::new();
        for m in &p.ctrate_metadata {
            read_metadata(&ctx.resolve(m)?, &mut metadata)?;
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
        c.ctrg_annotations(&p.ctrg_annotations, &mut out)?;
        // Every file found becomes a result (a reject, or part of a volume) or an item of another
        // partition.
        if out.results.is_empty() && ctx.items().counts().seen == 0 && !p.allow_empty {
            return Err(IngestError::NoInputs {
                dicom_roots: p.dicom_roots.clone(),
                nifti_roots: p.nifti_roots.clone(),
            }
            .into());
        }
        if ctx.is_partition() {
            // Only the items in the store count; the tables are the merge's.
            return Ok(Value::Null);
        }
        out.finish(ctx)
    }
}

/// What the roots produced so far: item results, the volume files to place, identifying values.
#[derive(Default)]
pub(crate) struct Collected {
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
        let (mut vols, mut rejects): (Vec<VolumesRow>, Vec<RejectsRow>) = (vec![], vec![]);
        let mut placed: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (mut r, dir) in self.results {
            // Items were scrubbed of their own values; a value seen in another item (a name in
            // one series' header, quoted by another's message) is removed here.
            r.scrub(&self.phi);
            match r {
                // The same series under two roots (or copied twice) is one volume; the later
                // copy is a reject, never a second writer of the same file.
                ItemResult::Volume(v) if placed.contains_key(&v.volume_id) => {
                    rejects.push(RejectsRow {
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
                    let dir = dir.ok_or(IngestError::VolumeWithoutItem)?;
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
        write_rows(&ctx.out_dir.join("volumes.parquet"), &vols)?;
        write_rows(&ctx.out_dir.join("rejects.parquet"), &rejects)?;
        let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
        for r in &rejects {
            *by_reason.entry(r.reason.clone()).or_default() += 1;
        }
        Ok(
            json!({"volumes": vols.len(), "rejects": rejects.len(), "files_in_volumes": vols.iter().map(|v| v.n_files as i64).sum::<i64>(), "rejects_by_reason": by_reason}),
        )
    }
}
