//! NIfTI-1 reading and writing.

use std::io::Read;
use std::path::Path;

use ndarray::{Array3, ShapeBuilder};
use nifti::writer::WriterOptions;
use nifti::{IntoNdArray, NiftiHeader, NiftiObject, NiftiType, ReaderOptions};
use serde::Serialize;

use crate::{Reject, Volume};

/// What the header said, for provenance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NiftiInfo {
    /// Datatype name (e.g. "Int16").
    pub datatype: String,
    /// scl_slope as stored (0 means none).
    pub scl_slope: f64,
    /// scl_inter as stored.
    pub scl_inter: f64,
    /// Whether a non-identity scl_slope/scl_inter was applied.
    pub scaled: bool,
    /// sform_code.
    pub sform_code: i16,
    /// qform_code.
    pub qform_code: i16,
    /// "sform", "qform" or "pixdim": where the affine came from.
    pub affine_source: String,
}

fn qform_affine(h: &NiftiHeader) -> Option<[[f64; 4]; 4]> {
    let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let a2 = 1.0 - (b * b + c * c + d * d);
    if a2 < -1e-5 {
        return None;
    }
    let a = a2.max(0.0).sqrt();
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let (dx, dy, dz) = (h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64);
    if dx <= 0.0 || dy <= 0.0 || dz <= 0.0 {
        return None;
    }
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - b * b - c * c,
        ],
    ];
    let off = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
    let mut m = [[0.0; 4]; 4];
    for i in 0..3 {
        m[i][0] = r[i][0] * dx;
        m[i][1] = r[i][1] * dy;
        m[i][2] = r[i][2] * dz * qfac;
        m[i][3] = off[i];
    }
    m[3][3] = 1.0;
    Some(m)
}

/// The voxel -> RAS affine by the NIfTI rules: sform when sform_code > 0, else qform when
/// qform_code > 0, else a pixdim diagonal (Analyze fallback, as nibabel does).
pub fn header_affine(h: &NiftiHeader) -> ([[f64; 4]; 4], &'static str) {
    if h.sform_code > 0 {
        let rows = [h.srow_x, h.srow_y, h.srow_z];
        let mut m = [[0.0; 4]; 4];
        for i in 0..3 {
            for j in 0..4 {
                m[i][j] = rows[i][j] as f64;
            }
        }
        m[3][3] = 1.0;
        return (m, "sform");
    }
    if h.qform_code > 0
        && let Some(m) = qform_affine(h)
    {
        return (m, "qform");
    }
    // nibabel's base affine (Analyze): x flipped, origin at the volume centre.
    let mut m = [[0.0; 4]; 4];
    for i in 0..3 {
        let z = (h.pixdim[i + 1] as f64).abs();
        let z = if z > 0.0 { z } else { 1.0 };
        let n = (h.dim[i + 1].max(1)) as f64;
        let sign = if i == 0 { -1.0 } else { 1.0 };
        m[i][i] = sign * z;
        m[i][3] = -sign * z * (n - 1.0) / 2.0;
    }
    m[3][3] = 1.0;
    (m, "pixdim")
}

fn classify_read_error(path: &Path, e: &dyn std::fmt::Display) -> Reject {
    let msg = e.to_string();
    let code = if msg.contains("corrupt")
        || msg.contains("invalid")
        || msg.contains("gzip")
        || msg.contains("deflate")
        || msg.contains("end of file")
        || msg.contains("magic")
    {
        "nifti_corrupt"
    } else {
        "nifti_unreadable"
    };
    Reject::new(code, format!("{}: {msg}", path.display()))
}

/// Reads a .nii or .nii.gz into a volume (values after scl_slope/scl_inter).
/// 4D images are rejected (`nifti_4d`) unless `first_of_4d`, which takes the first volume.
pub fn read_nifti(path: &Path, first_of_4d: bool) -> Result<(Volume, NiftiInfo), Reject> {
    let len = std::fs::metadata(path)
        .map_err(|e| Reject::new("unreadable", format!("{}: {e}", path.display())))?
        .len();
    if len == 0 {
        return Err(Reject::new(
            "empty_file",
            format!("{} has 0 bytes", path.display()),
        ));
    }
    // Check the whole gzip stream first: the nifti crate may read a truncated stream without error.
    if path.extension().is_some_and(|e| e == "gz") {
        let f = std::fs::File::open(path).map_err(|e| Reject::new("unreadable", e.to_string()))?;
        let mut dec = flate2::read::GzDecoder::new(std::io::BufReader::new(f));
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match dec.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(Reject::new(
                        "nifti_corrupt",
                        format!("{}: gzip stream: {e}", path.display()),
                    ));
                }
            }
        }
    }
    let obj = std::panic::catch_unwind(|| ReaderOptions::new().read_file(path))
        .map_err(|_| {
            Reject::new(
                "nifti_corrupt",
                format!("{}: the NIfTI reader panicked on this file", path.display()),
            )
        })?
        .map_err(|e| classify_read_error(path, &e))?;
    let h = obj.header().clone();
    let ndim = h.dim[0] as usize;
    if !(1..=7).contains(&ndim) {
        return Err(Reject::new(
            "nifti_corrupt",
            format!("{}: dim[0] = {}", path.display(), h.dim[0]),
        ));
    }
    let extra: usize = (4..=ndim).map(|d| h.dim[d].max(1) as usize).product();
    if extra > 1 && !first_of_4d {
        return Err(Reject::new(
            "nifti_4d",
            format!(
                "{}: {}D image with {} volumes; set first_of_4d to take the first",
                path.display(),
                ndim,
                extra
            ),
        ));
    }
    let dims = [
        h.dim[1].max(1) as usize,
        if ndim >= 2 {
            h.dim[2].max(1) as usize
        } else {
            1
        },
        if ndim >= 3 {
            h.dim[3].max(1) as usize
        } else {
            1
        },
    ];
    let datatype = h
        .data_type()
        .map(|t| format!("{t:?}"))
        .unwrap_or_else(|_| format!("code {}", h.datatype));
    let arr = obj
        .into_volume()
        .into_ndarray::<f32>()
        .map_err(|e| classify_read_error(path, &e))?;
    let n = dims[0] * dims[1] * dims[2];
    // Memory order of the nifti crate's arrays is x fastest: exactly our (k, j, i) layout.
    let mut data: Vec<f32> = match arr.as_slice_memory_order() {
        Some(s) if arr.t().is_standard_layout() || arr.ndim() == 1 => s.to_vec(),
        _ => arr.t().iter().copied().collect(),
    };
    data.truncate(n);
    if data.len() != n {
        return Err(Reject::new(
            "nifti_corrupt",
            format!("{}: {} values for {:?}", path.display(), data.len(), dims),
        ));
    }
    if let Some(p) = data.iter().position(|v| !v.is_finite()) {
        let nans = data.iter().filter(|v| !v.is_finite()).count();
        return Err(Reject::new(
            "nifti_nan",
            format!(
                "{}: {nans} non-finite voxel(s), first at index {p}",
                path.display()
            ),
        ));
    }
    let (affine, source) = header_affine(&h);
    let (slope, inter) = (h.scl_slope as f64, h.scl_inter as f64);
    let scaled = slope != 0.0 && slope.is_finite() && (slope != 1.0 || inter != 0.0);
    Ok((
        Volume { dims, data, affine },
        NiftiInfo {
            datatype,
            scl_slope: slope,
            scl_inter: inter,
            scaled,
            sform_code: h.sform_code,
            qform_code: h.qform_code,
            affine_source: source.to_string(),
        },
    ))
}

/// A header with sform and qform (both code 1, scanner anatomical) for a voxel -> RAS affine,
/// spacing in mm, and optional scl_slope/scl_inter.
pub fn header_for(
    affine: &[[f64; 4]; 4],
    spacing: [f64; 3],
    scl: Option<(f64, f64)>,
) -> NiftiHeader {
    let mut h = NiftiHeader::default();
    let (b, c, d, qfac) = quatern(affine, spacing);
    h.pixdim = [
        qfac as f32,
        spacing[0] as f32,
        spacing[1] as f32,
        spacing[2] as f32,
        1.0,
        0.0,
        0.0,
        0.0,
    ];
    h.qform_code = 1;
    h.sform_code = 1;
    h.quatern_b = b as f32;
    h.quatern_c = c as f32;
    h.quatern_d = d as f32;
    h.quatern_x = affine[0][3] as f32;
    h.quatern_y = affine[1][3] as f32;
    h.quatern_z = affine[2][3] as f32;
    let row = |r: usize| {
        [
            affine[r][0] as f32,
            affine[r][1] as f32,
            affine[r][2] as f32,
            affine[r][3] as f32,
        ]
    };
    h.srow_x = row(0);
    h.srow_y = row(1);
    h.srow_z = row(2);
    h.xyzt_units = 2 | 8;
    let (slope, inter) = scl.unwrap_or((1.0, 0.0));
    h.scl_slope = slope as f32;
    h.scl_inter = inter as f32;
    h.descrip = b"mg3d".to_vec();
    h
}

/// Writes a volume as int16 (values rounded and clamped) with sform and qform (code 1).
pub fn write_nifti_i16(path: &Path, v: &Volume) -> Result<(), String> {
    let data: Vec<i16> = v
        .data
        .iter()
        .map(|&x| x.round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    let arr = Array3::from_shape_vec((v.dims[0], v.dims[1], v.dims[2]).f(), data)
        .map_err(|e| e.to_string())?;
    let mut h = header_for(&v.affine, v.spacing(), None);
    h.datatype = NiftiType::Int16 as i16;
    WriterOptions::new(path)
        .reference_header(&h)
        .write_nifti(&arr)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Quaternion (b, c, d) and qfac of an affine's rotation (nifti_mat44_to_quatern, for orthogonal axes).
pub fn quatern(m: &[[f64; 4]; 4], sp: [f64; 3]) -> (f64, f64, f64, f64) {
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            r[i][j] = m[i][j] / sp[j].max(1e-12);
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    if qfac < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
    }
    let tr = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (a, b, c, d);
    if tr > 0.5 {
        a = 0.5 * tr.sqrt();
        b = 0.25 * (r[2][1] - r[1][2]) / a;
        c = 0.25 * (r[0][2] - r[2][0]) / a;
        d = 0.25 * (r[1][0] - r[0][1]) / a;
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        let (mut aa, mut bb, mut cc, mut dd);
        if xd > 1.0 {
            bb = 0.5 * xd.sqrt();
            cc = 0.25 * (r[0][1] + r[1][0]) / bb;
            dd = 0.25 * (r[0][2] + r[2][0]) / bb;
            aa = 0.25 * (r[2][1] - r[1][2]) / bb;
        } else if yd > 1.0 {
            cc = 0.5 * yd.sqrt();
            bb = 0.25 * (r[0][1] + r[1][0]) / cc;
            dd = 0.25 * (r[1][2] + r[2][1]) / cc;
            aa = 0.25 * (r[0][2] - r[2][0]) / cc;
        } else {
            dd = 0.5 * zd.sqrt();
            bb = 0.25 * (r[0][2] + r[2][0]) / dd;
            cc = 0.25 * (r[1][2] + r[2][1]) / dd;
            aa = 0.25 * (r[1][0] - r[0][1]) / dd;
        }
        if aa < 0.0 {
            bb = -bb;
            cc = -cc;
            dd = -dd;
            aa = -aa;
        }
        let _ = aa;
        b = bb;
        c = cc;
        d = dd;
    }
    (b, c, d, qfac)
}
