//! A CTRG-Chest-shaped set (`ctrg/`): one JSON list of `{id, report, result, image_path, split}`
//! (report = findings, result = impression) and, per volume, a folder of 8-bit grey JPEG slices
//! named `1.jpg`, `2.jpg`, ... `N.jpg` from the most superior slice down, so that file-name
//! (lexical) order is not slice order. The phantom's HU map to grey as
//! `(clamp(hu, -1000, 1000) + 1000) / 2000 * 255`; slices are displayed radiologically (rows
//! anterior to posterior, columns patient right to left) at [`CTRG_SPACING_MM`].
//!
//! As in the released CTRG files, the val and test lists hold the same volumes (the test entries
//! repeat the val ids). The truth keeps each volume in HU as NIfTI (`truth/ctrg/<id>.nii.gz`, in
//! its real geometry) so a test can check what the pipeline made of the JPEG folder.

use std::fs;
use std::path::Path;

use rand::Rng;
use serde_json::json;

use crate::geometry::{Grid, PatientPosition, render};
use crate::nifti_out::{header_for, write_i16};
use crate::report::Templates;
use crate::writer::{draw_patient, field_of_view, uni};
use crate::{SynthConfig, SynthError, rng_for};

/// The spacing the CTRG set is rendered at (columns, rows, slices; mm): ingest's default
/// `ctrg_spacing_mm`, since the JPEG slices themselves carry no geometry.
pub const CTRG_SPACING_MM: [f64; 3] = [0.75, 0.75, 1.5];

/// The grey level of a HU value.
fn grey(hu: i16) -> u8 {
    (((hu as f64).clamp(-1000.0, 1000.0) + 1000.0) / 2000.0 * 255.0).round() as u8
}

/// One CTRG volume: renders, writes its slices and its truth; returns its annotation entry.
fn write_volume(
    cfg: &SynthConfig,
    templates: &Templates,
    out: &Path,
    k: u32,
    split: &str,
) -> Result<serde_json::Value, SynthError> {
    let mut rng = rng_for(cfg.seed, "ctrg", k as u64);
    let pos = PatientPosition::HFS;
    let (ph, statements) = draw_patient(cfg, pos, &mut rng);
    let [dx, _, dz] = CTRG_SPACING_MM;
    let fov = field_of_view(&ph);
    let shift = [uni(&mut rng, [-8.0, 8.0]), uni(&mut rng, [-8.0, 8.0]), 0.0];
    let grid = Grid::axial(pos, dx, dz, [fov, fov], ph.len * 0.96, shift);
    let hu = render(&ph, &grid, rng.random());
    let report = crate::report::write_report(templates, &statements, dz, &mut rng)?;
    let id = format!("{}", 1000 + k);
    let rel = format!("images/{id}");
    let dir = out.join("ctrg").join(&rel);
    fs::create_dir_all(&dir)?;
    let plane = grid.cols * grid.rows;
    // HFS: slice k = 0 is the most inferior, so file n = slices - k.
    for (k, slice) in hu.chunks(plane).enumerate() {
        let pixels: Vec<u8> = slice.iter().map(|&h| grey(h)).collect();
        let n = grid.slices - k;
        let path = dir.join(format!("{n}.jpg"));
        jpeg_encoder::Encoder::new_file(&path, 95)
            .and_then(|e| {
                e.encode(
                    &pixels,
                    grid.cols as u16,
                    grid.rows as u16,
                    jpeg_encoder::ColorType::Luma,
                )
            })
            .map_err(|e| SynthError::Io(std::io::Error::other(e.to_string())))?;
    }
    let truth = out.join("truth/ctrg").join(format!("{id}.nii.gz"));
    fs::create_dir_all(truth.parent().expect("truth folder"))?;
    write_i16(
        &truth,
        hu,
        [grid.cols, grid.rows, grid.slices],
        &header_for(&grid.affine_ras(), [grid.dx, grid.dy, grid.dz], None),
    )?;
    Ok(json!({
        "id": id,
        "report": report.findings,
        "result": report.impressions,
        "image_path": rel,
        "split": split,
    }))
}

/// Writes `ctrg/annotation.json` and the slice folders of `cfg.ctrg_patients` volumes: 80%
/// train, the rest val, then the val entries again as test (the released lists' duplicate).
pub(crate) fn write_ctrg(
    cfg: &SynthConfig,
    templates: &Templates,
    out: &Path,
) -> Result<(), SynthError> {
    let n = cfg.ctrg_patients;
    if n == 0 {
        return Ok(());
    }
    let n_train = ((n as f64 * 0.8).round() as u32).clamp(1, n);
    let mut entries = Vec::new();
    for k in 1..=n {
        let split = if k <= n_train { "train" } else { "val" };
        entries.push(write_volume(cfg, templates, out, k, split)?);
    }
    let repeated: Vec<serde_json::Value> = entries
        .iter()
        .filter(|e| e["split"] == "val")
        .map(|e| {
            let mut e = e.clone();
            e["split"] = json!("test");
            e
        })
        .collect();
    entries.extend(repeated);
    let mut text = serde_json::to_vec_pretty(&entries).expect("JSON");
    text.push(b'\n');
    fs::write(out.join("ctrg/annotation.json"), text)?;
    Ok(())
}
