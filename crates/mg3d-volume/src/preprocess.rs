//! The `preprocess` stage: ingest volumes -> canonical RAS int16 HU NIfTI at a preset's spacing,
//! HU window and shape (`configs/preprocess/<preset>.toml`), plus `preprocessed.parquet`.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeListBuilder, Float64Array, Float64Builder, Int32Builder, StringArray,
};
use mg3d_core::stage::{InputDecl, ParamDef, ParamType, Stage, StageContext, StageError};
use mg3d_core::table::{TableSchema, read_table, write_columns};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Volume;
use crate::nifti_io::{read_nifti, write_nifti_i16};
use crate::ops::{Interp, crop_pad, foreground_box, reorient_ras, resample, window};

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
pub fn load_preset(name: &str) -> Result<Preset, String> {
    let text = match builtin_preset(name) {
        Some(t) => t.to_string(),
        None => std::fs::read_to_string(name).map_err(|e| {
            format!(
                "preset {name:?} is not built in (demo, demo-64, ct-clip, mg3d) and not a readable file: {e}"
            )
        })?,
    };
    let p: Preset = toml::from_str(&text).map_err(|e| format!("preset {name}: {e}"))?;
    if !["center", "foreground"].contains(&p.crop.as_str()) {
        return Err(format!("preset {name}: crop must be center or foreground"));
    }
    Ok(p)
}

/// Resizes to `shape` with trilinear interpolation, align_corners = false (PyTorch's convention);
/// the affine keeps world positions of voxel centres consistent.
pub fn resize(v: &Volume, shape: [usize; 3]) -> Volume {
    let scale: [f64; 3] = std::array::from_fn(|a| v.dims[a] as f64 / shape[a] as f64);
    let mut data = vec![0f32; shape[0] * shape[1] * shape[2]];
    let at = |i: isize, j: isize, k: isize| {
        let c = |x: isize, n: usize| x.clamp(0, n as isize - 1) as usize;
        v.get(c(i, v.dims[0]), c(j, v.dims[1]), c(k, v.dims[2]))
    };
    data.par_chunks_mut(shape[0] * shape[1])
        .enumerate()
        .for_each(|(k, plane)| {
            let z = ((k as f64 + 0.5) * scale[2] - 0.5).max(0.0);
            for j in 0..shape[1] {
                let y = ((j as f64 + 0.5) * scale[1] - 0.5).max(0.0);
                for i in 0..shape[0] {
                    let x = ((i as f64 + 0.5) * scale[0] - 0.5).max(0.0);
                    let (x0, y0, z0) = (x.floor(), y.floor(), z.floor());
                    let (fx, fy, fz) = ((x - x0) as f32, (y - y0) as f32, (z - z0) as f32);
                    let (x0, y0, z0) = (x0 as isize, y0 as isize, z0 as isize);
                    let mut acc = 0f32;
                    for (dz, wz) in [(0, 1.0 - fz), (1, fz)] {
                        for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
                            for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                                acc += wx * wy * wz * at(x0 + dx, y0 + dy, z0 + dz);
                            }
                        }
                    }
                    plane[i + shape[0] * j] = acc;
                }
            }
        });
    let mut a = v.affine;
    // Output voxel o sits at input index (o + 0.5) * s - 0.5.
    let o = v.world([
        0.5 * scale[0] - 0.5,
        0.5 * scale[1] - 0.5,
        0.5 * scale[2] - 0.5,
    ]);
    for r in 0..3 {
        for c in 0..3 {
            a[r][c] = v.affine[r][c] * scale[c];
        }
        a[r][3] = o[r];
    }
    Volume {
        dims: shape,
        data,
        affine: a,
    }
}

/// Applies a preset to a volume: RAS, resample, window, crop (centre or foreground), fit to shape.
/// Returns the output and the RAS crop centre.
pub fn apply_preset(v: &Volume, p: &Preset) -> (Volume, [f64; 3]) {
    let ras = reorient_ras(v);
    let mut r = resample(&ras, p.spacing_mm, Interp::Linear, p.window[0] as f32);
    window(&mut r, p.window[0] as f32, p.window[1] as f32);
    let center: [f64; 3] = match (p.crop.as_str(), foreground_box(&r, -500.0)) {
        ("foreground", Some((lo, hi))) => std::array::from_fn(|a| (lo[a] + hi[a]) as f64 / 2.0),
        _ => std::array::from_fn(|a| (r.dims[a] as f64 - 1.0) / 2.0),
    };
    let center_ras = r.world(center);
    let out = if p.resize {
        let box_shape: [usize; 3] = std::array::from_fn(|a| {
            ((r.dims[a] as f64 * p.crop_fraction[a]).round() as usize).max(1)
        });
        let cropped = crop_pad(
            &r,
            box_shape,
            std::array::from_fn(|a| center[a] + 0.5),
            p.window[0] as f32,
        );
        resize(&cropped, p.shape)
    } else {
        let box_shape: [usize; 3] = std::array::from_fn(|a| {
            ((p.shape[a] as f64 * p.crop_fraction[a]).round() as usize).max(1)
        });
        let cropped = crop_pad(
            &r,
            box_shape,
            std::array::from_fn(|a| center[a] + 0.5),
            p.window[0] as f32,
        );
        if box_shape == p.shape {
            cropped
        } else {
            crop_pad(
                &cropped,
                p.shape,
                std::array::from_fn(|a| box_shape[a] as f64 / 2.0),
                p.window[0] as f32,
            )
        }
    };
    (out, center_ras)
}

/// Stage kind `preprocess`.
pub struct PreprocessStage;

#[derive(Deserialize)]
struct P {
    preset: String,
    max_in_flight: i64,
}

#[derive(Serialize, Deserialize)]
struct Row {
    volume_id: String,
    file: String,
    dims: [i32; 3],
    spacing: [f64; 3],
    affine: [f64; 16],
    center: [f64; 3],
    mean: f64,
    std: f64,
    fg: f64,
    hash: String,
}

impl Stage for PreprocessStage {
    fn kind(&self) -> &'static str {
        "preprocess"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "ingest volumes -> RAS, resampled, windowed, cropped int16 HU NIfTI (preset) + preprocessed.parquet"
    }
    fn params(&self) -> Vec<ParamDef> {
        vec![
            ParamDef::new(
                "preset",
                ParamType::Str,
                json!("demo"),
                "demo | ct-clip | mg3d | path to a preset TOML",
            ),
            ParamDef::new(
                "max_in_flight",
                ParamType::Int,
                json!(4),
                "volumes processed at once (bounds memory)",
            ),
        ]
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![InputDecl {
            kind: "ingest",
            required: true,
        }]
    }
    fn item_params(&self) -> Option<Vec<&'static str>> {
        Some(vec!["preset"])
    }
    fn sources_fingerprint(
        &self,
        params: &mg3d_core::Params,
    ) -> Result<Option<String>, StageError> {
        // The preset's content (a file may change without its name changing).
        let p: P = params.parse()?;
        let preset = load_preset(&p.preset).map_err(StageError::msg)?;
        Ok(Some(
            blake3::hash(serde_json::to_string(&preset).unwrap().as_bytes())
                .to_hex()
                .to_string(),
        ))
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: P = ctx.params.parse()?;
        let preset = load_preset(&p.preset).map_err(StageError::msg)?;
        let ingest = ctx.input("ingest")?;
        let batches = read_table(
            &ingest.join("volumes.parquet"),
            &TableSchema::get("volumes")?,
        )?;
        let mut items: Vec<(String, String, String)> = Vec::new();
        for b in &batches {
            let s = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let (ids, files, hashes) = (s("volume_id"), s("volume_file"), s("content_hash"));
            for r in 0..b.num_rows() {
                items.push((
                    ids.value(r).to_string(),
                    files.value(r).to_string(),
                    hashes.value(r).to_string(),
                ));
            }
        }
        std::fs::create_dir_all(ctx.out_dir.join("volumes"))?;
        let pb = ctx.progress_bar(items.len() as u64, "volumes");
        let mut rows: Vec<Row> = Vec::new();
        for batch in items.chunks(p.max_in_flight.max(1) as usize) {
            ctx.check_cancelled()?;
            let out: Vec<Result<Row, StageError>> = batch
                .par_iter()
                .map(|(id, file, hash)| {
                    let key = ctx.items().key(id, hash);
                    let o = ctx.items().get_or_make::<StageError>(&key, |dir| {
                        let (v, _) = read_nifti(&ingest.join(file), false)
                            .map_err(|r| StageError::msg(r.to_string()))?;
                        let (out, center) = apply_preset(&v, &preset);
                        write_nifti_i16(&dir.join("volume.nii.gz"), &out)
                            .map_err(StageError::msg)?;
                        let n = out.data.len() as f64;
                        let st = out.stats();
                        let var = out
                            .data
                            .iter()
                            .map(|&x| (x as f64 - st.mean).powi(2))
                            .sum::<f64>()
                            / n;
                        let row = Row {
                            volume_id: id.clone(),
                            file: format!("volumes/{id}.nii.gz"),
                            dims: out.dims.map(|d| d as i32),
                            spacing: out.spacing(),
                            affine: std::array::from_fn(|i| out.affine[i / 4][i % 4]),
                            center,
                            mean: st.mean,
                            std: var.sqrt(),
                            fg: out.data.iter().filter(|&&x| x > -500.0).count() as f64 / n,
                            hash: {
                                let mut h = blake3::Hasher::new();
                                for x in &out.data {
                                    h.update(&(x.round() as i16).to_le_bytes());
                                }
                                h.finalize().to_hex().to_string()
                            },
                        };
                        std::fs::write(dir.join("row.json"), serde_json::to_vec(&row).unwrap())?;
                        Ok(())
                    })?;
                    let dst = ctx.out_dir.join(format!("volumes/{id}.nii.gz"));
                    if std::fs::hard_link(o.dir().join("volume.nii.gz"), &dst).is_err() {
                        std::fs::copy(o.dir().join("volume.nii.gz"), &dst)?;
                    }
                    pb.inc(1);
                    serde_json::from_slice(&std::fs::read(o.dir().join("row.json"))?)
                        .map_err(|e| StageError::msg(e.to_string()))
                })
                .collect();
            for r in out {
                rows.push(r?);
            }
        }
        pb.finish_and_clear();
        rows.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        write_rows(
            &ctx.out_dir.join("preprocessed.parquet"),
            &rows,
            &p.preset,
            &preset,
        )?;
        Ok(
            json!({"volumes": rows.len(), "preset": p.preset, "shape": preset.shape, "spacing_mm": preset.spacing_mm}),
        )
    }
}

fn write_rows(path: &Path, rows: &[Row], name: &str, preset: &Preset) -> Result<(), StageError> {
    let schema = TableSchema::get("preprocessed")?;
    let fixed = |n: i32, f: &dyn Fn(&Row) -> Vec<f64>| {
        let mut b = FixedSizeListBuilder::new(Float64Builder::new(), n);
        for r in rows {
            b.values().append_slice(&f(r));
            b.append(true);
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let mut dims = FixedSizeListBuilder::new(Int32Builder::new(), 3);
    for r in rows {
        dims.values().append_slice(&r.dims);
        dims.append(true);
    }
    let s = |f: &dyn Fn(&Row) -> String| {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>()) as ArrayRef
    };
    let f = |f: &dyn Fn(&Row) -> f64| {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<Float64Array>()) as ArrayRef
    };
    let cols = vec![
        s(&|r| r.volume_id.clone()),
        s(&|_| name.to_string()),
        s(&|r| r.file.clone()),
        Arc::new(dims.finish()) as ArrayRef,
        fixed(3, &|r| r.spacing.to_vec()),
        fixed(16, &|r| r.affine.to_vec()),
        f(&|_| preset.window[0]),
        f(&|_| preset.window[1]),
        fixed(3, &|r| r.center.to_vec()),
        f(&|r| r.mean),
        f(&|r| r.std),
        f(&|r| r.fg),
        s(&|r| r.hash.clone()),
    ];
    write_columns(path, &schema, cols)?;
    Ok(())
}
