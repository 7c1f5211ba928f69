//! Writing NIfTI-1 volumes (.nii.gz) with the nifti crate, sform and qform both set.

use std::path::Path;

use ndarray::{Array3, ShapeBuilder};
use nifti::NiftiHeader;
use nifti::writer::WriterOptions;

use crate::SynthError;

/// Header with sform and qform (both code 1) from a voxel -> RAS affine (shared with mg3d-volume).
pub fn header_for(
    affine: &[[f64; 4]; 4],
    spacing: [f64; 3],
    scl: Option<(f64, f64)>,
) -> NiftiHeader {
    let mut h = mg3d_volume::nifti_write::header_for(affine, spacing, scl);
    h.descrip = b"mg3d-synth".to_vec();
    h
}

/// Writes voxels given in (k, j, i) order as a NIfTI volume of shape (i, j, k); the datatype
/// follows `T`.
fn write<T: nifti::DataElement + bytemuck::Pod>(
    path: &Path,
    data: Vec<T>,
    dims: [usize; 3],
    header: &NiftiHeader,
) -> Result<(), SynthError> {
    let arr = Array3::from_shape_vec((dims[0], dims[1], dims[2]).f(), data)?;
    WriterOptions::new(path)
        .reference_header(header)
        .write_nifti(&arr)
        .map_err(|source| SynthError::Nifti {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes int16 voxels given in (k, j, i) order as a NIfTI volume of shape (i, j, k).
/// The header's `scl_slope`/`scl_inter` are kept (the nifti crate's writer resets them to 1/0,
/// so they are patched into the written header).
pub fn write_i16(
    path: &Path,
    data: Vec<i16>,
    dims: [usize; 3],
    header: &NiftiHeader,
) -> Result<(), SynthError> {
    write(path, data, dims, header)?;
    if header.scl_slope != 1.0 || header.scl_inter != 0.0 {
        patch_scaling(path, header.scl_slope, header.scl_inter).map_err(|source| {
            SynthError::File {
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Rewrites scl_slope (byte 112) and scl_inter (byte 116) of a little-endian .nii.gz.
fn patch_scaling(path: &Path, slope: f32, inter: f32) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_end(&mut raw)?;
    raw[112..116].copy_from_slice(&slope.to_le_bytes());
    raw[116..120].copy_from_slice(&inter.to_le_bytes());
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw)?;
    std::fs::write(path, enc.finish()?)
}

/// Writes float32 voxels given in (k, j, i) order.
pub fn write_f32(
    path: &Path,
    data: Vec<f32>,
    dims: [usize; 3],
    header: &NiftiHeader,
) -> Result<(), SynthError> {
    write(path, data, dims, header)
}
