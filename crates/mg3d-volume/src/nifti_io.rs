//! NIfTI reading (NIfTI-1 and NIfTI-2, see [`crate::nifti_header`]) and int16 NIfTI-1 writing.

use std::io::{BufRead, Read};
use std::path::Path;

use ndarray::{Array3, ShapeBuilder};
use nifti::writer::WriterOptions;
use nifti::{NiftiHeader, NiftiType};
use serde::Serialize;

use crate::nifti_header::{Header, Shape, read_header, read_values};
use crate::{Reject, Volume, VolumeError};

/// What the header said, for provenance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NiftiInfo {
    /// 1 (NIfTI-1) or 2 (NIfTI-2).
    pub version: u8,
    /// Datatype name (e.g. "Int16").
    pub datatype: String,
    /// Every dimension the header declares (a 4D image has four).
    pub dims: Vec<usize>,
    /// scl_slope as stored (0 means none).
    pub scl_slope: f64,
    /// scl_inter as stored.
    pub scl_inter: f64,
    /// Whether a non-identity scl_slope/scl_inter was applied.
    pub scaled: bool,
    /// sform_code.
    pub sform_code: i32,
    /// qform_code.
    pub qform_code: i32,
    /// "sform", "qform" or "pixdim": where the affine came from.
    pub affine_source: String,
    /// Millimetres per unit of the affine, from xyzt_units (1 for mm or unknown).
    pub mm_per_unit: f64,
}

/// Limits for [`read_nifti_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Take the first volume of a 4D (or higher) image instead of rejecting it.
    pub first_of_4d: bool,
    /// Largest volume (voxels of the 3D image read) accepted; larger is a `volume_too_large` reject
    /// before any voxel is read or allocated.
    pub max_voxels: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            first_of_4d: false,
            max_voxels: DEFAULT_MAX_VOXELS,
        }
    }
}

/// 2^31 voxels: a 1024 x 1024 x 2048 volume, 8 GiB as f32.
pub const DEFAULT_MAX_VOXELS: u64 = 1 << 31;

fn qform_affine(h: &Header) -> Option<[[f64; 4]; 4]> {
    let [b, c, d] = h.quatern;
    let a2 = 1.0 - (b * b + c * c + d * d);
    if !a2.is_finite() || a2 < -1e-5 {
        return None;
    }
    let a = a2.max(0.0).sqrt();
    // nibabel's check_fix sets a qfac other than -1 to 1.
    let qfac = if h.pixdim[0] == -1.0 { -1.0 } else { 1.0 };
    let (dx, dy, dz) = (h.pixdim[1], h.pixdim[2], h.pixdim[3]);
    // nibabel takes the absolute zooms for the qform (a negative pixdim is a sign error, not a flip).
    let (dx, dy, dz) = (dx.abs(), dy.abs(), dz.abs());
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
    let mut m = [[0.0; 4]; 4];
    for i in 0..3 {
        m[i][0] = r[i][0] * dx;
        m[i][1] = r[i][1] * dy;
        m[i][2] = r[i][2] * dz * qfac;
        m[i][3] = h.qoffset[i];
    }
    m[3][3] = 1.0;
    Some(m)
}

/// The voxel -> RAS affine by the NIfTI rules: sform when sform_code > 0, else qform when
/// qform_code > 0, else a pixdim diagonal (Analyze fallback, as nibabel does).
pub fn header_affine(h: &Header) -> ([[f64; 4]; 4], &'static str) {
    if h.sform_code > 0 {
        let mut m = [[0.0; 4]; 4];
        m[..3].copy_from_slice(&h.srow);
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
        let z = h.pixdim[i + 1].abs();
        let z = if z > 0.0 && z.is_finite() { z } else { 1.0 };
        let n = h.dim[i + 1].max(1) as f64;
        let sign = if i == 0 { -1.0 } else { 1.0 };
        m[i][i] = sign * z;
        m[i][3] = -sign * z * (n - 1.0) / 2.0;
    }
    m[3][3] = 1.0;
    (m, "pixdim")
}

/// Reads a .nii or .nii.gz (gzip recognised by its magic bytes, not the name) into a volume
/// (values after scl_slope/scl_inter). 4D images are rejected (`nifti_4d`) unless `first_of_4d`,
/// which takes the first volume.
pub fn read_nifti(path: &Path, first_of_4d: bool) -> Result<(Volume, NiftiInfo), Reject> {
    read_nifti_with(
        path,
        &ReadOptions {
            first_of_4d,
            ..ReadOptions::default()
        },
    )
}

/// [`read_nifti`] with explicit limits. Messages name the file.
pub fn read_nifti_with(path: &Path, opts: &ReadOptions) -> Result<(Volume, NiftiInfo), Reject> {
    NiftiReader::open(path)?.read(opts)
}

/// Reads a NIfTI image from a stream holding the whole file (plain or gzip-compressed).
pub fn read_nifti_from<R: BufRead>(
    r: R,
    opts: &ReadOptions,
) -> Result<(Volume, NiftiInfo), Reject> {
    NiftiReader::from_reader(r, String::new())?.read(opts)
}

/// A NIfTI image opened as far as its header: its shape is known before any voxel is read (so a
/// caller can plan memory from it), then [`NiftiReader::read`] reads the voxels from the same
/// stream.
pub struct NiftiReader<'a> {
    header: Header,
    shape: Shape,
    stream: Box<dyn Read + 'a>,
    gz: bool,
    /// Prefix of every message (the file's path, or empty).
    name: String,
}

impl NiftiReader<'static> {
    /// Opens a file (`unreadable`, `empty_file` or a header reject, naming the file).
    pub fn open(path: &Path) -> Result<Self, Reject> {
        let named = |code, m: String| Reject::new(code, format!("{}: {m}", path.display()));
        let f = std::fs::File::open(path).map_err(|e| named("unreadable", e.to_string()))?;
        if f.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
            return Err(named("empty_file", "0 bytes".into()));
        }
        let r = std::io::BufReader::with_capacity(1 << 20, f);
        NiftiReader::from_reader(r, path.display().to_string())
    }
}

impl<'a> NiftiReader<'a> {
    /// Reads the header from a stream holding the whole file, plain or gzip (recognised by its
    /// magic bytes, not a name). `name` prefixes messages.
    pub fn from_reader<R: BufRead + 'a>(mut r: R, name: String) -> Result<Self, Reject> {
        let gz = r.fill_buf().is_ok_and(|b| b.starts_with(&[0x1f, 0x8b]));
        let mut stream: Box<dyn Read + 'a> = if gz {
            Box::new(flate2::bufread::MultiGzDecoder::new(r))
        } else {
            Box::new(r)
        };
        let mut reader = NiftiReader {
            header: Header::default(),
            shape: Shape::default(),
            stream: Box::new(std::io::empty()),
            gz,
            name,
        };
        let header = read_header(&mut stream).map_err(|e| reader.named(e))?;
        reader.shape = header.shape().map_err(|e| reader.named(e))?;
        reader.header = header;
        reader.stream = stream;
        Ok(reader)
    }

    /// The shape the header declares.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    fn named(&self, r: Reject) -> Reject {
        if self.name.is_empty() {
            r
        } else {
            Reject::new(r.code, format!("{}: {}", self.name, r.message))
        }
    }

    /// Reads the voxels (values after scl_slope/scl_inter).
    pub fn read(mut self, opts: &ReadOptions) -> Result<(Volume, NiftiInfo), Reject> {
        let out = self.read_voxels(opts).map_err(|e| self.named(e))?;
        if self.gz {
            // The rest of the stream must inflate cleanly too (a damaged tail is caught by its
            // CRC); at most 64 MiB of trailing bytes are read, so a bomb after the voxels costs
            // little.
            let mut tail = (&mut self.stream).take(64 << 20);
            std::io::copy(&mut tail, &mut std::io::sink()).map_err(|e| {
                self.named(Reject::new(
                    "nifti_corrupt",
                    format!("gzip stream after the voxels: {e}"),
                ))
            })?;
        }
        Ok(out)
    }

    fn read_voxels(&mut self, opts: &ReadOptions) -> Result<(Volume, NiftiInfo), Reject> {
        let (h, shape) = (&self.header, &self.shape);
        let scalar = h.scalar()?;
        if shape.volumes > 1 && !opts.first_of_4d {
            return Err(Reject::new(
                "nifti_4d",
                format!(
                    "{}D image {:?} with {} volumes; set first_of_4d to take the first",
                    shape.dims.len(),
                    shape.dims,
                    shape.volumes
                ),
            ));
        }
        let dims = shape.spatial;
        let n = dims[0] * dims[1] * dims[2];
        if n as u64 > opts.max_voxels {
            return Err(Reject::new(
                "volume_too_large",
                format!(
                    "{dims:?} is {n} voxels, over the limit of {}",
                    opts.max_voxels
                ),
            ));
        }
        let data = read_values(&mut self.stream, h, h.size() as u64, n)?;
        if let Some(p) = data.iter().position(|v| !v.is_finite()) {
            let nans = data.iter().filter(|v| !v.is_finite()).count();
            return Err(Reject::new(
                "nifti_nan",
                format!("{nans} non-finite voxel(s), first at index {p}"),
            ));
        }
        let (affine, source) = header_affine(h);
        Ok((
            Volume { dims, data, affine },
            NiftiInfo {
                version: h.version,
                datatype: format!("{scalar:?}"),
                dims: shape.dims.clone(),
                scl_slope: h.scl_slope,
                scl_inter: h.scl_inter,
                scaled: h.scaling()?.is_some(),
                sform_code: h.sform_code,
                qform_code: h.qform_code,
                affine_source: source.to_string(),
                mm_per_unit: h.mm_per_unit(),
            },
        ))
    }
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
pub fn write_nifti_i16(path: &Path, v: &Volume) -> Result<(), VolumeError> {
    let data: Vec<i16> = v
        .data
        .iter()
        .map(|&x| x.round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    let arr = Array3::from_shape_vec((v.dims[0], v.dims[1], v.dims[2]).f(), data)?;
    let mut h = header_for(&v.affine, v.spacing(), None);
    h.datatype = NiftiType::Int16 as i16;
    WriterOptions::new(path)
        .reference_header(&h)
        .write_nifti(&arr)
        .map_err(|source| VolumeError::Write {
            path: path.to_path_buf(),
            source,
        })
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
