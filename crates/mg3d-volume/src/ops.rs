//! Volume operations: reorient to RAS, resample, window, crop/pad.

use rayon::prelude::*;

use crate::{Volume, axis_map};

/// Permutes and flips axes so that i -> Right, j -> Anterior, k -> Superior (exact, no
/// interpolation). The affine is updated so world positions are unchanged.
pub fn reorient_ras(v: &Volume) -> Volume {
    let map = axis_map(&v.affine);
    // For output axis w (0=R,1=A,2=S): which input axis and whether to flip.
    let mut src = [(0usize, false); 3];
    for (c, &(w, sign)) in map.iter().enumerate() {
        src[w] = (c, sign < 0.0);
    }
    let in_dims = v.dims;
    let dims = [in_dims[src[0].0], in_dims[src[1].0], in_dims[src[2].0]];
    let mut data = vec![0f32; v.data.len()];
    data.par_chunks_mut(dims[0] * dims[1])
        .enumerate()
        .for_each(|(k, plane)| {
            let mut idx = [0usize; 3];
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    for (w, o) in [i, j, k].into_iter().enumerate() {
                        let (axis, flip) = src[w];
                        idx[axis] = if flip { in_dims[axis] - 1 - o } else { o };
                    }
                    plane[i + dims[0] * j] =
                        v.data[idx[0] + in_dims[0] * (idx[1] + in_dims[1] * idx[2])];
                }
            }
        });
    // New affine: column w = +/- old column src[w].0; origin = world of the new (0,0,0).
    let mut a = [[0.0; 4]; 4];
    let mut origin_idx = [0.0; 3];
    for w in 0..3 {
        let (axis, flip) = src[w];
        for r in 0..3 {
            a[r][w] = if flip {
                -v.affine[r][axis]
            } else {
                v.affine[r][axis]
            };
        }
        origin_idx[axis] = if flip {
            (in_dims[axis] - 1) as f64
        } else {
            0.0
        };
    }
    let o = v.world(origin_idx);
    for r in 0..3 {
        a[r][3] = o[r];
    }
    a[3][3] = 1.0;
    Volume {
        dims,
        data,
        affine: a,
    }
}

/// Interpolation for [`resample`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interp {
    /// Trilinear (images).
    Linear,
    /// Nearest neighbour (masks, labels).
    Nearest,
}

/// Resamples an axis-aligned volume (after [`reorient_ras`]) to `spacing` mm, covering the same
/// physical extent (voxel centres aligned at the first voxel). Outside values take `fill`.
pub fn resample(v: &Volume, spacing: [f64; 3], interp: Interp, fill: f32) -> Volume {
    let sp = v.spacing();
    let dims: [usize; 3] = std::array::from_fn(|a| {
        (((v.dims[a] as f64 - 1.0) * sp[a] / spacing[a]).floor() as usize + 1).max(1)
    });
    let scale: [f64; 3] = std::array::from_fn(|a| spacing[a] / sp[a]);
    let mut data = vec![0f32; dims[0] * dims[1] * dims[2]];
    let src = |i: isize, j: isize, k: isize| -> f32 {
        if i < 0
            || j < 0
            || k < 0
            || i as usize >= v.dims[0]
            || j as usize >= v.dims[1]
            || k as usize >= v.dims[2]
        {
            fill
        } else {
            v.get(i as usize, j as usize, k as usize)
        }
    };
    data.par_chunks_mut(dims[0] * dims[1])
        .enumerate()
        .for_each(|(k, plane)| {
            let z = k as f64 * scale[2];
            for j in 0..dims[1] {
                let y = j as f64 * scale[1];
                for i in 0..dims[0] {
                    let x = i as f64 * scale[0];
                    plane[i + dims[0] * j] = match interp {
                        Interp::Nearest => {
                            src(x.round() as isize, y.round() as isize, z.round() as isize)
                        }
                        Interp::Linear => {
                            let (x0, y0, z0) = (x.floor(), y.floor(), z.floor());
                            let (fx, fy, fz) = ((x - x0) as f32, (y - y0) as f32, (z - z0) as f32);
                            let (x0, y0, z0) = (x0 as isize, y0 as isize, z0 as isize);
                            let mut acc = 0f32;
                            for (dz, wz) in [(0, 1.0 - fz), (1, fz)] {
                                if wz == 0.0 {
                                    continue;
                                }
                                for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
                                    if wy == 0.0 {
                                        continue;
                                    }
                                    for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                                        if wx == 0.0 {
                                            continue;
                                        }
                                        acc += wx * wy * wz * src(x0 + dx, y0 + dy, z0 + dz);
                                    }
                                }
                            }
                            acc
                        }
                    };
                }
            }
        });
    let mut a = v.affine;
    for r in 0..3 {
        for c in 0..3 {
            a[r][c] = v.affine[r][c] * scale[c];
        }
    }
    Volume {
        dims,
        data,
        affine: a,
    }
}

/// Clamps values to [lo, hi].
pub fn window(v: &mut Volume, lo: f32, hi: f32) {
    v.data.par_iter_mut().for_each(|x| *x = x.clamp(lo, hi));
}

/// Crops or pads (with `fill`) to `shape` around `center` (voxel indices), keeping the affine true.
pub fn crop_pad(v: &Volume, shape: [usize; 3], center: [f64; 3], fill: f32) -> Volume {
    let start: [isize; 3] =
        std::array::from_fn(|a| (center[a] - shape[a] as f64 / 2.0).round() as isize);
    let mut data = vec![fill; shape[0] * shape[1] * shape[2]];
    data.par_chunks_mut(shape[0] * shape[1])
        .enumerate()
        .for_each(|(k, plane)| {
            let sk = start[2] + k as isize;
            if sk < 0 || sk as usize >= v.dims[2] {
                return;
            }
            for j in 0..shape[1] {
                let sj = start[1] + j as isize;
                if sj < 0 || sj as usize >= v.dims[1] {
                    continue;
                }
                for i in 0..shape[0] {
                    let si = start[0] + i as isize;
                    if si >= 0 && (si as usize) < v.dims[0] {
                        plane[i + shape[0] * j] = v.get(si as usize, sj as usize, sk as usize);
                    }
                }
            }
        });
    let o = v.world([start[0] as f64, start[1] as f64, start[2] as f64]);
    let mut a = v.affine;
    for r in 0..3 {
        a[r][3] = o[r];
    }
    Volume {
        dims: shape,
        data,
        affine: a,
    }
}

/// Bounding box (voxel index min/max per axis) of values above `threshold`, or None.
pub fn foreground_box(v: &Volume, threshold: f32) -> Option<([usize; 3], [usize; 3])> {
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    let mut any = false;
    for k in 0..v.dims[2] {
        for j in 0..v.dims[1] {
            for i in 0..v.dims[0] {
                if v.get(i, j, k) > threshold {
                    any = true;
                    for (a, x) in [i, j, k].into_iter().enumerate() {
                        lo[a] = lo[a].min(x);
                        hi[a] = hi[a].max(x);
                    }
                }
            }
        }
    }
    any.then_some((lo, hi))
}
