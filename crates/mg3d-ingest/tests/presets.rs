//! Preprocess presets on a volume with a known analytic shape: a sphere of known radius (mm) keeps
//! its physical size (within one output voxel) and its RAS position after each preset.

use mg3d_ingest::preprocess::{apply_preset, load_preset};
use mg3d_volume::Volume;

/// A 70 mm-radius-free phantom: air, with a sphere of `radius` mm (+400 HU) at RAS `center`,
/// on an LPS-ordered grid with anisotropic spacing (as a DICOM series gives).
fn sphere(radius: f64, center: [f64; 3]) -> Volume {
    let (dims, sp) = ([160usize, 150, 60], [0.7, 0.7, 2.5]);
    // LPS grid: i -> left (RAS -x), j -> posterior (RAS -y), k -> superior.
    let affine = [
        [-sp[0], 0.0, 0.0, 55.0],
        [0.0, -sp[1], 0.0, 50.0],
        [0.0, 0.0, sp[2], -70.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let mut v = Volume::filled(dims, affine, -1000.0);
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let p = v.world([i as f64, j as f64, k as f64]);
                let d2: f64 = (0..3).map(|a| (p[a] - center[a]).powi(2)).sum();
                if d2 <= radius * radius {
                    let idx = v.index(i, j, k);
                    v.data[idx] = 400.0;
                }
            }
        }
    }
    v
}

#[test]
fn sphere_keeps_its_size_and_place_under_every_preset() {
    let (radius, center) = (20.0, [-5.0, 3.0, -10.0]);
    let v = sphere(radius, center);
    for name in ["demo", "demo-64", "ct-clip", "mg3d"] {
        let p = load_preset(name).unwrap();
        let (out, _) = apply_preset(&v, &p);
        assert_eq!(out.dims, p.shape, "{name}");
        assert_eq!(out.axcodes(), "RAS", "{name}");
        let sp = out.spacing();
        let voxel = sp[0] * sp[1] * sp[2];
        let (mut n, mut c) = (0.0, [0.0; 3]);
        for k in 0..out.dims[2] {
            for j in 0..out.dims[1] {
                for i in 0..out.dims[0] {
                    if out.get(i, j, k) > -300.0 {
                        n += 1.0;
                        let w = out.world([i as f64, j as f64, k as f64]);
                        for a in 0..3 {
                            c[a] += w[a];
                        }
                    }
                }
            }
        }
        let r = (3.0 * n * voxel / (4.0 * std::f64::consts::PI)).cbrt();
        let max_sp = sp.iter().cloned().fold(0.0, f64::max);
        assert!(
            (r - radius).abs() <= max_sp,
            "{name}: radius {r:.2} mm vs {radius} (spacing {sp:?})"
        );
        for a in 0..3 {
            let ca = c[a] / n;
            assert!(
                (ca - center[a]).abs() <= max_sp,
                "{name}: centre[{a}] {ca:.2} vs {}",
                center[a]
            );
        }
    }
}
