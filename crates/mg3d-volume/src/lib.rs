//! mg3d-volume: CT volumes with correct intensities and geometry (DICOM is read by mg3d-dicom,
//! the ingest and preprocess stages are in mg3d-ingest).
//!
//! - [`Volume`]: voxels in (k, j, i) order (i fastest) with a voxel (i, j, k) -> RAS mm affine
//!   (nibabel's convention), so every consumer sees one layout.
//! - [`nifti_header`], [`nifti_io`]: NIfTI-1/2 reading (both byte orders, nibabel's vox_offset and
//!   scaling rules, dims checked against a voxel limit before any allocation; sform when
//!   sform_code > 0, else qform, else pixdim; scl applied exactly once; 4D, NaN, corrupt gzip
//!   rejected with reasons; a single-member gzip file inflated in one call).
//! - [`nifti_write`], [`gz`]: int16 NIfTI-1 writing, gzip (libdeflate, whole buffers) or plain.
//! - [`check_geometry`]: the one validation every volume passes before use (finite, non-degenerate
//!   axes, plausible spacing).
//! - [`Reject`], [`catch_panic`]: a reasoned reject, and one item's panic turned into one.
//! - [`ops`]: reorientation to RAS, trilinear/nearest resampling, HU windowing, crop/pad, and the
//!   separable fused resample + centre crop and resize the presets use.

#![allow(clippy::needless_range_loop)] // matrix and voxel code reads better with indices

pub mod gz;
pub mod nifti_header;
pub mod nifti_io;
pub mod nifti_write;
pub mod ops;

use serde::Serialize;

/// Why an input could not be used: a stable code for rejects tables, and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Reject {
    /// Stable reason code (e.g. `series_missing_slice`).
    pub code: &'static str,
    /// What was found, naming the file or value.
    pub message: String,
}

impl Reject {
    /// A reject with a code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Reject {
            code,
            message: message.into(),
        }
    }
}

/// Writing a volume failed (reading one gives a [`Reject`] instead: a bad input is data, not an
/// error).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The NIfTI file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The reject of an item whose work panicked. The panic's message is not kept: it may quote the
/// input (a file name, a header value).
pub fn internal_error() -> Reject {
    Reject::new(
        "internal_error",
        "reading this input hit an internal error (a bug in mg3d; please report it with the reason code)",
    )
}

/// The `content_hash` of volume tables: blake3 of the int16 voxels as little-endian bytes.
pub fn content_hash(le_bytes: &[u8]) -> String {
    blake3::hash(le_bytes).to_hex().to_string()
}

/// A value as the int16 volume files store it: rounded half away from zero, clamped (NaN -> 0).
/// The same as `x.round().clamp(-32768.0, 32767.0) as i16` (x + 0.5 is exact in f64, and the
/// cast truncates), without a libm call or a branch per voxel.
#[inline]
pub fn round_i16(x: f32) -> i16 {
    let c = x.clamp(-32768.0, 32767.0) as f64;
    (c + 0.5f64.copysign(c)) as i32 as i16
}

/// Runs one item's work; a panic in it becomes `on_panic(internal_error())` instead of unwinding
/// through the stage.
pub fn catch_panic<T>(work: impl FnOnce() -> T, on_panic: impl FnOnce(Reject) -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
        .unwrap_or_else(|_| on_panic(internal_error()))
}

/// A 3D scalar volume in patient space.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Size along i, j, k.
    pub dims: [usize; 3],
    /// Values in (k, j, i) order: index = i + dims[0] * (j + dims[1] * k).
    pub data: Vec<f32>,
    /// Voxel (i, j, k) -> RAS mm, row-major 4x4.
    pub affine: [[f64; 4]; 4],
}

/// Summary statistics of a volume's values (f64 accumulation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Sum.
    pub sum: f64,
}

impl Volume {
    /// A volume filled with `value`.
    pub fn filled(dims: [usize; 3], affine: [[f64; 4]; 4], value: f32) -> Volume {
        Volume {
            dims,
            data: vec![value; dims[0] * dims[1] * dims[2]],
            affine,
        }
    }

    /// Linear index of (i, j, k).
    #[inline]
    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        i + self.dims[0] * (j + self.dims[1] * k)
    }

    /// Value at (i, j, k).
    #[inline]
    pub fn get(&self, i: usize, j: usize, k: usize) -> f32 {
        self.data[self.index(i, j, k)]
    }

    /// Voxel spacing along i, j, k (column norms of the affine).
    pub fn spacing(&self) -> [f64; 3] {
        spacing_of(&self.affine)
    }

    /// [`check_geometry`] of this volume's affine.
    pub fn check_geometry(&self) -> Result<(), Reject> {
        check_geometry(&self.affine)
    }

    /// Orientation codes as nibabel's `aff2axcodes` gives them (e.g. "RAS", "LPS").
    pub fn axcodes(&self) -> String {
        axcodes(&self.affine)
    }

    /// Min, max, mean and sum of the values.
    pub fn stats(&self) -> Stats {
        use rayon::prelude::*;
        // Fixed-size chunks: the same sum whatever the thread count.
        let parts: Vec<(f32, f32, f64)> = self
            .data
            .par_chunks(1 << 16)
            .map(|c| {
                let (mut min, mut max, mut sum) = (f32::INFINITY, f32::NEG_INFINITY, 0.0f64);
                for &v in c {
                    min = min.min(v);
                    max = max.max(v);
                    sum += v as f64;
                }
                (min, max, sum)
            })
            .collect();
        let (mut min, mut max, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
        for (a, b, s) in parts {
            min = min.min(a as f64);
            max = max.max(b as f64);
            sum += s;
        }
        let n = self.data.len().max(1) as f64;
        Stats {
            min,
            max,
            mean: sum / n,
            sum,
        }
    }

    /// Mean, standard deviation (population) and the fraction of values above `threshold`, summed
    /// in fixed-size chunks (in parallel, the same result whatever the thread count).
    pub fn moments(&self, threshold: f32) -> (f64, f64, f64) {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        let n = self.data.len().max(1) as f64;
        let parts: Vec<(f64, usize)> = self
            .data
            .par_chunks(CHUNK)
            .map(|c| {
                let sum = c.iter().map(|&x| x as f64).sum::<f64>();
                (sum, c.iter().filter(|&&x| x > threshold).count())
            })
            .collect();
        let mean = parts.iter().map(|p| p.0).sum::<f64>() / n;
        let above = parts.iter().map(|p| p.1).sum::<usize>() as f64 / n;
        let var = self
            .data
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>())
            .collect::<Vec<f64>>()
            .iter()
            .sum::<f64>()
            / n;
        (mean, var.sqrt(), above)
    }

    /// RAS position of voxel (i, j, k) (fractional indices allowed).
    pub fn world(&self, ijk: [f64; 3]) -> [f64; 3] {
        let a = &self.affine;
        let mut p = [0.0; 3];
        for (r, out) in p.iter_mut().enumerate() {
            *out = a[r][0] * ijk[0] + a[r][1] * ijk[1] + a[r][2] * ijk[2] + a[r][3];
        }
        p
    }
}

/// Column norms of a 4x4 affine's 3x3 part.
pub fn spacing_of(a: &[[f64; 4]; 4]) -> [f64; 3] {
    let mut s = [0.0; 3];
    for (c, out) in s.iter_mut().enumerate() {
        *out = (a[0][c] * a[0][c] + a[1][c] * a[1][c] + a[2][c] * a[2][c]).sqrt();
    }
    s
}

/// Smallest voxel spacing accepted (mm): below it the header is in other units or broken.
pub const MIN_SPACING_MM: f64 = 0.01;
/// Largest voxel spacing accepted (mm).
pub const MAX_SPACING_MM: f64 = 100.0;

/// Checks a voxel -> RAS affine before any use: every entry finite, the last row (0, 0, 0, 1),
/// each axis's spacing within [`MIN_SPACING_MM`, `MAX_SPACING_MM`], and the three axes spanning
/// space (|det| of the direction matrix at least 0.5, so no axis repeats or vanishes; 1 for
/// orthonormal axes, cos(tilt) for a gantry-tilted stack). Rejects name what is wrong
/// (`geometry_invalid`).
pub fn check_geometry(a: &[[f64; 4]; 4]) -> Result<(), Reject> {
    let bad = |m: String| Err(Reject::new("geometry_invalid", m));
    if a.iter().flatten().any(|v| !v.is_finite()) {
        return bad(format!("the affine has a non-finite entry: {a:?}"));
    }
    let sp = spacing_of(a);
    for (axis, s) in sp.iter().enumerate() {
        if !(MIN_SPACING_MM..=MAX_SPACING_MM).contains(s) {
            return bad(format!(
                "spacing along axis {axis} is {s} mm (accepted: {MIN_SPACING_MM} to {MAX_SPACING_MM})"
            ));
        }
    }
    let d = |r: usize, c: usize| a[r][c] / sp[c];
    let det = d(0, 0) * (d(1, 1) * d(2, 2) - d(1, 2) * d(2, 1))
        - d(0, 1) * (d(1, 0) * d(2, 2) - d(1, 2) * d(2, 0))
        + d(0, 2) * (d(1, 0) * d(2, 1) - d(1, 1) * d(2, 0));
    if det.abs() < 0.5 {
        return bad(format!(
            "the voxel axes do not span space (|det| of the directions is {:.3}): degenerate orientation",
            det.abs()
        ));
    }
    Ok(())
}

/// For each voxel axis, the world axis it runs closest to and its sign (a greedy version of
/// nibabel's io_orientation, exact for the axis-aligned and mildly oblique affines of CT).
pub fn axis_map(a: &[[f64; 4]; 4]) -> [(usize, f64); 3] {
    let sp = spacing_of(a);
    let mut used = [false; 3];
    let mut out = [(0, 1.0); 3];
    // Assign voxel axes in order of how clearly they point along one world axis.
    let mut order: Vec<usize> = (0..3).collect();
    let strength = |c: usize| {
        (0..3)
            .map(|r| (a[r][c] / sp[c].max(1e-12)).abs())
            .fold(0.0, f64::max)
    };
    order.sort_by(|&x, &y| strength(y).total_cmp(&strength(x)));
    for c in order {
        let (mut best, mut bv) = (0, -1.0);
        for r in 0..3 {
            if !used[r] && a[r][c].abs() > bv {
                best = r;
                bv = a[r][c].abs();
            }
        }
        used[best] = true;
        out[c] = (best, a[best][c].signum());
    }
    out
}

/// nibabel-style orientation codes of an affine ("RAS" means i->Right, j->Anterior, k->Superior).
pub fn axcodes(a: &[[f64; 4]; 4]) -> String {
    axis_map(a)
        .iter()
        .map(|&(w, s)| match (w, s > 0.0) {
            (0, true) => 'R',
            (0, false) => 'L',
            (1, true) => 'A',
            (1, false) => 'P',
            (_, true) => 'S',
            (_, false) => 'I',
        })
        .collect()
}
