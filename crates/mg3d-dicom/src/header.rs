//! One DICOM file's header: read once up to the pixel data (after the length pre-scan and its
//! repairs), the fields mg3d needs (geometry, rescale, pixel layout, per-frame functional groups),
//! the identifying values kept only for scrubbing, and the size checks before any pixel is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};

use crate::dicom_scan::{Repairs, Scan, check_element_lengths};
use mg3d_volume::Reject;

/// What one DICOM file's header says (values needed for grouping, geometry and provenance).
/// PHI-bearing values are kept only so callers can scrub them; they are never written out.
#[derive(Debug, Clone, Default)]
pub struct SliceHeader {
    /// The file.
    pub path: PathBuf,
    /// File size in bytes.
    pub file_len: u64,
    /// Transfer syntax UID.
    pub transfer_syntax: String,
    /// SOPClassUID.
    pub sop_class: String,
    /// SOPInstanceUID.
    pub sop_uid: String,
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// StudyInstanceUID.
    pub study_uid: String,
    /// Modality.
    pub modality: String,
    /// ImageType values.
    pub image_type: Vec<String>,
    /// ImageOrientationPatient.
    pub iop: Option<[f64; 6]>,
    /// ImagePositionPatient.
    pub ipp: Option<[f64; 3]>,
    /// PixelSpacing (row spacing, column spacing).
    pub pixel_spacing: Option<[f64; 2]>,
    /// SliceThickness.
    pub slice_thickness: Option<f64>,
    /// GantryDetectorTilt (degrees).
    pub gantry_tilt: Option<f64>,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// NumberOfFrames (1 when absent).
    pub frames: u32,
    /// BitsAllocated.
    pub bits_allocated: u16,
    /// BitsStored.
    pub bits_stored: u16,
    /// PixelRepresentation (1 = signed).
    pub pixel_representation: u16,
    /// SamplesPerPixel.
    pub samples_per_pixel: u16,
    /// PhotometricInterpretation.
    pub photometric: String,
    /// RescaleSlope (1 when absent).
    pub slope: f64,
    /// RescaleIntercept (0 when absent).
    pub intercept: f64,
    /// Whether RescaleSlope/Intercept were present.
    pub has_rescale: bool,
    /// PixelPaddingValue.
    pub padding: Option<f64>,
    /// InstanceNumber.
    pub instance_number: Option<i64>,
    /// Allowed, non-identifying metadata (PatientSex, PatientAge, Manufacturer, model, kernel, position).
    pub allowed: BTreeMap<String, String>,
    /// PatientID, for the patient pseudonym only.
    pub patient_id: Option<String>,
    /// Identifying values (ids, names, dates, institution, station): for scrubbing only.
    pub phi: mg3d_core::phi::Phi,
    /// The file was parsed after [`Repairs`] (a wrong meta group length, implicit VR under an
    /// explicit-VR meta group, top-level undefined-length UN elements), as pydicom reads such files.
    pub repaired: bool,
    /// Enhanced multi-frame objects: each frame's geometry and rescale from the shared and
    /// per-frame functional groups (empty for single-frame objects).
    pub frames_geo: Vec<FrameGeo>,
}

/// One frame's geometry and rescale (enhanced multi-frame functional groups).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameGeo {
    /// PlanePositionSequence > ImagePositionPatient.
    pub ipp: Option<[f64; 3]>,
    /// PlaneOrientationSequence > ImageOrientationPatient.
    pub iop: Option<[f64; 6]>,
    /// PixelMeasuresSequence > PixelSpacing.
    pub pixel_spacing: Option<[f64; 2]>,
    /// PixelMeasuresSequence > SliceThickness.
    pub thickness: Option<f64>,
    /// PixelValueTransformationSequence > RescaleSlope.
    pub slope: Option<f64>,
    /// PixelValueTransformationSequence > RescaleIntercept.
    pub intercept: Option<f64>,
}

pub(crate) fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .and_then(|it| it.first())
}

pub(crate) fn fill_frame(item: &InMemDicomObject, g: &mut FrameGeo) {
    let multi = |o: &InMemDicomObject, t: Tag| {
        o.element_opt(t)
            .ok()
            .flatten()
            .and_then(|e| e.to_multi_float64().ok())
    };
    let one = |o: &InMemDicomObject, t: Tag| {
        o.element_opt(t)
            .ok()
            .flatten()
            .and_then(|e| e.to_float64().ok())
    };
    if let Some(v) = first_item(item, tags::PLANE_POSITION_SEQUENCE)
        .and_then(|o| multi(o, tags::IMAGE_POSITION_PATIENT))
        .filter(|v| v.len() >= 3)
    {
        g.ipp = Some([v[0], v[1], v[2]]);
    }
    if let Some(v) = first_item(item, tags::PLANE_ORIENTATION_SEQUENCE)
        .and_then(|o| multi(o, tags::IMAGE_ORIENTATION_PATIENT))
        .filter(|v| v.len() >= 6)
    {
        g.iop = Some([v[0], v[1], v[2], v[3], v[4], v[5]]);
    }
    if let Some(pm) = first_item(item, tags::PIXEL_MEASURES_SEQUENCE) {
        if let Some(v) = multi(pm, tags::PIXEL_SPACING).filter(|v| v.len() >= 2) {
            g.pixel_spacing = Some([v[0], v[1]]);
        }
        g.thickness = one(pm, tags::SLICE_THICKNESS).or(g.thickness);
    }
    if let Some(pv) = first_item(item, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE) {
        g.slope = one(pv, tags::RESCALE_SLOPE).or(g.slope);
        g.intercept = one(pv, tags::RESCALE_INTERCEPT).or(g.intercept);
    }
}

/// Per-frame geometry of an enhanced multi-frame object (shared groups, overridden per frame).
pub(crate) fn functional_groups(obj: &InMemDicomObject) -> Vec<FrameGeo> {
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let Some(per) = obj
        .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items())
    else {
        return Vec::new();
    };
    per.iter()
        .map(|p| {
            let mut g = FrameGeo::default();
            if let Some(sh) = shared {
                fill_frame(sh, &mut g);
            }
            fill_frame(p, &mut g);
            g
        })
        .collect()
}

pub(crate) type Element = dicom_object::mem::InMemElement;

pub(crate) fn element(obj: &DefaultDicomObject, tag: Tag) -> Option<&Element> {
    obj.element_opt(tag).ok().flatten()
}

/// An element stored with VR UN (anonymisers and PACS exports re-encode known elements so) read
/// as its dictionary VR's text, as pydicom does: the value bytes are the ASCII the VR would hold.
pub(crate) fn un_text(e: &Element) -> Option<String> {
    let b = e.to_bytes().ok()?;
    let t = std::str::from_utf8(&b).ok()?;
    t.chars()
        .all(|c| c.is_ascii_graphic() || c == ' ' || c == '\0')
        .then(|| {
            t.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string()
        })
}

/// A binary US/UL element stored as UN: 2 or 4 little-endian bytes.
pub(crate) fn un_uint(e: &Element) -> Option<u32> {
    let b = e.to_bytes().ok()?;
    match b.len() {
        2 => Some(u16::from_le_bytes([b[0], b[1]]) as u32),
        4 => Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        _ => None,
    }
}

pub(crate) fn s(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let e = element(obj, tag)?;
    let v = if e.vr() == VR::UN {
        un_text(e)?
    } else {
        e.to_str().ok()?.into_owned()
    };
    Some(v.trim().trim_end_matches('\0').trim().to_string()).filter(|v| !v.is_empty())
}

pub(crate) fn fs(obj: &DefaultDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let e = element(obj, tag)?;
    if e.vr() == VR::UN {
        return un_text(e)?
            .split('\\')
            .map(|x| x.trim().parse().ok())
            .collect();
    }
    e.to_multi_float64().ok()
}

pub(crate) fn f(obj: &DefaultDicomObject, tag: Tag) -> Option<f64> {
    let e = element(obj, tag)?;
    if e.vr() == VR::UN {
        return match un_text(e) {
            Some(t) => t.split('\\').next()?.trim().parse().ok(),
            None => un_uint(e).map(|v| v as f64),
        };
    }
    e.to_float64().ok()
}

pub(crate) fn u(obj: &DefaultDicomObject, tag: Tag) -> Option<u32> {
    let e = element(obj, tag)?;
    if e.vr() == VR::UN {
        return un_uint(e);
    }
    e.to_int::<u32>().ok()
}

pub(crate) fn has_dicm_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map(|_| &b[128..132] == b"DICM")
        .unwrap_or(false)
}

pub(crate) fn header_from(obj: &DefaultDicomObject, path: &Path, file_len: u64) -> SliceHeader {
    let mut allowed = BTreeMap::new();
    for (k, t) in [
        ("PatientSex", tags::PATIENT_SEX),
        ("PatientAge", tags::PATIENT_AGE),
        ("Manufacturer", tags::MANUFACTURER),
        ("ManufacturerModelName", tags::MANUFACTURER_MODEL_NAME),
        ("ConvolutionKernel", tags::CONVOLUTION_KERNEL),
        ("PatientPosition", tags::PATIENT_POSITION),
        ("BodyPartExamined", tags::BODY_PART_EXAMINED),
        ("KVP", tags::KVP),
    ] {
        if let Some(v) = s(obj, t) {
            allowed.insert(k.to_string(), v);
        }
    }
    let mut phi = mg3d_core::phi::Phi::new();
    let multi = |t| {
        s(obj, t).into_iter().flat_map(|v| {
            v.split('\\')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
    };
    for t in [
        tags::PATIENT_ID,
        Tag(0x0010, 0x1000), // OtherPatientIDs (retired, still written by PACS)
        tags::ACCESSION_NUMBER,
        tags::STUDY_ID,
        tags::INSTITUTION_NAME,
        tags::INSTITUTION_ADDRESS,
        tags::PATIENT_ADDRESS,
        tags::STATION_NAME,
    ] {
        multi(t).for_each(|v| phi.add_value(&v));
    }
    for t in [
        tags::PATIENT_NAME,
        tags::REFERRING_PHYSICIAN_NAME,
        tags::PERFORMING_PHYSICIAN_NAME,
        tags::OPERATORS_NAME,
    ] {
        multi(t).for_each(|v| phi.add_name(&v));
    }
    for t in [
        tags::PATIENT_BIRTH_DATE,
        tags::STUDY_DATE,
        tags::SERIES_DATE,
        tags::ACQUISITION_DATE,
        tags::CONTENT_DATE,
    ] {
        multi(t).for_each(|v| phi.add_date(&v));
    }
    let arr = |v: Option<Vec<f64>>, n: usize| v.filter(|v| v.len() >= n);
    let slope = f(obj, tags::RESCALE_SLOPE);
    let intercept = f(obj, tags::RESCALE_INTERCEPT);
    SliceHeader {
        path: path.to_path_buf(),
        file_len,
        transfer_syntax: obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string(),
        sop_class: s(obj, tags::SOP_CLASS_UID).unwrap_or_default(),
        sop_uid: s(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        series_uid: s(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        study_uid: s(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        modality: s(obj, tags::MODALITY).unwrap_or_default(),
        image_type: obj
            .element_opt(tags::IMAGE_TYPE)
            .ok()
            .flatten()
            .and_then(|e| {
                e.to_multi_str()
                    .ok()
                    .map(|v| v.iter().map(|x| x.trim().to_uppercase()).collect())
            })
            .unwrap_or_default(),
        iop: arr(fs(obj, tags::IMAGE_ORIENTATION_PATIENT), 6)
            .map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]]),
        ipp: arr(fs(obj, tags::IMAGE_POSITION_PATIENT), 3).map(|v| [v[0], v[1], v[2]]),
        pixel_spacing: arr(fs(obj, tags::PIXEL_SPACING), 2).map(|v| [v[0], v[1]]),
        slice_thickness: f(obj, tags::SLICE_THICKNESS),
        gantry_tilt: f(obj, tags::GANTRY_DETECTOR_TILT),
        rows: u(obj, tags::ROWS).unwrap_or(0),
        cols: u(obj, tags::COLUMNS).unwrap_or(0),
        frames: s(obj, tags::NUMBER_OF_FRAMES)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        bits_allocated: u(obj, tags::BITS_ALLOCATED).unwrap_or(16) as u16,
        bits_stored: u(obj, tags::BITS_STORED)
            .or(u(obj, tags::BITS_ALLOCATED))
            .unwrap_or(16) as u16,
        pixel_representation: u(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) as u16,
        samples_per_pixel: u(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as u16,
        photometric: s(obj, tags::PHOTOMETRIC_INTERPRETATION)
            .unwrap_or_else(|| "MONOCHROME2".into()),
        has_rescale: slope.is_some() || intercept.is_some(),
        slope: slope.filter(|v| *v != 0.0).unwrap_or(1.0),
        intercept: intercept.unwrap_or(0.0),
        // A padding value stored as UN comes back unsigned; for signed pixels it is an SS.
        padding: f(obj, tags::PIXEL_PADDING_VALUE).map(|p| {
            let signed = u(obj, tags::PIXEL_REPRESENTATION) == Some(1);
            if signed && p > 32767.0 && p <= 65535.0 {
                p - 65536.0
            } else {
                p
            }
        }),
        instance_number: s(obj, tags::INSTANCE_NUMBER).and_then(|v| v.parse().ok()),
        allowed,
        patient_id: s(obj, tags::PATIENT_ID).filter(|v| !v.trim().is_empty()),
        phi,
        repaired: false,
        frames_geo: functional_groups(obj),
    }
}

pub(crate) fn is_native(ts: &str) -> bool {
    matches!(
        ts,
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2"
    )
}

/// Reads one file's header (up to the pixel data). Rejects: `empty_file`, `not_dicom`,
/// `dicom_truncated` (file shorter than its native pixel data), `dicom_unreadable`,
/// `dicom_corrupt`, `volume_too_large`.
pub fn read_header(path: &Path) -> Result<SliceHeader, Reject> {
    parse_header(path).and_then(checked_header)
}

/// [`read_header`] without [`checked_header`]'s size checks: a header that parses, whether or not
/// its file can hold its pixels.
pub fn parse_header(path: &Path) -> Result<SliceHeader, Reject> {
    let len = std::fs::metadata(path)
        .map_err(|e| Reject::new("unreadable", format!("{}: {e}", path.display())))?
        .len();
    if len == 0 {
        return Err(Reject::new(
            "empty_file",
            format!("{} has 0 bytes", path.display()),
        ));
    }
    let named = |r: Reject| Reject::new(r.code, format!("{}: {}", path.display(), r.message));
    // The file is read once, as far as its element headers reach the pixel data; the header is
    // parsed from those bytes. A header the prefix cannot hold goes to the parser on the file.
    if let Some((prefix, scan)) = read_prefix(path, len).map_err(named)? {
        match header_from_prefix(&prefix, &scan, path, len) {
            Ok(h) => return Ok(h),
            Err(r) if r.code == "dicom_corrupt" || (prefix.len() as u64) == len => {
                return Err(named(r));
            }
            Err(_) => {}
        }
    }
    let obj = match OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
    {
        Ok(o) => o,
        Err(e) => {
            let code = if has_dicm_magic(path) {
                "dicom_unreadable"
            } else {
                "not_dicom"
            };
            return Err(Reject::new(code, format!("{}: {e}", path.display())));
        }
    };
    Ok(header_from(&obj, path, len))
}

/// The start of a Part 10 file, grown (64 KiB, x4, up to 16 MiB) until [`check_element_lengths`]
/// has seen every element header before the pixel data. `None` for a file without the DICM magic
/// or a header longer than 16 MiB (the parser reads those from the file).
pub(crate) fn read_prefix(path: &Path, len: u64) -> Result<Option<(Vec<u8>, Scan)>, Reject> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Reject::new("unreadable", e.to_string()))?;
    let mut buf = Vec::new();
    let mut want = 64usize << 10;
    loop {
        let have = buf.len();
        (&mut f)
            .take((want - have) as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Reject::new("unreadable", e.to_string()))?;
        if buf.get(128..132).is_some_and(|m| m != b"DICM") || buf.len() < 132 {
            return Ok(None);
        }
        let scan = check_element_lengths(&buf, len)?;
        if scan != Scan::NeedMore || buf.len() as u64 >= len {
            return Ok(Some((buf, scan)));
        }
        if want >= 16 << 20 {
            return Ok(None);
        }
        want *= 4;
    }
}

/// A header parsed from the start of a Part 10 file (preamble included), as the pre-scan found it.
pub(crate) fn header_from_prefix(
    prefix: &[u8],
    scan: &Scan,
    path: &Path,
    len: u64,
) -> Result<SliceHeader, Reject> {
    let fixed;
    let (bytes, repaired) = match scan {
        Scan::Done(r) if !r.is_empty() => {
            fixed = repaired(prefix, r)?;
            (&fixed[..], true)
        }
        _ => (prefix, false),
    };
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .read_preamble(dicom_object::file::ReadPreamble::Never)
        .from_reader(&bytes[128..])
        .map_err(|e| Reject::new("dicom_unreadable", e.to_string()))?;
    let mut h = header_from(&obj, path, len);
    h.repaired = repaired;
    Ok(h)
}

/// The bytes of a Part 10 file (preamble included, or its start) after `r`: the meta group length
/// corrected, the dropped ranges removed, and the meta group saying implicit VR where the data set
/// is implicit VR.
pub(crate) fn repaired(bytes: &[u8], r: &Repairs) -> Result<Vec<u8>, Reject> {
    let patched;
    let bytes = match r.meta_group_length {
        Some((at, len)) if bytes.len() >= at + 4 => {
            let mut b = bytes.to_vec();
            b[at..at + 4].copy_from_slice(&len.to_le_bytes());
            patched = b;
            &patched[..]
        }
        _ => bytes,
    };
    let mut body = Vec::with_capacity(bytes.len());
    let mut pos = 0;
    for d in &r.dropped {
        body.extend_from_slice(bytes.get(pos..d.start).unwrap_or_default());
        pos = d.end;
    }
    body.extend_from_slice(bytes.get(pos..).unwrap_or_default());
    let Some(data_start) = r.implicit_vr_from else {
        return Ok(body);
    };
    // Dropped ranges lie in the data set, after `data_start`: the meta group is where it was.
    let unreadable = |e: &dyn std::fmt::Display| Reject::new("dicom_unreadable", e.to_string());
    let mut meta = dicom_object::FileMetaTable::from_reader(&bytes[128..data_start])
        .map_err(|e| unreadable(&e))?;
    meta.transfer_syntax = "1.2.840.10008.1.2\0".into();
    meta.update_information_group_length();
    let mut out = bytes[..132].to_vec();
    meta.write(&mut out).map_err(|e| unreadable(&e))?;
    out.extend_from_slice(&body[data_start..]);
    Ok(out)
}

/// A header from a whole file held in memory (preamble included), as [`read_header`] reads it
/// from disk: for callers that hold bytes (and the parser fuzzer).
pub fn read_header_bytes(bytes: &[u8]) -> Result<SliceHeader, Reject> {
    if bytes.is_empty() {
        return Err(Reject::new("empty_file", "0 bytes"));
    }
    if bytes.get(128..132) != Some(b"DICM") {
        return Err(Reject::new("not_dicom", "no DICM magic after the preamble"));
    }
    let scan = check_element_lengths(bytes, bytes.len() as u64)?;
    checked_header(header_from_prefix(
        bytes,
        &scan,
        Path::new(""),
        bytes.len() as u64,
    )?)
}

/// Rejects headers whose sizes cannot be real before any pixel is read.
pub fn checked_header(h: SliceHeader) -> Result<SliceHeader, Reject> {
    let (path, len) = (&h.path, h.file_len);
    // Header fields can multiply past u64 (or past any sane volume) before a pixel is read.
    let voxels = [h.cols as u64, h.frames as u64, h.samples_per_pixel as u64]
        .iter()
        .try_fold(h.rows as u64, |a, &b| a.checked_mul(b))
        .filter(|&v| v <= mg3d_volume::nifti_io::DEFAULT_MAX_VOXELS);
    let Some(voxels) = voxels else {
        return Err(Reject::new(
            "volume_too_large",
            format!(
                "{}: Rows {} x Columns {} x NumberOfFrames {} x SamplesPerPixel {} is over {} values",
                path.display(),
                h.rows,
                h.cols,
                h.frames,
                h.samples_per_pixel,
                mg3d_volume::nifti_io::DEFAULT_MAX_VOXELS
            ),
        ));
    };
    // Bits, not bytes, per sample: 1-bit data (segmentations) packs eight to a byte.
    let pixel_bytes = voxels.saturating_mul(h.bits_allocated as u64).div_ceil(8);
    if is_native(&h.transfer_syntax) && pixel_bytes > 0 && len < pixel_bytes {
        return Err(Reject::new(
            "dicom_truncated",
            format!(
                "{}: {len} bytes, but its pixel data alone needs {pixel_bytes}",
                path.display()
            ),
        ));
    }
    Ok(h)
}
