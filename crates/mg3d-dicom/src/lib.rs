//! mg3d-dicom: DICOM series to [`mg3d_volume::Volume`]s following the correctness rules.
//!
//! - [`dicom_scan`]: a pre-scan of every element header to the pixel data, before dicom-rs parses
//!   a file (lengths against the bytes, nesting depth), and the [`dicom_scan::Repairs`] for the
//!   defects pydicom reads through.
//! - [`header`]: one file's header, read once to the pixel data, with the size checks;
//! - [`pixels`]: a file's frames as stored and as rescaled values;
//! - [`series`]: series grouping (series, orientation, size; localizers dropped) and assembly
//!   (sorted along the normal, uniform spacing, missing/duplicate slices, gantry tilt, per-slice
//!   rescale, MONOCHROME1, pixel padding, LPS -> RAS).
//! - [`rle`]: RLE Lossless frames where dicom-rs's decoder gives up.

#![allow(clippy::needless_range_loop)] // matrix and voxel code reads better with indices

pub mod dicom_scan;
pub mod header;
pub mod pixels;
pub mod rle;
pub mod series;
