//! DICOM series: files grouped into series and assembled into HU volumes.
//!
//! Rules (reference/anchors.md §2): group by SeriesInstanceUID, then by orientation and matrix
//! size; drop localizers; sort by ImagePositionPatient projected on the slice normal (never by
//! InstanceNumber); spacing from the sorted positions with a uniformity check; duplicate and missing
//! slices and gantry tilt detected; HU = stored * RescaleSlope + RescaleIntercept per slice, applied
//! once here; MONOCHROME1 inverted; PixelPaddingValue mapped to the volume minimum; LPS -> RAS.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::header::SliceHeader;
use crate::pixels::{decode_file, decode_stored, fill_padding};
use mg3d_volume::{Reject, Volume};

/// One series (or one orientation/size group of a series) ready to assemble.
#[derive(Debug, Clone)]
pub struct SeriesGroup {
    /// SeriesInstanceUID, plus "#n" when a series splits into several orientation/size groups.
    pub key: String,
    /// Its files.
    pub files: Vec<SliceHeader>,
}

/// Groups headers into series; localizers, files without geometry or pixel data, and duplicate
/// instances become rejects (with their path).
pub fn group_series(headers: Vec<SliceHeader>) -> (Vec<SeriesGroup>, Vec<(PathBuf, Reject)>) {
    let mut rejects = Vec::new();
    let mut by_series: BTreeMap<String, BTreeMap<String, Vec<SliceHeader>>> = BTreeMap::new();
    for h in headers {
        if h.image_type.iter().any(|t| t == "LOCALIZER") {
            rejects.push((
                h.path.clone(),
                Reject::new("localizer", "ImageType LOCALIZER (scout image)"),
            ));
            continue;
        }
        if h.rows == 0 || h.cols == 0 {
            rejects.push((
                h.path.clone(),
                Reject::new(
                    "dicom_no_pixels",
                    "no Rows/Columns: not an image (e.g. a structured report or DICOMDIR)",
                ),
            ));
            continue;
        }
        if h.samples_per_pixel != 1 {
            rejects.push((
                h.path.clone(),
                Reject::new(
                    "dicom_not_grayscale",
                    format!(
                        "SamplesPerPixel {} ({}): not a grayscale volume",
                        h.samples_per_pixel, h.photometric
                    ),
                ),
            ));
            continue;
        }
        let geo = match (h.iop, h.pixel_spacing) {
            (Some(o), Some(_)) => o
                .iter()
                .map(|v| format!("{:.3}", v))
                .collect::<Vec<_>>()
                .join(","),
            _ if h.frames > 1 => "multiframe".to_string(),
            _ => {
                rejects.push((
                    h.path.clone(),
                    Reject::new(
                        "dicom_no_geometry",
                        "no ImageOrientationPatient/PixelSpacing",
                    ),
                ));
                continue;
            }
        };
        let sub = format!("{}|{}x{}", geo, h.rows, h.cols);
        by_series
            .entry(h.series_uid.clone())
            .or_default()
            .entry(sub)
            .or_default()
            .push(h);
    }
    let mut groups = Vec::new();
    for (uid, subs) in by_series {
        let n = subs.len();
        for (gi, (_, mut files)) in subs.into_iter().enumerate() {
            files.sort_by(|a, b| a.path.cmp(&b.path));
            let mut seen = std::collections::BTreeSet::new();
            let mut kept = Vec::new();
            for h in files {
                if !h.sop_uid.is_empty() && !seen.insert(h.sop_uid.clone()) {
                    rejects.push((
                        h.path.clone(),
                        Reject::new(
                            "dicom_duplicate_instance",
                            format!("SOPInstanceUID {} already seen in this series", h.sop_uid),
                        ),
                    ));
                } else {
                    kept.push(h);
                }
            }
            let key = if n > 1 {
                format!("{uid}#{gi}")
            } else {
                uid.clone()
            };
            groups.push(SeriesGroup { key, files: kept });
        }
    }
    (groups, rejects)
}

/// Provenance of an assembled series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesInfo {
    /// Files used.
    pub n_files: usize,
    /// Transfer syntax of the first file.
    pub transfer_syntax: String,
    /// RescaleSlope of the first slice.
    pub slope: f64,
    /// RescaleIntercept of the first slice.
    pub intercept: f64,
    /// Whether slope/intercept differ between slices (each slice used its own).
    pub rescale_varies: bool,
    /// Slice spacing from positions (mm).
    pub slice_spacing: f64,
    /// Warnings (e.g. padding mapped, MONOCHROME1 inverted, SliceThickness differs from spacing).
    pub warnings: Vec<String>,
}

/// Tolerances of the slice-spacing checks.
#[derive(Debug, Clone, Copy)]
pub struct SpacingRules {
    /// Relative deviation from the median gap still counted as uniform.
    pub rel_tol: f64,
    /// Absolute deviation (mm) still counted as uniform.
    pub abs_tol: f64,
    /// Largest angle (degrees) between the slice stacking direction and the image normal.
    pub max_tilt_deg: f64,
}

impl Default for SpacingRules {
    fn default() -> Self {
        SpacingRules {
            rel_tol: 0.05,
            abs_tol: 0.02,
            max_tilt_deg: 0.5,
        }
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Orientation, spacing and positions usable before any arithmetic on them: all finite, both
/// direction cosines unit length (within 1%) and orthogonal (within ~1 degree), spacing positive.
fn check_plane_geometry(
    r: [f64; 3],
    c: [f64; 3],
    ps: [f64; 2],
    positions: &[[f64; 3]],
) -> Result<(), Reject> {
    let bad = |m: String| Err(Reject::new("geometry_invalid", m));
    if r.iter().chain(&c).any(|v| !v.is_finite()) {
        return bad(format!("ImageOrientationPatient {r:?} {c:?} is not finite"));
    }
    let (nr, nc) = (dot(r, r).sqrt(), dot(c, c).sqrt());
    if (nr - 1.0).abs() > 0.01 || (nc - 1.0).abs() > 0.01 || dot(r, c).abs() > 0.02 {
        return bad(format!(
            "ImageOrientationPatient {r:?} {c:?}: the row and column cosines must be unit length and orthogonal"
        ));
    }
    if ps.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return bad(format!("PixelSpacing {ps:?} is not positive"));
    }
    if let Some(p) = positions.iter().find(|p| p.iter().any(|v| !v.is_finite())) {
        return bad(format!("ImagePositionPatient {p:?} is not finite"));
    }
    Ok(())
}

fn lps_to_ras(m: [[f64; 4]; 4]) -> [[f64; 4]; 4] {
    let mut r = m;
    for j in 0..4 {
        r[0][j] = -m[0][j];
        r[1][j] = -m[1][j];
    }
    r
}

/// One image plane of a series: a single-frame file, or one frame of an enhanced multi-frame file.
struct Plane<'a> {
    file: &'a SliceHeader,
    frame: usize,
    ipp: [f64; 3],
    slope: f64,
    intercept: f64,
}

impl Plane<'_> {
    fn name(&self) -> String {
        if self.file.frames > 1 {
            format!("{} frame {}", self.file.path.display(), self.frame + 1)
        } else {
            self.file.path.display().to_string()
        }
    }
}

/// Planes, ImageOrientationPatient, PixelSpacing.
type PlanesOf<'a> = (Vec<Plane<'a>>, [f64; 6], [f64; 2]);

/// The planes of a series (its files, or an enhanced object's frames) with their positions and
/// rescale, and the orientation and pixel spacing they share.
fn planes_of(group: &SeriesGroup) -> Result<PlanesOf<'_>, Reject> {
    let files = &group.files;
    let h0 = &files[0];
    let enhanced = files.len() == 1 && h0.frames > 1;
    let (planes, iop, ps): (Vec<Plane>, Option<[f64; 6]>, Option<[f64; 2]>) = if enhanced {
        let g = &h0.frames_geo;
        if g.len() != h0.frames as usize || g.iter().any(|f| f.ipp.is_none()) {
            return Err(Reject::new(
                "dicom_multiframe_unsupported",
                format!(
                    "{}: {} frames without per-frame positions (PerFrameFunctionalGroupsSequence > PlanePositionSequence)",
                    h0.path.display(),
                    h0.frames
                ),
            ));
        }
        let planes = g
            .iter()
            .enumerate()
            .map(|(i, f)| Plane {
                file: h0,
                frame: i,
                ipp: f.ipp.unwrap(),
                slope: f.slope.unwrap_or(h0.slope),
                intercept: f.intercept.unwrap_or(h0.intercept),
            })
            .collect();
        (
            planes,
            g[0].iop.or(h0.iop),
            g[0].pixel_spacing.or(h0.pixel_spacing),
        )
    } else {
        if files.iter().any(|h| h.ipp.is_none()) {
            return Err(Reject::new(
                "dicom_no_geometry",
                "a slice has no ImagePositionPatient",
            ));
        }
        let planes = files
            .iter()
            .map(|h| Plane {
                file: h,
                frame: 0,
                ipp: h.ipp.unwrap(),
                slope: h.slope,
                intercept: h.intercept,
            })
            .collect();
        (planes, h0.iop, h0.pixel_spacing)
    };
    let (Some(iop), Some(ps)) = (iop, ps) else {
        return Err(Reject::new(
            "dicom_no_geometry",
            format!(
                "{}: no ImageOrientationPatient/PixelSpacing",
                h0.path.display()
            ),
        ));
    };
    Ok((planes, iop, ps))
}

/// The planes in order along the normal `n` (position, index) and the slice spacing, after the
/// checks on the stack: no duplicate position, no tilt, uniform gaps (a gap of a whole multiple of
/// the median is a missing slice).
fn stacking(
    planes: &[Plane],
    n: [f64; 3],
    gantry_tilt: Option<f64>,
    rules: &SpacingRules,
) -> Result<(Vec<(f64, usize)>, f64), Reject> {
    let mut order: Vec<(f64, usize)> = planes
        .iter()
        .enumerate()
        .map(|(i, p)| (dot(n, p.ipp), i))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let gaps: Vec<f64> = order.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    if let Some(i) = gaps.iter().position(|g| g.abs() < rules.abs_tol.max(1e-3)) {
        return Err(Reject::new(
            "series_duplicate_slice",
            format!(
                "{} and {} are at the same position ({:.3} mm along the normal)",
                planes[order[i].1].name(),
                planes[order[i + 1].1].name(),
                order[i].0
            ),
        ));
    }
    // Stacking direction vs the image normal.
    let first = planes[order[0].1].ipp;
    let last = planes[order[order.len() - 1].1].ipp;
    let d = [last[0] - first[0], last[1] - first[1], last[2] - first[2]];
    let angle = (dot(d, n) / dot(d, d).sqrt())
        .clamp(-1.0, 1.0)
        .acos()
        .to_degrees();
    let tag_tilt = gantry_tilt.unwrap_or(0.0);
    if angle > rules.max_tilt_deg || tag_tilt.abs() > rules.max_tilt_deg {
        return Err(Reject::new(
            "series_gantry_tilt",
            format!(
                "slices stack {angle:.2} degrees off the image normal (GantryDetectorTilt {tag_tilt}); resampling a tilted acquisition is not supported"
            ),
        ));
    }
    let tol = rules.abs_tol.max(rules.rel_tol * median);
    if let Some((i, g)) = gaps
        .iter()
        .enumerate()
        .find(|(_, g)| (*g - median).abs() > tol)
    {
        let ratio = g / median;
        if ratio > 1.5 && (ratio - ratio.round()).abs() < 0.15 {
            return Err(Reject::new(
                "series_missing_slice",
                format!(
                    "gap of {g:.3} mm after slice {i} is {:.0}x the median {median:.3} mm: {} slice(s) missing",
                    ratio.round(),
                    ratio.round() - 1.0
                ),
            ));
        }
        return Err(Reject::new(
            "series_nonuniform_spacing",
            format!("gap of {g:.3} mm after slice {i}, median {median:.3} mm (tolerance {tol:.3})"),
        ));
    }
    let dz = (order[order.len() - 1].0 - order[0].0) / (order.len() - 1) as f64;
    Ok((order, dz))
}

/// Assembles a series group into a volume (HU for CT), or rejects the whole series with a reason:
/// `series_too_few_slices`, `series_duplicate_slice`, `series_missing_slice`,
/// `series_nonuniform_spacing`, `series_gantry_tilt`, `dicom_no_geometry`, `dicom_truncated`,
/// `dicom_decode_failed`, `dicom_multiframe_unsupported`. Enhanced multi-frame objects (one file,
/// frames positioned by the per-frame functional groups) follow the same rules frame by frame.
pub fn assemble(group: &SeriesGroup, rules: &SpacingRules) -> Result<(Volume, SeriesInfo), Reject> {
    let files = &group.files;
    let h0 = &files[0];
    let enhanced = files.len() == 1 && h0.frames > 1;
    let (planes, iop, ps) = planes_of(group)?;
    if planes.len() < 2 {
        return Err(Reject::new(
            "series_too_few_slices",
            format!(
                "series has {} image(s); a volume needs at least 2",
                planes.len()
            ),
        ));
    }
    let (r, c) = ([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
    check_plane_geometry(r, c, ps, &planes.iter().map(|p| p.ipp).collect::<Vec<_>>())?;
    let n = cross(r, c);
    let nn = dot(n, n).sqrt();
    let n = [n[0] / nn, n[1] / nn, n[2] / nn];
    let (order, dz) = stacking(&planes, n, h0.gantry_tilt, rules)?;
    let (rows, cols) = (h0.rows as usize, h0.cols as usize);
    let plane = rows * cols;
    // Decode (files in parallel; an enhanced object once), rescale per plane straight into the
    // volume in the sorted order: one decoded slice per thread is held, never the whole series.
    use rayon::prelude::*;
    let fill = |dst: &mut [f32], s: &[f64], i: usize| -> Result<(), Reject> {
        if s.len() < plane {
            return Err(Reject::new(
                "dicom_decode_failed",
                format!("{}: {} values, expected {plane}", planes[i].name(), s.len()),
            ));
        }
        let (m, b) = (planes[i].slope, planes[i].intercept);
        for (d, &v) in dst.iter_mut().zip(&s[..plane]) {
            *d = (v * m + b) as f32;
        }
        Ok(())
    };
    let mut data = vec![0f32; plane * order.len()];
    if enhanced {
        let frames = decode_stored(h0)?;
        for (dst, &(_, i)) in data.chunks_mut(plane).zip(&order) {
            fill(dst, &frames[planes[i].frame], i)?;
        }
    } else {
        // Every slice's outcome, then the first failure in slice order (deterministic).
        let outcomes: Vec<Result<(), Reject>> = data
            .par_chunks_mut(plane)
            .zip(order.par_iter())
            .map(|(dst, &(_, i))| {
                let frames = decode_stored(planes[i].file)?;
                fill(dst, frames.first().map(Vec::as_slice).unwrap_or(&[]), i)
            })
            .collect();
        outcomes.into_iter().collect::<Result<(), Reject>>()?;
    }
    let mut warnings = Vec::new();
    let padded = fill_padding(&mut data);
    if padded > 0 {
        warnings.push(format!(
            "{padded} PixelPaddingValue voxel(s) set to the minimum value"
        ));
    }
    if h0.photometric == "MONOCHROME1" {
        warnings.push("MONOCHROME1 inverted".into());
    }
    let thickness = if enhanced {
        h0.frames_geo[0].thickness
    } else {
        h0.slice_thickness
    };
    if let Some(t) = thickness
        && (t - dz).abs() > 0.25 * dz
    {
        warnings.push(format!("SliceThickness {t} differs from the position spacing {dz:.3} (spacing from positions used)"));
    }
    let has_rescale = h0.has_rescale
        || h0
            .frames_geo
            .iter()
            .any(|f| f.slope.is_some() || f.intercept.is_some());
    if !has_rescale && h0.modality == "CT" {
        warnings.push("no RescaleSlope/Intercept: stored values used as HU".into());
    }
    let rescale_varies = planes
        .iter()
        .any(|p| p.slope != planes[0].slope || p.intercept != planes[0].intercept);
    let p0 = planes[order[0].1].ipp;
    let mut lps = [[0.0; 4]; 4];
    for a in 0..3 {
        lps[a][0] = r[a] * ps[1];
        lps[a][1] = c[a] * ps[0];
        lps[a][2] = n[a] * dz;
        lps[a][3] = p0[a];
    }
    lps[3][3] = 1.0;
    Ok((
        Volume {
            dims: [cols, rows, order.len()],
            data,
            affine: lps_to_ras(lps),
        },
        SeriesInfo {
            n_files: files.len(),
            transfer_syntax: h0.transfer_syntax.clone(),
            slope: planes[0].slope,
            intercept: planes[0].intercept,
            rescale_varies,
            slice_spacing: dz,
            warnings,
        },
    ))
}

/// A single image file as a one-slice (or multi-frame) volume: for `inspect` of one file.
/// The slice spacing is SliceThickness (or 1 mm) since one slice has no neighbour.
pub fn single_file_volume(h: &SliceHeader) -> Result<Volume, Reject> {
    let mut frames = decode_file(h)?;
    let (rows, cols) = (h.rows as usize, h.cols as usize);
    let iop = h.iop.unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let (r, c) = ([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
    let n = cross(r, c);
    let ps = h.pixel_spacing.unwrap_or([1.0, 1.0]);
    let dz = h.slice_thickness.filter(|t| *t > 0.0).unwrap_or(1.0);
    let p0 = h.ipp.unwrap_or([0.0; 3]);
    let mut lps = [[0.0; 4]; 4];
    for a in 0..3 {
        lps[a][0] = r[a] * ps[1];
        lps[a][1] = c[a] * ps[0];
        lps[a][2] = n[a] * dz;
        lps[a][3] = p0[a];
    }
    lps[3][3] = 1.0;
    let k = frames.len();
    let mut data = Vec::with_capacity(rows * cols * k);
    for fr in frames.iter_mut() {
        data.extend_from_slice(&fr[..rows * cols]);
    }
    fill_padding(&mut data);
    Ok(Volume {
        dims: [cols, rows, k],
        data,
        affine: lps_to_ras(lps),
    })
}
