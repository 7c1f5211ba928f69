//! Writing int16 volumes as NIfTI-1: sform and qform from the affine ([`header_for`]), the header
//! serialised here (byte for byte what the `nifti` crate writes for the same header and array),
//! then the voxels, the whole file compressed in one call ([`crate::gz`]) or stored plainly.

use std::path::Path;

use nifti::NiftiHeader;

use crate::{Volume, VolumeError};

/// How a volume file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCompression {
    /// `.nii`: fastest to write and read, twice the size of gzip on CT.
    None,
    /// `.nii.gz` at a libdeflate level (1 fastest .. 12 smallest).
    Gzip(i32),
}

impl FileCompression {
    /// Parses a parameter value: `none`, `gzip` (level 1) or `gzip-N`.
    pub fn parse(s: &str) -> Option<FileCompression> {
        match s {
            "none" => Some(FileCompression::None),
            "gzip" => Some(FileCompression::Gzip(1)),
            _ => s
                .strip_prefix("gzip-")
                .and_then(|l| l.parse().ok())
                .filter(|l| (1..=12).contains(l))
                .map(FileCompression::Gzip),
        }
    }

    /// The file name extension: `nii` or `nii.gz`.
    pub fn extension(self) -> &'static str {
        match self {
            FileCompression::None => "nii",
            FileCompression::Gzip(_) => "nii.gz",
        }
    }
}

/// Bytes before the voxels of the files written here: the 348-byte header and an empty extension
/// flag.
pub const VOX_OFFSET: usize = 352;

/// The first [`VOX_OFFSET`] bytes of an int16 NIfTI-1 single file: `h` (geometry; dims, type,
/// offset, scaling and magic are set here as the `nifti` crate's writer sets them), then no
/// extensions. `capacity` reserves room for the voxels that follow.
fn encode_header(h: &NiftiHeader, dims: [usize; 3], capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    let i16s = |out: &mut Vec<u8>, v: i16| out.extend_from_slice(&v.to_le_bytes());
    let f32s = |out: &mut Vec<u8>, v: f32| out.extend_from_slice(&v.to_le_bytes());
    out.extend_from_slice(&348i32.to_le_bytes());
    out.extend_from_slice(&h.data_type);
    out.extend_from_slice(&h.db_name);
    out.extend_from_slice(&h.extents.to_le_bytes());
    i16s(&mut out, h.session_error);
    out.push(h.regular);
    out.push(h.dim_info);
    let dim = [
        3,
        dims[0] as u16,
        dims[1] as u16,
        dims[2] as u16,
        1,
        1,
        1,
        1,
    ];
    for d in dim {
        out.extend_from_slice(&d.to_le_bytes());
    }
    for p in [h.intent_p1, h.intent_p2, h.intent_p3] {
        f32s(&mut out, p);
    }
    i16s(&mut out, h.intent_code);
    i16s(&mut out, 4); // datatype: int16
    i16s(&mut out, 16); // bitpix
    i16s(&mut out, h.slice_start);
    for p in h.pixdim {
        f32s(&mut out, p);
    }
    f32s(&mut out, 352.0); // vox_offset
    f32s(&mut out, 1.0); // scl_slope
    f32s(&mut out, 0.0); // scl_inter
    i16s(&mut out, h.slice_end);
    out.push(h.slice_code);
    out.push(h.xyzt_units);
    for p in [h.cal_max, h.cal_min, h.slice_duration, h.toffset] {
        f32s(&mut out, p);
    }
    out.extend_from_slice(&h.glmax.to_le_bytes());
    out.extend_from_slice(&h.glmin.to_le_bytes());
    let mut descrip = h.descrip.clone();
    descrip.resize(80, 0);
    out.extend_from_slice(&descrip);
    out.extend_from_slice(&h.aux_file);
    i16s(&mut out, h.qform_code);
    i16s(&mut out, h.sform_code);
    for p in [
        h.quatern_b,
        h.quatern_c,
        h.quatern_d,
        h.quatern_x,
        h.quatern_y,
        h.quatern_z,
    ] {
        f32s(&mut out, p);
    }
    for p in h.srow_x.iter().chain(&h.srow_y).chain(&h.srow_z) {
        f32s(&mut out, *p);
    }
    out.extend_from_slice(&h.intent_name);
    out.extend_from_slice(b"n+1\0");
    debug_assert_eq!(out.len(), 348);
    out.extend_from_slice(&[0; 4]); // no extensions
    out
}

/// A volume encoded in memory as an int16 NIfTI-1 file (values rounded half away from zero and
/// clamped), ready to hash and write: one pass, in parallel, from the float voxels to the bytes.
pub struct EncodedI16 {
    bytes: Vec<u8>,
}

impl EncodedI16 {
    /// Encodes `v` with sform and qform from its affine ([`header_for`]).
    pub fn new(v: &Volume) -> EncodedI16 {
        use rayon::prelude::*;
        let h = header_for(&v.affine, v.spacing(), None);
        let mut bytes = encode_header(&h, v.dims, VOX_OFFSET + 2 * v.data.len());
        bytes.resize(VOX_OFFSET + 2 * v.data.len(), 0);
        bytes[VOX_OFFSET..]
            .par_chunks_mut(1 << 17)
            .zip(v.data.par_chunks(1 << 16))
            .for_each(|(out, values)| {
                for (o, &x) in out.chunks_exact_mut(2).zip(values) {
                    o.copy_from_slice(&crate::round_i16(x).to_le_bytes());
                }
            });
        EncodedI16 { bytes }
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// [`crate::content_hash`] of the voxels.
    pub fn content_hash(&self) -> String {
        crate::content_hash(&self.bytes[VOX_OFFSET..])
    }

    /// Writes the file, stored as `c` says (the caller names it with
    /// [`FileCompression::extension`]).
    pub fn write(&self, path: &Path, c: FileCompression) -> Result<(), VolumeError> {
        let res = match c {
            FileCompression::None => std::fs::write(path, &self.bytes),
            FileCompression::Gzip(level) => {
                std::fs::write(path, crate::gz::deflate_whole(&self.bytes, level))
            }
        };
        res.map_err(|source| VolumeError::Write {
            path: path.to_path_buf(),
            source,
        })
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

/// Writes a volume as int16 (values rounded and clamped) with sform and qform (code 1),
/// gzip-compressed (libdeflate level 1) when `path` ends in `.gz`.
pub fn write_nifti_i16(path: &Path, v: &Volume) -> Result<(), VolumeError> {
    let c = if path.extension().is_some_and(|e| e == "gz") {
        FileCompression::Gzip(1)
    } else {
        FileCompression::None
    };
    EncodedI16::new(v).write(path, c)
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, ShapeBuilder};
    use nifti::writer::WriterOptions;

    #[test]
    fn bytes_equal_the_nifti_crates_and_compression_parses() {
        let affine = [
            [-0.7, 0.0, 0.1, 30.0],
            [0.0, -0.8, 0.0, 20.0],
            [0.0, 0.05, 2.5, -40.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let dims = [5, 4, 3];
        let mut v = Volume::filled(dims, affine, 0.0);
        // Halves round away from zero; out-of-range values clamp.
        v.data = (0..60).map(|i| i as f32 * 37.25 - 1000.5).collect();
        v.data[7] = 40000.0;
        v.data[8] = -40000.4;
        let data: Vec<i16> = v
            .data
            .iter()
            .map(|&x| x.round().clamp(-32768.0, 32767.0) as i16)
            .collect();
        let mut h = header_for(&affine, v.spacing(), None);
        h.datatype = nifti::NiftiType::Int16 as i16;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("crate.nii");
        let arr = Array3::from_shape_vec((dims[0], dims[1], dims[2]).f(), data.clone()).unwrap();
        WriterOptions::new(&p)
            .reference_header(&h)
            .write_nifti(&arr)
            .unwrap();
        let e = EncodedI16::new(&v);
        assert_eq!(e.bytes(), std::fs::read(&p).unwrap());
        let le: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(e.content_hash(), blake3::hash(&le).to_hex().to_string());
        assert_eq!(
            FileCompression::parse("gzip"),
            Some(FileCompression::Gzip(1))
        );
        assert_eq!(
            FileCompression::parse("gzip-6"),
            Some(FileCompression::Gzip(6))
        );
        assert_eq!(FileCompression::parse("none"), Some(FileCompression::None));
        assert_eq!(FileCompression::parse("gzip-13"), None);
        assert_eq!(FileCompression::parse("zip"), None);
    }
}
