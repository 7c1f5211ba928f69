//! Writing CT Image Storage series with dicom-rs: one file per slice, uncompressed (explicit or
//! implicit VR little endian) or RLE Lossless (encoded here: dicom-rs decodes RLE but has no encoder).

use std::path::Path;

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use serde::Serialize;

use crate::SynthError;
use crate::geometry::{Encoding, Grid, PatientPosition};

/// Transfer syntaxes the generator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Syntax {
    /// 1.2.840.10008.1.2.1
    ExplicitLE,
    /// 1.2.840.10008.1.2
    ImplicitLE,
    /// 1.2.840.10008.1.2.5
    RleLossless,
}

impl Syntax {
    /// The transfer syntax UID.
    pub fn uid(self) -> &'static str {
        match self {
            Syntax::ExplicitLE => uids::EXPLICIT_VR_LITTLE_ENDIAN,
            Syntax::ImplicitLE => uids::IMPLICIT_VR_LITTLE_ENDIAN,
            Syntax::RleLossless => uids::RLE_LOSSLESS,
        }
    }
}

/// Identity and PHI-like values of a series (synthetic, but shaped like the real thing so
/// de-identification can be tested).
#[derive(Debug, Clone, Serialize)]
pub struct SeriesIdentity {
    /// PatientName.
    pub patient_name: String,
    /// PatientID (an MRN).
    pub patient_id: String,
    /// PatientBirthDate (YYYYMMDD).
    pub birth_date: String,
    /// PatientSex.
    pub sex: String,
    /// PatientAge ("063Y").
    pub age: String,
    /// AccessionNumber.
    pub accession: String,
    /// InstitutionName.
    pub institution: String,
    /// StudyDate.
    pub study_date: String,
    /// StudyInstanceUID.
    pub study_uid: String,
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// FrameOfReferenceUID.
    pub frame_uid: String,
    /// SeriesNumber.
    pub series_number: u32,
    /// SeriesDescription.
    pub description: String,
    /// ConvolutionKernel.
    pub kernel: String,
}

/// A deterministic DICOM UID under the 2.25 (UUID-derived) root.
pub fn uid(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    let b = h.finalize();
    let n = u128::from_le_bytes(b.as_bytes()[..16].try_into().unwrap()) >> 1;
    format!("2.25.{n}")
}

/// A decimal string (DS) value of at most 16 characters.
pub fn ds(x: f64) -> String {
    for prec in (0..=10).rev() {
        let s = format!("{x:.prec$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        let s = if s == "-0" { "0".to_string() } else { s };
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{x:.0}")
}

fn strs(v: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(v.iter().map(|x| ds(*x)).collect())
}

/// Patient, study and series elements every file of a series carries (identity, PHI-like values,
/// position, pixel format). `InMemDicomObject` keeps elements sorted by tag, so order here is free.
fn common_elements(
    id: &SeriesIdentity,
    grid: &Grid,
    pos: PatientPosition,
    enc: Encoding,
) -> Vec<DataElement<InMemDicomObject>> {
    vec![
        DataElement::new(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        DataElement::new(tags::STUDY_DATE, VR::DA, id.study_date.as_str()),
        DataElement::new(tags::ACCESSION_NUMBER, VR::SH, id.accession.as_str()),
        DataElement::new(tags::MODALITY, VR::CS, "CT"),
        DataElement::new(tags::MANUFACTURER, VR::LO, "mg3d-synth"),
        DataElement::new(tags::INSTITUTION_NAME, VR::LO, id.institution.as_str()),
        DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, id.description.as_str()),
        DataElement::new(tags::PATIENT_NAME, VR::PN, id.patient_name.as_str()),
        DataElement::new(tags::PATIENT_ID, VR::LO, id.patient_id.as_str()),
        DataElement::new(tags::PATIENT_BIRTH_DATE, VR::DA, id.birth_date.as_str()),
        DataElement::new(tags::PATIENT_SEX, VR::CS, id.sex.as_str()),
        DataElement::new(tags::PATIENT_AGE, VR::AS, id.age.as_str()),
        DataElement::new(tags::CONVOLUTION_KERNEL, VR::SH, id.kernel.as_str()),
        DataElement::new(tags::PATIENT_POSITION, VR::CS, pos.code()),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, id.study_uid.as_str()),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, id.series_uid.as_str()),
        DataElement::new(tags::SERIES_NUMBER, VR::IS, id.series_number.to_string()),
        DataElement::new(tags::FRAME_OF_REFERENCE_UID, VR::UI, id.frame_uid.as_str()),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(grid.rows as u16)),
        DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(grid.cols as u16),
        ),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(enc.signed as u16),
        ),
    ]
}

/// One slice file to write.
pub struct SliceSpec<'a> {
    /// Slice index in the grid (sorted along the slice direction).
    pub k: usize,
    /// InstanceNumber to write.
    pub instance_number: u32,
    /// HU voxels of this slice, row-major.
    pub hu: &'a [i16],
    /// SOPInstanceUID.
    pub sop_uid: String,
    /// Gantry tilt in degrees to record (0 for normal series).
    pub gantry_tilt: f64,
}

/// Writes one CT slice file.
pub fn write_slice(
    path: &Path,
    id: &SeriesIdentity,
    grid: &Grid,
    pos: PatientPosition,
    enc: Encoding,
    syntax: Syntax,
    s: &SliceSpec,
) -> Result<(), SynthError> {
    let ipp = grid.slice_position(s.k);
    let stored: Vec<u16> = s.hu.iter().map(|&h| enc.store(h)).collect();
    let iop = [
        grid.row_dir[0],
        grid.row_dir[1],
        grid.row_dir[2],
        grid.col_dir[0],
        grid.col_dir[1],
        grid.col_dir[2],
    ];
    let mut elements = common_elements(id, grid, pos, enc);
    elements.extend([
        DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            dicom_value!(Strs, ["ORIGINAL", "PRIMARY", "AXIAL"]),
        ),
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, s.sop_uid.as_str()),
        DataElement::new(tags::SLICE_THICKNESS, VR::DS, ds(grid.dz)),
        DataElement::new(tags::KVP, VR::DS, "120"),
        DataElement::new(tags::GANTRY_DETECTOR_TILT, VR::DS, ds(s.gantry_tilt)),
        DataElement::new(tags::INSTANCE_NUMBER, VR::IS, s.instance_number.to_string()),
        DataElement::new(tags::IMAGE_POSITION_PATIENT, VR::DS, strs(&ipp)),
        DataElement::new(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, strs(&iop)),
        DataElement::new(tags::PIXEL_SPACING, VR::DS, strs(&[grid.dy, grid.dx])),
        DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, ds(enc.intercept)),
        DataElement::new(tags::RESCALE_SLOPE, VR::DS, ds(enc.slope)),
        DataElement::new(tags::RESCALE_TYPE, VR::LO, "HU"),
    ]);
    let mut obj = InMemDicomObject::from_element_iter(elements);
    let bytes: Vec<u8> = stored.iter().flat_map(|v| v.to_le_bytes()).collect();
    match syntax {
        Syntax::RleLossless => {
            let frame = rle_encode_frame16(&stored, grid.cols, grid.rows);
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), vec![frame])),
            ));
        }
        _ => {
            let words: Vec<u16> = stored;
            let _ = bytes;
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(words.into()),
            ));
        }
    }
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(syntax.uid())
                .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(s.sop_uid.as_str()),
        )
        .map_err(|e| SynthError::DicomMeta(Box::new(e)))?;
    file.write_to_file(path)
        .map_err(|e| SynthError::DicomWrite {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
}

/// Writes a whole series as one Enhanced CT Image Storage object: frames in `frame_order` (indices
/// of grid slices), positioned by the per-frame functional groups (PlanePositionSequence), with
/// orientation, pixel measures and rescale in the shared functional groups.
pub fn write_enhanced(
    path: &Path,
    id: &SeriesIdentity,
    grid: &Grid,
    pos: PatientPosition,
    enc: Encoding,
    hu: &[i16],
    frame_order: &[usize],
) -> Result<(), SynthError> {
    use dicom_core::value::DataSetSequence;
    let item =
        |elems: Vec<DataElement<InMemDicomObject>>| InMemDicomObject::from_element_iter(elems);
    let seq = |tag, items: Vec<InMemDicomObject>| {
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    };
    let plane = grid.cols * grid.rows;
    let iop = [
        grid.row_dir[0],
        grid.row_dir[1],
        grid.row_dir[2],
        grid.col_dir[0],
        grid.col_dir[1],
        grid.col_dir[2],
    ];
    let shared = item(vec![
        seq(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item(vec![DataElement::new(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                strs(&iop),
            )])],
        ),
        seq(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![item(vec![
                DataElement::new(tags::SLICE_THICKNESS, VR::DS, ds(grid.dz)),
                DataElement::new(tags::PIXEL_SPACING, VR::DS, strs(&[grid.dy, grid.dx])),
            ])],
        ),
        seq(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            vec![item(vec![
                DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, ds(enc.intercept)),
                DataElement::new(tags::RESCALE_SLOPE, VR::DS, ds(enc.slope)),
                DataElement::new(tags::RESCALE_TYPE, VR::LO, "HU"),
            ])],
        ),
    ]);
    let per_frame: Vec<InMemDicomObject> = frame_order
        .iter()
        .map(|&k| {
            item(vec![seq(
                tags::PLANE_POSITION_SEQUENCE,
                vec![item(vec![DataElement::new(
                    tags::IMAGE_POSITION_PATIENT,
                    VR::DS,
                    strs(&grid.slice_position(k)),
                )])],
            )])
        })
        .collect();
    let mut stored: Vec<u16> = Vec::with_capacity(plane * frame_order.len());
    for &k in frame_order {
        stored.extend(hu[k * plane..(k + 1) * plane].iter().map(|&h| enc.store(h)));
    }
    let sop_uid = uid(&[&id.series_uid, "enhanced"]);
    let mut elements = common_elements(id, grid, pos, enc);
    elements.extend([
        DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            dicom_value!(Strs, ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]),
        ),
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::ENHANCED_CT_IMAGE_STORAGE),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, sop_uid.as_str()),
        DataElement::new(tags::INSTANCE_NUMBER, VR::IS, "1"),
        DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            frame_order.len().to_string(),
        ),
    ]);
    let mut obj = InMemDicomObject::from_element_iter(elements);
    obj.put(seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]));
    obj.put(seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(stored.into()),
    ));
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(uids::ENHANCED_CT_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(sop_uid.as_str()),
        )
        .map_err(|e| SynthError::DicomMeta(Box::new(e)))?;
    file.write_to_file(path)
        .map_err(|e| SynthError::DicomWrite {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
}

/// PackBits (DICOM PS3.5 G.3.1) of one byte run; rows are encoded separately.
fn packbits(src: &[u8], out: &mut Vec<u8>) {
    let n = src.len();
    let mut i = 0;
    while i < n {
        // Length of the replicate run starting at i.
        let mut run = 1;
        while i + run < n && run < 128 && src[i + run] == src[i] {
            run += 1;
        }
        if run >= 2 {
            out.push((1i16 - run as i16) as i8 as u8);
            out.push(src[i]);
            i += run;
            continue;
        }
        // Literal run: until two equal bytes start or 128 bytes.
        let start = i;
        let mut len = 0;
        while i < n && len < 128 {
            if i + 1 < n && src[i] == src[i + 1] {
                break;
            }
            i += 1;
            len += 1;
        }
        out.push((len - 1) as u8);
        out.extend_from_slice(&src[start..start + len]);
    }
}

/// RLE Lossless frame of 16-bit samples: 64-byte header, then the high-byte and low-byte segments.
pub fn rle_encode_frame16(samples: &[u16], cols: usize, rows: usize) -> Vec<u8> {
    let mut segs: Vec<Vec<u8>> = Vec::new();
    for shift in [8u32, 0] {
        let mut seg = Vec::new();
        for r in 0..rows {
            let row: Vec<u8> = samples[r * cols..(r + 1) * cols]
                .iter()
                .map(|v| (v >> shift) as u8)
                .collect();
            packbits(&row, &mut seg);
        }
        if seg.len() % 2 == 1 {
            seg.push(0x80); // no-op byte keeps segments even-length
        }
        segs.push(seg);
    }
    let mut out = vec![0u8; 64];
    out[0..4].copy_from_slice(&(segs.len() as u32).to_le_bytes());
    let mut off = 64u32;
    for (i, s) in segs.iter().enumerate() {
        out[4 + 4 * i..8 + 4 * i].copy_from_slice(&off.to_le_bytes());
        off += s.len() as u32;
    }
    for s in segs {
        out.extend_from_slice(&s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack(seg: &[u8], n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while out.len() < n {
            let h = seg[i] as i8;
            i += 1;
            if h >= 0 {
                let l = h as usize + 1;
                out.extend_from_slice(&seg[i..i + l]);
                i += l;
            } else if h != -128 {
                let l = 1 - h as isize;
                out.extend(std::iter::repeat_n(seg[i], l as usize));
                i += 1;
            }
        }
        out
    }

    #[test]
    fn packbits_round_trip() {
        let row: Vec<u8> = (0..300)
            .map(|i| if i % 50 < 30 { 7 } else { (i * 13 % 256) as u8 })
            .collect();
        let mut seg = Vec::new();
        packbits(&row, &mut seg);
        assert_eq!(unpack(&seg, row.len()), row);
    }

    #[test]
    fn ds_fits_16_chars() {
        for x in [-173.41666666666666, 0.1 + 0.2, 12345678.123456, -0.0, 1e-9] {
            assert!(ds(x).len() <= 16, "{x} -> {}", ds(x));
        }
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(-1024.0), "-1024");
    }
}
