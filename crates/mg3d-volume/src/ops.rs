//! Volume operations: reorient to RAS, resample, window, crop/pad.

use rayon::prelude::*;

use crate::{Volume, axis_map, spacing_of};

/// How a volume's voxel axes map onto RAS: for RAS axis w (0 = R, 1 = A, 2 = S), the source axis
/// and whether it runs backwards; the RAS-ordered dims and the affine of the RAS-ordered grid.
struct RasFrame {
    src: [(usize, bool); 3],
    dims: [usize; 3],
    affine: [[f64; 4]; 4],
}

fn ras_frame(v: &Volume) -> RasFrame {
    let map = axis_map(&v.affine);
    let mut src = [(0usize, false); 3];
    for (c, &(w, sign)) in map.iter().enumerate() {
        src[w] = (c, sign < 0.0);
    }
    let dims = [v.dims[src[0].0], v.dims[src[1].0], v.dims[src[2].0]];
    // Column w = +/- old column src[w].0; origin = world of the new (0,0,0).
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
        origin_idx[axis] = if flip { (v.dims[axis] - 1) as f64 } else { 0.0 };
    }
    let o = v.world(origin_idx);
    for r in 0..3 {
        a[r][3] = o[r];
    }
    a[3][3] = 1.0;
    RasFrame {
        src,
        dims,
        affine: a,
    }
}

/// Permutes and flips axes so that i -> Right, j -> Anterior, k -> Superior (exact, no
/// interpolation). The affine is updated so world positions are unchanged.
pub fn reorient_ras(v: &Volume) -> Volume {
    let RasFrame {
        src,
        dims,
        affine: a,
    } = ras_frame(v);
    let in_dims = v.dims;
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

/// Voxels along each axis of a grid of `dims` at `sp` mm resampled to `spacing` mm over the same
/// extent (the first voxel's centre kept).
fn grid_dims(dims: [usize; 3], sp: [f64; 3], spacing: [f64; 3]) -> [usize; 3] {
    std::array::from_fn(|a| {
        (((dims[a] as f64 - 1.0) * sp[a] / spacing[a]).floor() as usize + 1).max(1)
    })
}

/// The R, A, S dims of `v` after [`reorient_ras`] and [`resample`] to `spacing` mm.
pub fn resampled_dims(v: &Volume, spacing: [f64; 3]) -> [usize; 3] {
    let f = ras_frame(v);
    grid_dims(f.dims, spacing_of(&f.affine), spacing)
}

/// Resamples an axis-aligned volume (after [`reorient_ras`]) to `spacing` mm, covering the same
/// physical extent (voxel centres aligned at the first voxel). Outside values take `fill`.
pub fn resample(v: &Volume, spacing: [f64; 3], interp: Interp, fill: f32) -> Volume {
    let sp = v.spacing();
    let dims = grid_dims(v.dims, sp, spacing);
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

/// One output position of a separable linear resampling along one axis: the two source indices
/// and their weights, or outside the source (the fill value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tap {
    /// Outside the source grid.
    Fill,
    /// `w0 * src[i0] + w1 * src[i1]`.
    Lerp {
        /// First source index.
        i0: usize,
        /// Its weight.
        w0: f32,
        /// Second source index (equal to `i0` when `w1` is 0).
        i1: usize,
        /// Its weight.
        w1: f32,
    },
}

impl Tap {
    /// Linear interpolation at source position `x` (in `0..=n-1`), index `map`ped (e.g. flipped).
    fn at(x: f64, n: usize, map: impl Fn(usize) -> usize) -> Tap {
        let x0 = x.floor();
        let f = (x - x0) as f32;
        let i0 = (x0 as usize).min(n - 1);
        let i1 = if f == 0.0 { i0 } else { (i0 + 1).min(n - 1) };
        Tap::Lerp {
            i0: map(i0),
            w0: 1.0 - f,
            i1: map(i1),
            w1: f,
        }
    }
}

/// Applies per-axis taps (`taps[c]` for source axis c) one output plane (along source axis k) at
/// a time: the two source planes blended along k, its rows blended along j, then gathered along i,
/// in two small per-thread scratch buffers. The result is laid out with output axis w taken from
/// source axis `order[w]`. Trilinear interpolation is the product of the three 1-D ones, so this
/// equals sampling the eight neighbours at once, up to float rounding, for a fraction of the work
/// and without full-size intermediates.
fn separable(v: &Volume, taps: &[Vec<Tap>; 3], order: [usize; 3], fill: f32) -> Vec<f32> {
    let [n0, n1, _] = v.dims;
    let m = [taps[0].len(), taps[1].len(), taps[2].len()];
    let scratch = || (vec![0f32; n0 * n1], vec![0f32; n0 * m[1]]);
    let plane = |(s1, s2): &mut (Vec<f32>, Vec<f32>), q2: usize, out: &mut [f32]| {
        if taps[2][q2] == Tap::Fill {
            out.fill(fill);
            return;
        }
        lerp_into(s1, &v.data, n0 * n1, &taps[2][q2], fill);
        for (row, tap) in s2.chunks_mut(n0).zip(&taps[1]) {
            lerp_into(row, s1, n0, tap, fill);
        }
        for (orow, src) in out.chunks_mut(m[0]).zip(s2.chunks(n0)) {
            for (o, tap) in orow.iter_mut().zip(&taps[0]) {
                *o = lerp1(src, tap, fill);
            }
        }
    };
    let mut planes = vec![0f32; m[0] * m[1] * m[2]];
    planes
        .par_chunks_mut(m[0] * m[1])
        .enumerate()
        .for_each_init(scratch, |s, (q2, out)| plane(s, q2, out));
    if order == [0, 1, 2] {
        return planes;
    }
    // Permuted axes: scatter into the output order.
    let out_dims = [m[order[0]], m[order[1]], m[order[2]]];
    let stride_out = [1, out_dims[0], out_dims[0] * out_dims[1]];
    let mut stride = [0usize; 3];
    for w in 0..3 {
        stride[order[w]] = stride_out[w];
    }
    let mut out = vec![0f32; planes.len()];
    for (q2, p) in planes.chunks(m[0] * m[1]).enumerate() {
        for (q1, row) in p.chunks(m[0]).enumerate() {
            let base = q1 * stride[1] + q2 * stride[2];
            for (q0, &x) in row.iter().enumerate() {
                out[base + q0 * stride[0]] = x;
            }
        }
    }
    out
}

/// `dst = w0 * src[i0 block] + w1 * src[i1 block]` for blocks of `len` values, or the fill.
#[inline]
fn lerp_into(dst: &mut [f32], src: &[f32], len: usize, tap: &Tap, fill: f32) {
    match *tap {
        Tap::Fill => dst.fill(fill),
        Tap::Lerp { i0, w0, i1, w1 } => {
            let a = &src[i0 * len..][..len];
            if w1 == 0.0 {
                for (d, &x) in dst.iter_mut().zip(a) {
                    *d = w0 * x;
                }
            } else {
                let b = &src[i1 * len..][..len];
                for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
                    *d = w0 * x + w1 * y;
                }
            }
        }
    }
}

#[inline]
fn lerp1(src: &[f32], tap: &Tap, fill: f32) -> f32 {
    match *tap {
        Tap::Fill => fill,
        Tap::Lerp { i0, w0, i1, w1 } => {
            if w1 == 0.0 {
                w0 * src[i0]
            } else {
                w0 * src[i0] + w1 * src[i1]
            }
        }
    }
}

/// Reorients to RAS, resamples trilinearly to `spacing` mm (the grid of [`resample`]) and keeps
/// the `shape` box centred on that grid (as [`crop_pad`] around its centre, padding with `fill`),
/// computing only the kept voxels in three separable passes over the source. Returns the box and
/// the RAS position (mm) of the resampled grid's centre.
///
/// Equals `crop_pad(&resample(&reorient_ras(v), spacing, Interp::Linear, fill), shape,
/// centre + 0.5, fill)` up to float rounding, without the two full-size intermediates.
pub fn resample_center_crop(
    v: &Volume,
    spacing: [f64; 3],
    shape: [usize; 3],
    fill: f32,
) -> (Volume, [f64; 3]) {
    let f = ras_frame(v);
    let sp = spacing_of(&f.affine);
    let scale: [f64; 3] = std::array::from_fn(|w| spacing[w] / sp[w]);
    // The resampled grid (as `resample`), its centre and the box's first voxel (as `crop_pad`).
    let rd = grid_dims(f.dims, sp, spacing);
    let center: [f64; 3] = std::array::from_fn(|w| (rd[w] as f64 - 1.0) / 2.0);
    let start: [isize; 3] =
        std::array::from_fn(|w| (center[w] + 0.5 - shape[w] as f64 / 2.0).round() as isize);
    let mut taps: [Vec<Tap>; 3] = Default::default();
    let mut order = [0usize; 3];
    for w in 0..3 {
        let (c, flip) = f.src[w];
        order[w] = c;
        let n = v.dims[c];
        taps[c] = (0..shape[w])
            .map(|o| {
                let r = start[w] + o as isize;
                if r < 0 || r as usize >= rd[w] {
                    return Tap::Fill;
                }
                let x = (r as f64 * scale[w]).min((n - 1) as f64);
                Tap::at(x, n, |i| if flip { n - 1 - i } else { i })
            })
            .collect();
    }
    let data = separable(v, &taps, order, fill);
    // The resampled grid's affine, then the box's origin.
    let mut a = f.affine;
    for r in 0..3 {
        for c in 0..3 {
            a[r][c] = f.affine[r][c] * scale[c];
        }
    }
    let grid = Volume {
        dims: rd,
        data: Vec::new(),
        affine: a,
    };
    (
        sub_grid(&grid, start.map(|x| x as f64), shape, data),
        grid.world(center),
    )
}

/// Resizes to `shape` with trilinear interpolation, align_corners = false (PyTorch's
/// `F.interpolate` convention, edges clamped), in three separable passes; the affine keeps world
/// positions of voxel centres consistent.
pub fn resize(v: &Volume, shape: [usize; 3]) -> Volume {
    let scale: [f64; 3] = std::array::from_fn(|a| v.dims[a] as f64 / shape[a] as f64);
    let taps: [Vec<Tap>; 3] = std::array::from_fn(|a| {
        let n = v.dims[a];
        (0..shape[a])
            .map(|o| {
                let x = ((o as f64 + 0.5) * scale[a] - 0.5).clamp(0.0, (n - 1) as f64);
                Tap::at(x, n, |i| i)
            })
            .collect()
    });
    let data = separable(v, &taps, [0, 1, 2], 0.0);
    let mut a = v.affine;
    // Output voxel o sits at input index (o + 0.5) * s - 0.5.
    let o = v.world(std::array::from_fn(|c| 0.5 * scale[c] - 0.5));
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

/// Clamps values to [lo, hi].
pub fn window(v: &mut Volume, lo: f32, hi: f32) {
    // Blocks, so the per-value loop is this crate's code (optimised), not a call per value.
    v.data.par_chunks_mut(1 << 16).for_each(|c| {
        for x in c {
            *x = x.clamp(lo, hi);
        }
    });
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
    sub_grid(v, start.map(|x| x as f64), shape, data)
}

/// A volume of `dims` holding `data` on `grid`'s lattice, its first voxel at voxel `start` of
/// `grid`.
fn sub_grid(grid: &Volume, start: [f64; 3], dims: [usize; 3], data: Vec<f32>) -> Volume {
    let o = grid.world(start);
    let mut affine = grid.affine;
    for r in 0..3 {
        affine[r][3] = o[r];
    }
    Volume { dims, data, affine }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A volume of smooth-plus-jagged values (so interpolation errors show) on `affine`.
    fn volume(dims: [usize; 3], affine: [[f64; 4]; 4]) -> Volume {
        let mut v = Volume::filled(dims, affine, 0.0);
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    let idx = v.index(i, j, k);
                    v.data[idx] = (i * 7 + j * 13 + k * 29) as f32 % 97.0 - 40.0 + i as f32 * 0.5;
                }
            }
        }
        v
    }

    fn max_diff(a: &Volume, b: &Volume) -> f32 {
        assert_eq!(a.dims, b.dims);
        for r in 0..4 {
            for c in 0..4 {
                assert!(
                    (a.affine[r][c] - b.affine[r][c]).abs() < 1e-9,
                    "{:?} vs {:?}",
                    a.affine,
                    b.affine
                );
            }
        }
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn fused_resample_and_crop_equal_the_three_steps() {
        let lps = [
            [-0.7, 0.0, 0.0, 30.0],
            [0.0, -0.8, 0.0, 20.0],
            [0.0, 0.0, 2.5, -40.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        // Voxel axes permuted: i -> S, j -> R (backwards), k -> A.
        let permuted = [
            [0.0, -0.9, 0.0, 10.0],
            [0.0, 0.0, 1.2, -5.0],
            [1.7, 0.0, 0.0, 3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        for (affine, dims) in [(lps, [23, 19, 11]), (permuted, [13, 21, 17])] {
            let v = volume(dims, affine);
            for (spacing, shape) in [
                ([0.75, 0.75, 1.5], [20, 16, 18]),
                ([1.1, 0.5, 2.0], [9, 40, 7]),
            ] {
                let fill = -1000.0;
                let r = resample(&reorient_ras(&v), spacing, Interp::Linear, fill);
                let center: [f64; 3] = std::array::from_fn(|a| (r.dims[a] as f64 - 1.0) / 2.0);
                let want = crop_pad(&r, shape, center.map(|c| c + 0.5), fill);
                let (got, c) = resample_center_crop(&v, spacing, shape, fill);
                assert!(max_diff(&got, &want) < 1e-3, "{spacing:?} {shape:?}");
                let wc = r.world(center);
                assert!((0..3).all(|a| (c[a] - wc[a]).abs() < 1e-9));
            }
        }
    }

    #[test]
    fn separable_resize_equals_trilinear_sampling() {
        let v = volume(
            [17, 12, 9],
            [
                [0.7, 0.0, 0.0, 1.0],
                [0.0, 0.7, 0.0, 2.0],
                [0.0, 0.0, 1.5, 3.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        for shape in [[8, 20, 9], [17, 12, 9], [33, 5, 13]] {
            let got = resize(&v, shape);
            // The definition: PyTorch's align_corners = false, edges clamped, eight neighbours.
            let s: [f64; 3] = std::array::from_fn(|a| v.dims[a] as f64 / shape[a] as f64);
            for k in 0..shape[2] {
                for j in 0..shape[1] {
                    for i in 0..shape[0] {
                        let p: [f64; 3] = std::array::from_fn(|a| {
                            (([i, j, k][a] as f64 + 0.5) * s[a] - 0.5).max(0.0)
                        });
                        let mut acc = 0.0f64;
                        for corner in 0..8 {
                            let mut w = 1.0;
                            let mut idx = [0usize; 3];
                            for a in 0..3 {
                                let (x0, f) = (p[a].floor(), p[a] - p[a].floor());
                                let up = corner >> a & 1 == 1;
                                w *= if up { f } else { 1.0 - f };
                                idx[a] = ((x0 as usize) + up as usize).min(v.dims[a] - 1);
                            }
                            acc += w * v.get(idx[0], idx[1], idx[2]) as f64;
                        }
                        let g = got.get(i, j, k) as f64;
                        assert!(
                            (g - acc).abs() < 1e-3,
                            "{shape:?} ({i},{j},{k}): {g} vs {acc}"
                        );
                    }
                }
            }
        }
    }
}
