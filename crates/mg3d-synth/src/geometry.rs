//! Acquisition geometry: voxel grid, patient orientation, stored-value encoding, and rendering a
//! phantom into HU voxels.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::phantom::{Phantom, Posture};

/// DICOM PatientPosition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PatientPosition {
    /// Head first, supine.
    HFS,
    /// Feet first, supine.
    FFS,
    /// Head first, prone.
    HFP,
    /// Feet first, prone.
    FFP,
}

impl PatientPosition {
    /// The DICOM code string.
    pub fn code(self) -> &'static str {
        match self {
            PatientPosition::HFS => "HFS",
            PatientPosition::FFS => "FFS",
            PatientPosition::HFP => "HFP",
            PatientPosition::FFP => "FFP",
        }
    }
    /// Supine or prone.
    pub fn posture(self) -> Posture {
        match self {
            PatientPosition::HFS | PatientPosition::FFS => Posture::Supine,
            _ => Posture::Prone,
        }
    }
    /// ImageOrientationPatient (row direction, column direction) for axial images in this position.
    pub fn orientation(self) -> ([f64; 3], [f64; 3]) {
        match self {
            PatientPosition::HFS => ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
            PatientPosition::FFS => ([-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
            PatientPosition::HFP => ([-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]),
            PatientPosition::FFP => ([1.0, 0.0, 0.0], [0.0, -1.0, 0.0]),
        }
    }
}

/// How HU are stored: `HU = stored * slope + intercept`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Encoding {
    /// RescaleSlope.
    pub slope: f64,
    /// RescaleIntercept.
    pub intercept: f64,
    /// Stored as signed (PixelRepresentation 1) or unsigned 16 bit.
    pub signed: bool,
}

impl Encoding {
    /// The encodings the generator draws from.
    pub const VARIANTS: [Encoding; 5] = [
        Encoding {
            slope: 1.0,
            intercept: -1024.0,
            signed: true,
        },
        Encoding {
            slope: 1.0,
            intercept: -1024.0,
            signed: false,
        },
        Encoding {
            slope: 1.0,
            intercept: -8192.0,
            signed: false,
        },
        Encoding {
            slope: 0.5,
            intercept: -1024.0,
            signed: false,
        },
        Encoding {
            slope: 0.5,
            intercept: -1024.0,
            signed: true,
        },
    ];
    /// Stored value of an (integer) HU.
    pub fn store(&self, hu: i16) -> u16 {
        let s = ((hu as f64 - self.intercept) / self.slope).round();
        debug_assert!((0.0..=65535.0).contains(&s));
        s as u16
    }
}

/// A voxel grid in patient space.
#[derive(Debug, Clone, Serialize)]
pub struct Grid {
    /// Columns (i).
    pub cols: usize,
    /// Rows (j).
    pub rows: usize,
    /// Slices (k).
    pub slices: usize,
    /// Column spacing (along the row direction), mm.
    pub dx: f64,
    /// Row spacing (along the column direction), mm.
    pub dy: f64,
    /// Slice spacing, mm.
    pub dz: f64,
    /// Row direction (DICOM IOP first triplet), LPS.
    pub row_dir: [f64; 3],
    /// Column direction (IOP second triplet), LPS.
    pub col_dir: [f64; 3],
    /// Slice direction: row_dir x col_dir, possibly tilted for gantry tilt faults.
    pub slice_dir: [f64; 3],
    /// Position of voxel (0,0,0), LPS mm.
    pub origin: [f64; 3],
    /// Slice positions along slice_dir relative to the origin (normally k*dz).
    pub slice_offsets: Vec<f64>,
}

/// Cross product.
pub fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

impl Grid {
    /// An axial grid covering `fov` (x, y) mm and `len` mm along z, centred on the origin with a shift.
    pub fn axial(
        pos: PatientPosition,
        dx: f64,
        dz: f64,
        fov: [f64; 2],
        len: f64,
        shift: [f64; 3],
    ) -> Grid {
        let (row_dir, col_dir) = pos.orientation();
        let slice_dir = cross(row_dir, col_dir);
        let cols = (fov[0] / dx).ceil() as usize;
        let rows = (fov[1] / dx).ceil() as usize;
        let slices = ((len / dz).floor() as usize).max(2);
        let half = |n: usize, d: f64| (n as f64 - 1.0) * d / 2.0;
        let mut origin = [0.0; 3];
        for ax in 0..3 {
            origin[ax] = shift[ax]
                - row_dir[ax] * half(cols, dx)
                - col_dir[ax] * half(rows, dx)
                - slice_dir[ax] * half(slices, dz);
        }
        Grid {
            cols,
            rows,
            slices,
            dx,
            dy: dx,
            dz,
            row_dir,
            col_dir,
            slice_dir,
            origin,
            slice_offsets: (0..slices).map(|k| k as f64 * dz).collect(),
        }
    }

    /// Patient (LPS) position of voxel (i, j, k).
    #[inline]
    pub fn world(&self, i: usize, j: usize, k: usize) -> [f64; 3] {
        let (fi, fj, fk) = (
            i as f64 * self.dx,
            j as f64 * self.dy,
            self.slice_offsets[k],
        );
        let mut p = [0.0; 3];
        for ax in 0..3 {
            p[ax] = self.origin[ax]
                + fi * self.row_dir[ax]
                + fj * self.col_dir[ax]
                + fk * self.slice_dir[ax];
        }
        p
    }

    /// ImagePositionPatient of slice k.
    pub fn slice_position(&self, k: usize) -> [f64; 3] {
        self.world(0, 0, k)
    }

    /// Voxel (i, j, k) -> RAS mm affine (4x4, row-major), valid for uniform slice spacing.
    pub fn affine_ras(&self) -> [[f64; 4]; 4] {
        let mut m = [[0.0; 4]; 4];
        for ax in 0..3 {
            let flip = if ax < 2 { -1.0 } else { 1.0 };
            m[ax][0] = flip * self.row_dir[ax] * self.dx;
            m[ax][1] = flip * self.col_dir[ax] * self.dy;
            m[ax][2] = flip * self.slice_dir[ax] * self.dz;
            m[ax][3] = flip * self.origin[ax];
        }
        m[3][3] = 1.0;
        m
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.cols * self.rows * self.slices
    }

    /// True when the grid has no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Renders a phantom into integer HU voxels in (k, j, i) order (slice-major, then row, then column),
/// with Gaussian noise, clamped to [-1024, 3071]. Deterministic for a seed, whatever the thread count.
pub fn render(ph: &Phantom, grid: &Grid, seed: u64) -> Vec<i16> {
    let plane = grid.cols * grid.rows;
    let mut out = vec![0i16; grid.len()];
    out.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(k, slice)| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for j in 0..grid.rows {
                for i in 0..grid.cols {
                    let p = grid.world(i, j, k);
                    let mut hu = ph.hu(p);
                    if hu > -1000.0 || ph.noise_sd > 0.0 {
                        // Box-Muller; air gets noise too (real scanners do), then the clamp at -1024.
                        let u1: f64 = rng.random::<f64>().max(1e-12);
                        let u2: f64 = rng.random();
                        hu += ph.noise_sd
                            * (-2.0 * u1.ln()).sqrt()
                            * (std::f64::consts::TAU * u2).cos();
                    }
                    slice[j * grid.cols + i] = hu.round().clamp(-1024.0, 3071.0) as i16;
                }
            }
        });
    out
}
