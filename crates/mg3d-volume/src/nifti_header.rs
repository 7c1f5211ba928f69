//! NIfTI-1 and NIfTI-2 headers and voxel streams, read as nibabel reads them.
//!
//! Both byte orders; single files (`n+1`, `n+2`) with the voxels at `vox_offset`, which nibabel
//! raises to the header's end when a file says less (older tools wrote `vox_offset = 0`); every
//! integer and float datatype nibabel maps to a real scalar; `scl_slope`/`scl_inter` applied once
//! with nibabel's rules. The stream is read exactly as far as the header's dims say, after the
//! dims' byte count has been checked against a caller's budget, so a small file that inflates to
//! gigabytes (a gzip bomb) costs nothing beyond what its header declares.

use std::io::Read;

use crate::Reject;

/// Size of a NIfTI-1 header (the voxels of a single file start at 352 at the earliest).
const NIFTI1_HEADER: usize = 348;
/// Size of a NIfTI-2 header (single-file voxels start at 544 at the earliest).
const NIFTI2_HEADER: usize = 540;

/// A parsed NIfTI-1 or NIfTI-2 header, widened to the NIfTI-2 types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// Whether the file is big-endian.
    pub big_endian: bool,
    /// dim[0..8] as stored.
    pub dim: [i64; 8],
    /// Datatype code.
    pub datatype: i16,
    /// pixdim[0..8] (pixdim[0] is qfac).
    pub pixdim: [f64; 8],
    /// Where the voxels start, after nibabel's fix for single files.
    pub vox_offset: u64,
    /// scl_slope as stored.
    pub scl_slope: f64,
    /// scl_inter as stored.
    pub scl_inter: f64,
    /// xyzt_units (spatial units in the low 3 bits).
    pub xyzt_units: i32,
    /// qform_code.
    pub qform_code: i32,
    /// sform_code.
    pub sform_code: i32,
    /// quatern_b, quatern_c, quatern_d.
    pub quatern: [f64; 3],
    /// qoffset_x, qoffset_y, qoffset_z.
    pub qoffset: [f64; 3],
    /// srow_x, srow_y, srow_z.
    pub srow: [[f64; 4]; 3],
}

/// A scalar voxel type and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    /// uint8 (code 2).
    U8,
    /// int8 (256).
    I8,
    /// int16 (4).
    I16,
    /// uint16 (512).
    U16,
    /// int32 (8).
    I32,
    /// uint32 (768).
    U32,
    /// int64 (1024).
    I64,
    /// uint64 (1280).
    U64,
    /// float32 (16).
    F32,
    /// float64 (64).
    F64,
}

impl Scalar {
    /// The scalar of a datatype code, or `None` for complex, RGB, binary and float128 data.
    pub fn of(code: i16) -> Option<Scalar> {
        Some(match code {
            2 => Scalar::U8,
            256 => Scalar::I8,
            4 => Scalar::I16,
            512 => Scalar::U16,
            8 => Scalar::I32,
            768 => Scalar::U32,
            1024 => Scalar::I64,
            1280 => Scalar::U64,
            16 => Scalar::F32,
            64 => Scalar::F64,
            _ => return None,
        })
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Scalar::U8 | Scalar::I8 => 1,
            Scalar::I16 | Scalar::U16 => 2,
            Scalar::I32 | Scalar::U32 | Scalar::F32 => 4,
            Scalar::I64 | Scalar::U64 | Scalar::F64 => 8,
        }
    }
}

impl Scalar {
    /// Appends the values of `bytes` (whole elements), scaled by `scale` in f64, as f32: each value
    /// converted through f64, with the type dispatched once per block.
    fn decode_into(self, bytes: &[u8], big: bool, scale: Option<(f64, f64)>, out: &mut Vec<f32>) {
        macro_rules! run {
            ($t:ty, $n:expr) => {{
                let values = bytes.chunks_exact($n).map(|c| {
                    let a: [u8; $n] = c.try_into().expect("element size");
                    (if big {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }) as f64
                });
                match scale {
                    Some((s, i)) => out.extend(values.map(|v| (v * s + i) as f32)),
                    None => out.extend(values.map(|v| v as f32)),
                }
            }};
        }
        match self {
            Scalar::U8 => run!(u8, 1),
            Scalar::I8 => run!(i8, 1),
            Scalar::I16 => run!(i16, 2),
            Scalar::U16 => run!(u16, 2),
            Scalar::I32 => run!(i32, 4),
            Scalar::U32 => run!(u32, 4),
            Scalar::I64 => run!(i64, 8),
            Scalar::U64 => run!(u64, 8),
            Scalar::F32 => run!(f32, 4),
            Scalar::F64 => run!(f64, 8),
        }
    }
}

struct Fields<'a> {
    b: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a: [u8; N] = self.b[at..at + N]
            .try_into()
            .expect("header length checked");
        if self.big {
            a.reverse();
        }
        a
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.bytes(at))
    }
    fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.bytes(at))
    }
    fn i64(&self, at: usize) -> i64 {
        i64::from_le_bytes(self.bytes(at))
    }
    fn f32(&self, at: usize) -> f64 {
        f32::from_le_bytes(self.bytes(at)) as f64
    }
    fn f64(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.bytes(at))
    }
}

fn corrupt(msg: impl Into<String>) -> Reject {
    Reject::new("nifti_corrupt", msg)
}

/// How many header bytes decide the version (the first four: sizeof_hdr).
pub const PROBE_BYTES: usize = 4;

/// The header size a file declares in its first four bytes (348 or 540, in either byte order).
pub fn header_size(first4: &[u8]) -> Result<(usize, bool), Reject> {
    let a: [u8; 4] = first4
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt("shorter than a NIfTI header"))?;
    for (n, big) in [
        (i32::from_le_bytes(a), false),
        (i32::from_be_bytes(a), true),
    ] {
        if n == NIFTI1_HEADER as i32 || n == NIFTI2_HEADER as i32 {
            return Ok((n as usize, big));
        }
    }
    Err(corrupt(format!(
        "sizeof_hdr is {} (neither 348 for NIfTI-1 nor 540 for NIfTI-2)",
        i32::from_le_bytes(a)
    )))
}

/// Parses a whole header (`b` holds at least the size [`header_size`] gave).
pub fn parse_header(b: &[u8]) -> Result<Header, Reject> {
    let (size, big) = header_size(b)?;
    if b.len() < size {
        return Err(corrupt(format!(
            "header truncated: {} of {size} bytes",
            b.len()
        )));
    }
    let f = Fields { b, big };
    let h = if size == NIFTI1_HEADER {
        check_magic(&b[344..348], 1)?;
        Header {
            version: 1,
            big_endian: big,
            dim: std::array::from_fn(|i| f.i16(40 + 2 * i) as i64),
            datatype: f.i16(70),
            pixdim: std::array::from_fn(|i| f.f32(76 + 4 * i)),
            vox_offset: offset(f.f32(108), 352)?,
            scl_slope: f.f32(112),
            scl_inter: f.f32(116),
            xyzt_units: b[123] as i32,
            qform_code: f.i16(252) as i32,
            sform_code: f.i16(254) as i32,
            quatern: [f.f32(256), f.f32(260), f.f32(264)],
            qoffset: [f.f32(268), f.f32(272), f.f32(276)],
            srow: std::array::from_fn(|r| std::array::from_fn(|c| f.f32(280 + 16 * r + 4 * c))),
        }
    } else {
        check_magic(&b[4..8], 2)?;
        Header {
            version: 2,
            big_endian: big,
            dim: std::array::from_fn(|i| f.i64(16 + 8 * i)),
            datatype: f.i16(12),
            pixdim: std::array::from_fn(|i| f.f64(104 + 8 * i)),
            vox_offset: offset(f.i64(168) as f64, 544)?,
            scl_slope: f.f64(176),
            scl_inter: f.f64(184),
            xyzt_units: f.i32(500),
            qform_code: f.i32(344),
            sform_code: f.i32(348),
            quatern: [f.f64(352), f.f64(360), f.f64(368)],
            qoffset: [f.f64(376), f.f64(384), f.f64(392)],
            srow: std::array::from_fn(|r| std::array::from_fn(|c| f.f64(400 + 32 * r + 8 * c))),
        }
    };
    Ok(h)
}

/// A single file's magic ("n+1" / "n+2"); a pair header ("ni1" / "ni2") keeps its voxels in a
/// separate .img file.
fn check_magic(magic: &[u8], version: u8) -> Result<(), Reject> {
    let (single, pair) = if version == 1 {
        (b"n+1\0", b"ni1\0")
    } else {
        (b"n+2\0", b"ni2\0")
    };
    if magic == single {
        Ok(())
    } else if magic == pair {
        Err(Reject::new(
            "nifti_pair",
            format!(
                "a NIfTI-{version} pair header (magic ni{version}): the voxels are in a separate .img file"
            ),
        ))
    } else {
        Err(corrupt(format!(
            "NIfTI-{version} magic is {magic:?}, not \"n+{version}\""
        )))
    }
}

/// nibabel's single-file rule: an offset inside the header means "right after it".
fn offset(stored: f64, min: u64) -> Result<u64, Reject> {
    if !stored.is_finite() || stored < 0.0 || stored > (1u64 << 40) as f64 {
        return Err(corrupt(format!("vox_offset is {stored}")));
    }
    Ok((stored as u64).max(min))
}

/// What a header says about the image's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// Every dimension (dim[1..=dim[0]]).
    pub dims: Vec<usize>,
    /// The first three (1 where the image has fewer).
    pub spatial: [usize; 3],
    /// Volumes beyond the first three dimensions (1 for a 3D image).
    pub volumes: usize,
}

impl Header {
    /// Bytes of this header on disk (348 or 540).
    pub fn size(&self) -> usize {
        if self.version == 2 {
            NIFTI2_HEADER
        } else {
            NIFTI1_HEADER
        }
    }

    /// The shape, checked: dim[0] in 1..=7, each used dim positive, products without overflow.
    pub fn shape(&self) -> Result<Shape, Reject> {
        let nd = self.dim[0];
        if !(1..=7).contains(&nd) {
            return Err(corrupt(format!("dim[0] = {nd}")));
        }
        let mut dims = Vec::new();
        for d in 1..=nd as usize {
            let v = self.dim[d];
            if v <= 0 || v > i32::MAX as i64 {
                return Err(corrupt(format!("dim[{d}] = {v}")));
            }
            dims.push(v as usize);
        }
        let at = |i: usize| dims.get(i).copied().unwrap_or(1);
        let spatial = [at(0), at(1), at(2)];
        let volumes = dims
            .iter()
            .skip(3)
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| corrupt("dims overflow"))?;
        spatial
            .iter()
            .try_fold(volumes, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(16))
            .ok_or_else(|| corrupt(format!("dims {dims:?} overflow")))?;
        Ok(Shape {
            dims,
            spatial,
            volumes,
        })
    }

    /// The voxel type, or a reject naming what is not supported.
    pub fn scalar(&self) -> Result<Scalar, Reject> {
        Scalar::of(self.datatype).ok_or_else(|| {
            Reject::new(
                "nifti_datatype",
                format!(
                    "datatype {} is not a real scalar (complex, RGB, binary or float128)",
                    self.datatype
                ),
            )
        })
    }

    /// nibabel's scaling: none when scl_slope is 0 or not finite; an error when the slope is valid
    /// and the intercept is not. Returns (slope, intercept) to apply, or `None`.
    pub fn scaling(&self) -> Result<Option<(f64, f64)>, Reject> {
        let (s, i) = (self.scl_slope, self.scl_inter);
        if s == 0.0 || !s.is_finite() {
            return Ok(None);
        }
        if !i.is_finite() {
            return Err(Reject::new(
                "nifti_bad_scaling",
                format!("scl_slope {s} with a non-finite scl_inter {i}"),
            ));
        }
        Ok((s != 1.0 || i != 0.0).then_some((s, i)))
    }

    /// Millimetres per spatial unit from xyzt_units (unknown units are taken as mm, as nibabel
    /// and every CT tool do).
    pub fn mm_per_unit(&self) -> f64 {
        match self.xyzt_units & 7 {
            1 => 1000.0, // metres
            3 => 0.001,  // micrometres
            _ => 1.0,
        }
    }
}

/// Reads the header of a stream (which must start at byte 0 of the file).
pub fn read_header<R: Read>(r: &mut R) -> Result<Header, Reject> {
    let mut b = vec![0u8; NIFTI2_HEADER];
    read_full(r, &mut b[..PROBE_BYTES], "header")?;
    let (size, _) = header_size(&b)?;
    read_full(r, &mut b[PROBE_BYTES..size], "header")?;
    parse_header(&b[..size])
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), Reject> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Reject::new(
                    "nifti_truncated",
                    format!("the file ends inside the {what}"),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Reject::new(
                    "nifti_truncated",
                    format!("the compressed stream ends inside the {what}"),
                ));
            }
            Err(e) => return Err(corrupt(format!("{what}: {e}"))),
        }
    }
    Ok(())
}

/// Reads `count` values of `scalar` starting `skip` bytes after the header's end (`consumed` bytes
/// of the stream are already read), scaled and widened to f32 in memory order.
pub fn read_values<R: Read>(
    r: &mut R,
    h: &Header,
    consumed: u64,
    count: usize,
) -> Result<Vec<f32>, Reject> {
    let scalar = h.scalar()?;
    let skip = h.vox_offset.saturating_sub(consumed);
    let skipped = std::io::copy(&mut r.by_ref().take(skip), &mut std::io::sink())
        .map_err(|e| corrupt(format!("before the voxels: {e}")))?;
    if skipped < skip {
        return Err(Reject::new(
            "nifti_truncated",
            format!("vox_offset {} is past the end of the file", h.vox_offset),
        ));
    }
    let scale = h.scaling()?;
    let size = scalar.size();
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0u8; (1 << 20) / size * size];
    while out.len() < count {
        let want = ((count - out.len()) * size).min(buf.len());
        read_full(r, &mut buf[..want], "voxel data")?;
        scalar.decode_into(&buf[..want], h.big_endian, scale, &mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2x2x1 int16 single file with the given vox_offset and byte order.
    fn nifti1(vox_offset: f32, big: bool) -> Vec<u8> {
        mg3d_testkit::crafted::Nii {
            vox_offset,
            big,
            ..mg3d_testkit::crafted::Nii::int16(&[2, 2, 1], &[1, -2, 300, -32768])
        }
        .bytes()
    }

    fn read(bytes: &[u8]) -> Result<Vec<f32>, Reject> {
        let mut r = bytes;
        let h = read_header(&mut r)?;
        let s = h.shape()?;
        let n = s.spatial.iter().product();
        read_values(&mut r, &h, h.size() as u64, n)
    }

    #[test]
    fn both_byte_orders_and_vox_offset_zero() {
        for big in [false, true] {
            for off in [0.0, 352.0] {
                assert_eq!(
                    read(&nifti1(off, big)).unwrap(),
                    [1.0, -2.0, 300.0, -32768.0]
                );
            }
        }
    }

    #[test]
    fn truncated_and_hostile_headers_are_rejects() {
        let b = nifti1(352.0, false);
        assert_eq!(read(&b[..358]).unwrap_err().code, "nifti_truncated");
        assert_eq!(read(&b[..100]).unwrap_err().code, "nifti_truncated");
        let mut huge = b.clone();
        huge[40..42].copy_from_slice(&9i16.to_le_bytes());
        assert_eq!(read(&huge).unwrap_err().code, "nifti_corrupt");
        let mut neg = b.clone();
        neg[42..44].copy_from_slice(&(-5i16).to_le_bytes());
        assert_eq!(read(&neg).unwrap_err().code, "nifti_corrupt");
        let mut pair = b.clone();
        pair[344..348].copy_from_slice(b"ni1\0");
        assert_eq!(read(&pair).unwrap_err().code, "nifti_pair");
        let mut cplx = b;
        cplx[70..72].copy_from_slice(&32i16.to_le_bytes());
        assert_eq!(read(&cplx).unwrap_err().code, "nifti_datatype");
    }
}
