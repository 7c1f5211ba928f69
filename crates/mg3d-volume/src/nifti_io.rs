//! NIfTI reading (NIfTI-1 and NIfTI-2, see [`crate::nifti_header`]); writing is in
//! [`crate::nifti_write`].

use std::io::{BufRead, Read};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::nifti_header::{Header, Shape, read_header, read_values};
use crate::{Reject, Volume};

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

/// The whole file behind a reader, for the one-call inflate.
enum Whole {
    /// Not available (a stream).
    None,
    /// The file, read again whole once its header has passed the size checks.
    Path(std::path::PathBuf),
    /// The file's bytes, already in memory.
    Bytes(Arc<[u8]>),
}

/// A NIfTI image opened as far as its header: its shape is known before any voxel is read (so a
/// caller can plan memory from it), then [`NiftiReader::read`] reads the voxels from the same
/// stream.
pub struct NiftiReader<'a> {
    header: Header,
    shape: Shape,
    stream: Box<dyn Read + 'a>,
    gz: bool,
    /// Where the whole compressed file can be had again: [`NiftiReader::read`] then inflates it in
    /// one call ([`crate::gz::inflate_whole`]) instead of streaming.
    whole: Whole,
    /// Whether the whole gzip stream was inflated and checked already.
    checked: bool,
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
        let mut reader = NiftiReader::from_reader(r, path.display().to_string())?;
        if reader.gz {
            reader.whole = Whole::Path(path.to_path_buf());
        }
        Ok(reader)
    }

    /// Reads the header of a whole file held in memory. A gzip file's voxels are then inflated
    /// in one call ([`crate::gz::inflate_whole`]) when it is a single intact member, else streamed.
    pub fn from_bytes(bytes: Arc<[u8]>, name: String) -> Result<Self, Reject> {
        let gz = bytes.starts_with(&[0x1f, 0x8b]);
        let mut reader = NiftiReader::from_reader(std::io::Cursor::new(bytes.clone()), name)?;
        if gz {
            reader.whole = Whole::Bytes(bytes);
        }
        Ok(reader)
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
            whole: Whole::None,
            checked: false,
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
        if self.gz && !self.checked {
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
        // A 3D single-member gzip file, its size now checked, is inflated whole and checked (CRC,
        // size, nothing after it); anything else streams on, and the stream's errors name the
        // damage.
        let payload = h.vox_offset.max(h.size() as u64) + (n as u64) * scalar.size() as u64;
        let inflated = match std::mem::replace(&mut self.whole, Whole::None) {
            _ if shape.volumes > 1 => None,
            Whole::None => None,
            Whole::Path(p) => std::fs::read(p)
                .ok()
                .and_then(|gz| crate::gz::inflate_whole(&gz, payload)),
            Whole::Bytes(gz) => crate::gz::inflate_whole(&gz, payload),
        };
        let data = match &inflated {
            Some(raw) => {
                self.checked = true;
                read_values(&mut &raw[h.size().min(raw.len())..], h, h.size() as u64, n)?
            }
            None => read_values(&mut self.stream, h, h.size() as u64, n)?,
        };
        drop(inflated);
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
