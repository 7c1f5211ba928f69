//! Crafted inputs for the hostile-input corpus and the parser fuzzer: NIfTI-1 files built byte by
//! byte (so a test can set any header field, byte order or magic), small CT slices built with
//! dicom-rs (carrying planted identifiers), and the byte mutator of the fuzzer.

use std::io::Write;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Identifiers every crafted CT slice carries in its header; none may reach an output.
pub const PLANTED: [&str; 7] = [
    "ZEBULON",
    "QUIXOTE",
    "MRN4471923",
    "ACC99120077",
    "19470312",
    "20190517",
    "St Elsewhere Clinic",
];

/// A NIfTI-1 single file described field by field; [`Nii::bytes`] encodes it.
#[derive(Debug, Clone)]
pub struct Nii {
    /// dim[1..] (dim[0] is their count).
    pub dims: Vec<i16>,
    /// Datatype code.
    pub datatype: i16,
    /// bitpix.
    pub bitpix: i16,
    /// vox_offset as stored.
    pub vox_offset: f32,
    /// srow_x, srow_y, srow_z (sform_code 1).
    pub srow: [[f32; 4]; 3],
    /// xyzt_units.
    pub units: u8,
    /// The magic ("n+1\0" for a single file).
    pub magic: &'static [u8; 4],
    /// Big-endian header and (2-byte) data.
    pub big: bool,
    /// Voxel bytes, little-endian (swapped in pairs when `big`).
    pub data: Vec<u8>,
}

impl Nii {
    /// An int16 image of `dims` with 0.7 x 0.7 x 2.5 mm voxels.
    pub fn int16(dims: &[i16], values: &[i16]) -> Nii {
        Nii {
            dims: dims.to_vec(),
            datatype: 4,
            bitpix: 16,
            vox_offset: 352.0,
            srow: [
                [0.7, 0.0, 0.0, 0.0],
                [0.0, 0.7, 0.0, 0.0],
                [0.0, 0.0, 2.5, 0.0],
            ],
            units: 2,
            magic: b"n+1\0",
            big: false,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The file's bytes (352-byte header, then the data).
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 352];
        let e16 = |v: i16| {
            if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let e32 = |v: i32| {
            if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let f32b = |v: f32| {
            if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        b[0..4].copy_from_slice(&e32(348));
        let mut dim = [1i16; 8];
        dim[0] = self.dims.len() as i16;
        dim[1..=self.dims.len()].copy_from_slice(&self.dims);
        for (i, d) in dim.iter().enumerate() {
            b[40 + 2 * i..42 + 2 * i].copy_from_slice(&e16(*d));
        }
        b[70..72].copy_from_slice(&e16(self.datatype));
        b[72..74].copy_from_slice(&e16(self.bitpix));
        for i in 0..8 {
            b[76 + 4 * i..80 + 4 * i].copy_from_slice(&f32b(1.0));
        }
        b[108..112].copy_from_slice(&f32b(self.vox_offset));
        b[123] = self.units;
        b[254..256].copy_from_slice(&e16(1)); // sform_code
        for r in 0..3 {
            for c in 0..4 {
                let at = 280 + 16 * r + 4 * c;
                b[at..at + 4].copy_from_slice(&f32b(self.srow[r][c]));
            }
        }
        b[344..348].copy_from_slice(self.magic);
        let mut data = self.data.clone();
        if self.big {
            for ch in data.chunks_exact_mut(2) {
                ch.swap(0, 1);
            }
        }
        b.extend(data);
        b
    }
}

/// `b` gzip-compressed.
pub fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A DS value of several numbers.
pub fn ds(v: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(v.iter().map(|x| x.to_string()).collect::<Vec<_>>().into())
}

/// Slice `k` of a 4x4 CT series (stored 1000 + 10k + i, intercept -1024, 0.7 mm pixels, 2.5 mm
/// apart along z), with the [`PLANTED`] identifiers, passed through `edit` and encoded in
/// transfer syntax `ts` as a Part 10 file.
pub fn ct_slice(
    series_uid: &str,
    k: usize,
    ts: &str,
    edit: impl Fn(&mut InMemDicomObject),
) -> Vec<u8> {
    let sop = format!("{series_uid}.{}", k + 1);
    let px: Vec<u16> = (0..16).map(|i| 1000 + 10 * k as u16 + i).collect();
    let mut o = InMemDicomObject::from_element_iter([
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, sop.as_str()),
        DataElement::new(tags::STUDY_DATE, VR::DA, PLANTED[5]),
        DataElement::new(tags::ACCESSION_NUMBER, VR::SH, PLANTED[3]),
        DataElement::new(tags::MODALITY, VR::CS, "CT"),
        DataElement::new(tags::INSTITUTION_NAME, VR::LO, PLANTED[6]),
        DataElement::new(tags::PATIENT_NAME, VR::PN, "QUIXOTE^ZEBULON"),
        DataElement::new(tags::PATIENT_ID, VR::LO, PLANTED[2]),
        DataElement::new(tags::PATIENT_BIRTH_DATE, VR::DA, PLANTED[4]),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, "2.25.1"),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
        DataElement::new(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            ds(&[0.0, 0.0, 2.5 * k as f64]),
        ),
        DataElement::new(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            ds(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        ),
        DataElement::new(tags::PIXEL_SPACING, VR::DS, ds(&[0.7, 0.7])),
        DataElement::new(tags::SLICE_THICKNESS, VR::DS, "2.5"),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(4u16)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(4u16)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
        DataElement::new(tags::RESCALE_SLOPE, VR::DS, "1"),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(px.into())),
    ]);
    edit(&mut o);
    let f = o
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
                .media_storage_sop_instance_uid(sop.as_str()),
        )
        .unwrap();
    let mut out = Vec::new();
    f.write_all(&mut out).unwrap();
    out
}

/// 1 to 8 random edits of `seed`: bit flips, interesting bytes, deletions, duplications,
/// insertions, truncation, and 32-bit fields set to extremes (dims, lengths, offsets).
pub fn mutate(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=8) {
        if b.is_empty() {
            b.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..b.len());
        match rng.random_range(0..7) {
            0 => b[at] ^= 1 << rng.random_range(0..8),
            1 => b[at] = [0, 0xff, 0x7f, 0x80, 1, 0xfe][rng.random_range(0..6)],
            2 => {
                let n = rng.random_range(1..=16.min(b.len() - at));
                b.drain(at..at + n);
            }
            3 => {
                let n = rng.random_range(1..=32.min(b.len() - at));
                let chunk = b[at..at + n].to_vec();
                b.splice(at..at, chunk);
            }
            4 => {
                let n = rng.random_range(1..=8);
                b.splice(at..at, (0..n).map(|_| rng.random::<u8>()));
            }
            5 => b.truncate(at),
            _ => {
                let v: u32 = [0, u32::MAX, 0x7fff_ffff, 0x8000_0000, 0xffff, 348, 540]
                    [rng.random_range(0..7)];
                for (k, x) in v.to_le_bytes().iter().enumerate() {
                    if let Some(y) = b.get_mut(at + k) {
                        *y = *x;
                    }
                }
            }
        }
    }
    b
}

/// How many fuzz inputs a test runs: `MG3D_FUZZ_ITERS`, else `default`.
pub fn fuzz_iters(default: u64) -> u64 {
    std::env::var("MG3D_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
