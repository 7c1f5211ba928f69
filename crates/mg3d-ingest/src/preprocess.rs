//! The `preprocess` stage: ingest volumes -> canonical RAS int16 HU NIfTI at a preset's spacing,
//! HU window and shape (`configs/preprocess/<preset>.toml`), plus `preprocessed.parquet`.

use std::path::Path;

use mg3d_core::rows::{PreprocessedRow, RejectsRow, VolumesRow};
use mg3d_core::stage::{InputDecl, ParamDef, Stage, StageContext, StageError};
use mg3d_core::table::{read_rows, write_rows};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use mg3d_volume::nifti_io::read_nifti;
use mg3d_volume::nifti_write::{EncodedI16, FileCompression};
use mg3d_volume::ops::{
    Interp, crop_pad, foreground_box, reorient_ras, resample, resample_center_crop, resampled_dims,
    resize, window,
};
use mg3d_volume::{Reject, Volume};

use crate::IngestError;

/// A preprocessing preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Target spacing along R, A, S (mm).
    pub spacing_mm: [f64; 3],
    /// HU clip [lo, hi].
    pub window: [f64; 2],
    /// Output shape along R, A, S.
    pub shape: [usize; 3],
    /// "center" (volume centre) or "foreground" (centre of the voxels above -500 HU).
    pub crop: String,
    /// Fraction of each axis kept around the crop centre before fitting to `shape`.
    pub crop_fraction: [f64; 3],
    /// Resize the cropped box to `shape` (trilinear) instead of cropping/padding to it.
    pub resize: bool,
}

/// Built-in presets (the files in configs/preprocess/).
pub fn builtin_preset(name: &str) -> Option<&'static str> {
    match name {
        "demo" => Some(include_str!("../../../configs/preprocess/demo.toml")),
        "demo-64" => Some(include_str!("../../../configs/preprocess/demo-64.toml")),
        "ct-clip" => Some(include_str!("../../../configs/preprocess/ct-clip.toml")),
        "mg3d" => Some(include_str!("../../../configs/preprocess/mg3d.toml")),
        _ => None,
    }
}

/// Loads a preset by built-in name or from a TOML file path.
pub fn load_preset(name: &str) -> Result<Preset, IngestError> {
    let text = match builtin_preset(name) {
        Some(t) => t.to_string(),
        None => std::fs::read_to_string(name).map_err(|source| IngestError::UnknownPreset {
            name: name.to_string(),
            source,
        })?,
    };
    let p: Preset = toml::from_str(&text).map_err(|source| IngestError::PresetSyntax {
        name: name.to_string(),
        source,
    })?;
    if !["center", "foreground"].contains(&p.crop.as_str()) {
        return Err(IngestError::PresetCrop {
            name: name.to_string(),
        });
    }
    Ok(p)
}

impl Preset {
    /// The geometry this preset gives every volume (`name`: the preset as the params name it).
    pub fn plan(&self, name: &str) -> mg3d_core::plan::VolumePlan {
        mg3d_core::plan::VolumePlan {
            preset: name.to_string(),
            axis_order: "RAS".into(),
            shape_ras: self.shape,
            spacing_mm: self.spacing_mm,
            window: self.window,
        }
    }
}

/// Applies a preset to a volume: RAS, resample, window, crop (centre or foreground), fit to shape.
/// Returns the output and the RAS crop centre.
///
/// A centre crop resamples only the kept box ([`resample_center_crop`]); a foreground crop needs
/// the whole resampled grid to find the foreground first.
pub fn apply_preset(v: &Volume, p: &Preset) -> (Volume, [f64; 3]) {
    let (lo, hi) = (p.window[0] as f32, p.window[1] as f32);
    if p.crop == "foreground" {
        let ras = reorient_ras(v);
        let mut r = resample(&ras, p.spacing_mm, Interp::Linear, lo);
        window(&mut r, lo, hi);
        if let Some((a, b)) = foreground_box(&r, -500.0) {
            let center: [f64; 3] = std::array::from_fn(|x| (a[x] + b[x]) as f64 / 2.0);
            let box_shape = box_shape(p, r.dims);
            let cropped = crop_pad(&r, box_shape, center.map(|c| c + 0.5), lo);
            return (fit(cropped, p), r.world(center));
        }
    }
    let box_shape = box_shape(p, resampled_dims(v, p.spacing_mm));
    let (mut cropped, center_ras) = resample_center_crop(v, p.spacing_mm, box_shape, lo);
    window(&mut cropped, lo, hi);
    (fit(cropped, p), center_ras)
}

/// The box kept around the crop centre: a fraction of the resampled grid (then resized to the
/// shape) or of the shape itself.
fn box_shape(p: &Preset, resampled: [usize; 3]) -> [usize; 3] {
    let base = if p.resize { resampled } else { p.shape };
    std::array::from_fn(|a| ((base[a] as f64 * p.crop_fraction[a]).round() as usize).max(1))
}

/// The cropped box brought to the preset's shape: resized, or centre-padded/cropped.
fn fit(cropped: Volume, p: &Preset) -> Volume {
    if p.resize {
        resize(&cropped, p.shape)
    } else if cropped.dims == p.shape {
        cropped
    } else {
        let c = cropped.dims.map(|d| d as f64 / 2.0);
        crop_pad(&cropped, p.shape, c, p.window[0] as f32)
    }
}

/// Stage kind `preprocess`.
pub struct PreprocessStage;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct PreprocessParams {
        /// demo | ct-clip | mg3d | path to a preset TOML
        preset: String = json!("demo"),
        /// volumes processed at once (bounds memory)
        max_in_flight: i64 = json!(4),
        /// output files: gzip (libdeflate level 1: fast, and smaller than zlib's default), gzip-N
        /// (level 1-12), or none (.nii, fastest, about twice the size)
        compression: String = json!("gzip"),
        /// largest input + resampled grid accepted, in voxels; a volume over it is a reject
        /// (preprocess_too_large), never an abort
        max_output_voxels: i64 = json!(1i64 << 30),
    }
}

/// One ingest volume to preprocess.
struct Item {
    id: String,
    file: String,
    /// Voxel hash and geometry: a corrected spacing or orientation (CT-RATE's v1 -> v2 repair)
    /// changes the key even when the voxels are the same.
    digest: String,
    /// Voxels of the input and of the resampled grid before cropping.
    work_voxels: f64,
    /// Grey levels 0..255 (CTRG JPEG slices), not HU: mapped onto the preset's window first.
    gray8: bool,
}

/// Voxels the preset's resampling makes of a volume (before the crop), plus the input's own.
fn work_voxels(dims: [f64; 3], spacing: [f64; 3], preset: &Preset) -> f64 {
    let input: f64 = dims.iter().product();
    let resampled: f64 = (0..3)
        .map(|a| (dims[a] * spacing[a]).abs())
        .product::<f64>()
        / preset.spacing_mm.iter().product::<f64>();
    input + resampled
}

impl Stage for PreprocessStage {
    fn kind(&self) -> &'static str {
        "preprocess"
    }
    fn code_version(&self) -> &'static str {
        "2"
    }
    fn describe(&self) -> &'static str {
        "ingest volumes -> RAS, resampled, windowed, cropped int16 HU NIfTI (preset) + preprocessed.parquet"
    }
    fn params(&self) -> Vec<ParamDef> {
        PreprocessParams::defs()
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "ingest",
            required: true,
        }]
    }
    fn partitioned(&self) -> bool {
        true
    }
    fn item_params(&self) -> Option<Vec<&'static str>> {
        Some(vec!["preset", "max_output_voxels"])
    }
    fn sources_fingerprint(
        &self,
        params: &mg3d_core::Params,
    ) -> Result<Option<String>, StageError> {
        // The preset's content (a file may change without its name changing).
        let p: PreprocessParams = params.parse()?;
        let preset = load_preset(&p.preset)?;
        Ok(Some(
            blake3::hash(serde_json::to_string(&preset).unwrap().as_bytes())
                .to_hex()
                .to_string(),
        ))
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: PreprocessParams = ctx.params.parse()?;
        let preset = load_preset(&p.preset)?;
        let compression = FileCompression::parse(&p.compression).ok_or_else(|| {
            IngestError::Params(format!(
                "compression = {:?}: use gzip, gzip-1 .. gzip-12 or none",
                p.compression
            ))
        })?;
        let ext = compression.extension();
        let ingest = ctx.input("ingest")?;
        let mut items: Vec<Item> = Vec::new();
        for v in read_rows::<VolumesRow>(&ingest.join("volumes.parquet"))? {
            let dims = v.dims.map(f64::from);
            // "row2": items store a `preprocessed` row (the format of earlier items differs).
            let gray8 = v.hu_applied == "gray8";
            let digest = format!(
                "row2|{}|{:?}|{:?}{}",
                v.content_hash,
                dims,
                v.affine_ras,
                if gray8 { "|gray8" } else { "" }
            );
            items.push(Item {
                gray8,
                work_voxels: work_voxels(dims, v.spacing_mm, &preset),
                id: v.volume_id,
                file: v.volume_file,
                digest,
            });
        }
        items.retain(|it| ctx.items().owns(&it.id));
        std::fs::create_dir_all(ctx.out_dir.join("volumes"))?;
        let pb = ctx.progress_bar(items.len() as u64, "volumes");
        let mut rows: Vec<PreprocessedRow> = Vec::new();
        let mut rejects: Vec<(String, Failed)> = Vec::new();
        let max = p.max_output_voxels.max(1) as f64;
        for batch in items.chunks(p.max_in_flight.max(1) as usize) {
            ctx.check_cancelled()?;
            let out: Vec<Result<Result<PreprocessedRow, Failed>, StageError>> = batch
                .par_iter()
                .map(|it| {
                    pb.inc(1);
                    if it.work_voxels > max {
                        return Ok(Err(Reject::new(
                            "preprocess_too_large",
                            format!(
                                "resampling to {:?} mm needs {:.0} voxels, over max_output_voxels = {max}",
                                preset.spacing_mm, it.work_voxels
                            ),
                        )
                        .into()));
                    }
                    let key = ctx.items().key(&it.id, &it.digest);
                    let o = ctx.items().get_or_make::<StageError>(&key, |dir| {
                        let res = mg3d_volume::catch_panic(
                            || preprocess_one(&ingest.join(&it.file), it, (&p.preset, &preset, compression), dir),
                            |r| Ok(Err(r)),
                        )?
                        .map_err(Failed::from);
                        let json = serde_json::to_vec(&res).map_err(|source| IngestError::Item {
                            path: dir.to_path_buf(),
                            source,
                        })?;
                        std::fs::write(dir.join("row.json"), json)?;
                        Ok(())
                    })?;
                    let res: Result<PreprocessedRow, Failed> =
                        serde_json::from_slice(&std::fs::read(o.dir().join("row.json"))?)
                            .map_err(|source| IngestError::Item {
                                path: o.dir().to_path_buf(),
                                source,
                            })?;
                    if res.is_ok() && !ctx.is_partition() {
                        let dst = ctx.out_dir.join(format!("volumes/{}.{ext}", it.id));
                        mg3d_core::fsutil::link_or_copy(&o.dir().join(format!("volume.{ext}")), &dst)?;
                    }
                    Ok(res)
                })
                .collect();
            for (it, r) in batch.iter().zip(out) {
                match r? {
                    Ok(row) => rows.push(row),
                    Err(f) => rejects.push((it.id.clone(), f)),
                }
            }
        }
        pb.finish_and_clear();
        if ctx.is_partition() {
            return Ok(Value::Null);
        }
        rows.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        write_rows(&ctx.out_dir.join("preprocessed.parquet"), &rows)?;
        write_rejects(ctx, &rejects)?;
        // The geometry planned once: shards and train check their own settings against it.
        preset.plan(&p.preset).write(&ctx.out_dir)?;
        Ok(
            json!({"volumes": rows.len(), "rejects": rejects.len(), "preset": p.preset, "shape": preset.shape, "spacing_mm": preset.spacing_mm}),
        )
    }
}

/// Reads, applies the preset and writes one volume into `dir`; a volume that cannot be read is a
/// reject, not a failure of the stage.
fn preprocess_one(
    file: &Path,
    it: &Item,
    (preset_name, preset, compression): (&str, &Preset, FileCompression),
    dir: &Path,
) -> Result<Result<PreprocessedRow, Reject>, StageError> {
    let id = it.id.as_str();
    let mut v = match read_nifti(file, false).and_then(|(v, _)| v.check_geometry().map(|_| v)) {
        Ok(v) => v,
        Err(r) => return Ok(Err(r)),
    };
    if it.gray8 {
        grey_onto_window(&mut v, preset.window);
    }
    let (out, center) = apply_preset(&v, preset);
    drop(v);
    let file = EncodedI16::new(&out);
    let ext = compression.extension();
    file.write(&dir.join(format!("volume.{ext}")), compression)
        .map_err(IngestError::from)?;
    let (mean, std, foreground_fraction) = out.moments(-500.0);
    Ok(Ok(PreprocessedRow {
        volume_id: id.to_string(),
        preset: preset_name.to_string(),
        file: format!("volumes/{id}.{ext}"),
        dims: out.dims.map(|d| d as i32),
        spacing_mm: out.spacing(),
        affine_ras: std::array::from_fn(|i| out.affine[i / 4][i % 4]),
        window_lo: preset.window[0],
        window_hi: preset.window[1],
        crop_center_ras: center,
        mean,
        std,
        foreground_fraction,
        content_hash: file.content_hash(),
    }))
}

/// Grey levels 0..255 mapped linearly onto `window` (0 to its low end, 255 to its high end), so
/// that the shards' window normalisation gives grey / 255, as MG-3D normalises CTRG slices.
fn grey_onto_window(v: &mut Volume, [lo, hi]: [f64; 2]) {
    for x in v.data.iter_mut() {
        *x = (lo + (*x as f64).clamp(0.0, 255.0) / 255.0 * (hi - lo)) as f32;
    }
}

/// Why a volume was not preprocessed, as its item stores it.
#[derive(Serialize, Deserialize)]
struct Failed {
    reason: String,
    message: String,
}

impl From<Reject> for Failed {
    fn from(r: Reject) -> Self {
        Failed {
            reason: r.code.to_string(),
            message: r.message,
        }
    }
}

/// `rejects.parquet` of preprocess: volumes ingest kept that could not be preprocessed.
fn write_rejects(ctx: &StageContext, rejects: &[(String, Failed)]) -> Result<(), StageError> {
    let rows: Vec<RejectsRow> = rejects
        .iter()
        .map(|(id, r)| RejectsRow {
            stage: "preprocess".into(),
            source_root: "ingest".into(),
            path: format!("volumes/{id}.nii.gz"),
            path_ref: id.clone(),
            level: "volume".into(),
            n_files: 1,
            reason: r.reason.clone(),
            message: r.message.clone(),
        })
        .collect();
    write_rows(&ctx.out_dir.join("rejects.parquet"), &rows)?;
    Ok(())
}
