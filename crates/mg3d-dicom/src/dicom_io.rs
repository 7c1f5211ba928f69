//! DICOM: header scanning, series grouping and assembly into HU volumes.
//!
//! Rules (reference/anchors.md §2): group by SeriesInstanceUID, then by orientation and matrix
//! size; drop localizers; sort by ImagePositionPatient projected on the slice normal (never by
//! InstanceNumber); spacing from the sorted positions with a uniformity check; duplicate and missing
//! slices and gantry tilt detected; HU = stored * RescaleSlope + RescaleIntercept per slice, applied
//! once here; MONOCHROME1 inverted; PixelPaddingValue mapped to the volume minimum; LPS -> RAS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use serde::Serialize;

use crate::dicom_scan::{Repairs, Scan, check_element_lengths};
use mg3d_volume::{Reject, Volume};

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

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .and_then(|it| it.first())
}

fn fill_frame(item: &InMemDicomObject, g: &mut FrameGeo) {
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
fn functional_groups(obj: &InMemDicomObject) -> Vec<FrameGeo> {
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

type Element = dicom_object::mem::InMemElement;

fn element(obj: &DefaultDicomObject, tag: Tag) -> Option<&Element> {
    obj.element_opt(tag).ok().flatten()
}

/// An element stored with VR UN (anonymisers and PACS exports re-encode known elements so) read
/// as its dictionary VR's text, as pydicom does: the value bytes are the ASCII the VR would hold.
fn un_text(e: &Element) -> Option<String> {
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
fn un_uint(e: &Element) -> Option<u32> {
    let b = e.to_bytes().ok()?;
    match b.len() {
        2 => Some(u16::from_le_bytes([b[0], b[1]]) as u32),
        4 => Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        _ => None,
    }
}

fn s(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let e = element(obj, tag)?;
    let v = if e.vr() == VR::UN {
        un_text(e)?
    } else {
        e.to_str().ok()?.into_owned()
    };
    Some(v.trim().trim_end_matches('\0').trim().to_string()).filter(|v| !v.is_empty())
}
fn fs(obj: &DefaultDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let e = element(obj, tag)?;
    if e.vr() == VR::UN {
        return un_text(e)?
            .split('\\')
            .map(|x| x.trim().parse().ok())
            .collect();
    }
    e.to_multi_float64().ok()
}
fn f(obj: &DefaultDicomObject, tag: Tag) -> Option<f64> {
    let e = element(obj, tag)?;
    if e.vr() == VR::UN {
        return match un_text(e) {
            Some(t) => t.split('\\').next()?.trim().parse().ok(),
            None => un_uint(e).map(|v| v as f64),
        };
    }
    e.to_float64().ok()
}
fn u(obj: &DefaultDicomObject, tag: Tag) -> Option<u32> {
    let e = element(obj, tag)?;
    if e.vr() == VR::UN {
        return un_uint(e);
    }
    e.to_int::<u32>().ok()
}

fn has_dicm_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map(|_| &b[128..132] == b"DICM")
        .unwrap_or(false)
}

fn header_from(obj: &DefaultDicomObject, path: &Path, file_len: u64) -> SliceHeader {
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

fn is_native(ts: &str) -> bool {
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
fn read_prefix(path: &Path, len: u64) -> Result<Option<(Vec<u8>, Scan)>, Reject> {
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
fn header_from_prefix(
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
fn repaired(bytes: &[u8], r: &Repairs) -> Result<Vec<u8>, Reject> {
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

/// One series (or one orientation/size group of a series) ready to assemble.
#[derive(Debug, Clone)]
pub struct SeriesGroup {
    /// SeriesInstanceUID, plus "#n" when a series splits into several orientation/size groups.
    pub key: String,
    /// Its files.
    pub files: Vec<SliceHeader>,
}

/// Groups headers into series; localizers, files without geometry or pixel data, and duplicate
/// instances become rejects (with their path).
pub fn group_series(headers: Vec<SliceHeader>) -> (Vec<SeriesGroup>, Vec<(PathBuf, Reject)>) {
    let mut rejects = Vec::new();
    let mut by_series: BTreeMap<String, BTreeMap<String, Vec<SliceHeader>>> = BTreeMap::new();
    for h in headers {
        if h.image_type.iter().any(|t| t == "LOCALIZER") {
            rejects.push((
                h.path.clone(),
                Reject::new("localizer", "ImageType LOCALIZER (scout image)"),
            ));
            continue;
        }
        if h.rows == 0 || h.cols == 0 {
            rejects.push((
                h.path.clone(),
                Reject::new(
                    "dicom_no_pixels",
                    "no Rows/Columns: not an image (e.g. a structured report or DICOMDIR)",
                ),
            ));
            continue;
        }
        if h.samples_per_pixel != 1 {
            rejects.push((
                h.path.clone(),
                Reject::new(
                    "dicom_not_grayscale",
                    format!(
                        "SamplesPerPixel {} ({}): not a grayscale volume",
                        h.samples_per_pixel, h.photometric
                    ),
                ),
            ));
            continue;
        }
        let geo = match (h.iop, h.pixel_spacing) {
            (Some(o), Some(_)) => o
                .iter()
                .map(|v| format!("{:.3}", v))
                .collect::<Vec<_>>()
                .join(","),
            _ if h.frames > 1 => "multiframe".to_string(),
            _ => {
                rejects.push((
                    h.path.clone(),
                    Reject::new(
                        "dicom_no_geometry",
                        "no ImageOrientationPatient/PixelSpacing",
                    ),
                ));
                continue;
            }
        };
        let sub = format!("{}|{}x{}", geo, h.rows, h.cols);
        by_series
            .entry(h.series_uid.clone())
            .or_default()
            .entry(sub)
            .or_default()
            .push(h);
    }
    let mut groups = Vec::new();
    for (uid, subs) in by_series {
        let n = subs.len();
        for (gi, (_, mut files)) in subs.into_iter().enumerate() {
            files.sort_by(|a, b| a.path.cmp(&b.path));
            let mut seen = std::collections::BTreeSet::new();
            let mut kept = Vec::new();
            for h in files {
                if !h.sop_uid.is_empty() && !seen.insert(h.sop_uid.clone()) {
                    rejects.push((
                        h.path.clone(),
                        Reject::new(
                            "dicom_duplicate_instance",
                            format!("SOPInstanceUID {} already seen in this series", h.sop_uid),
                        ),
                    ));
                } else {
                    kept.push(h);
                }
            }
            let key = if n > 1 {
                format!("{uid}#{gi}")
            } else {
                uid.clone()
            };
            groups.push(SeriesGroup { key, files: kept });
        }
    }
    (groups, rejects)
}

/// Provenance of an assembled series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesInfo {
    /// Files used.
    pub n_files: usize,
    /// Transfer syntax of the first file.
    pub transfer_syntax: String,
    /// RescaleSlope of the first slice.
    pub slope: f64,
    /// RescaleIntercept of the first slice.
    pub intercept: f64,
    /// Whether slope/intercept differ between slices (each slice used its own).
    pub rescale_varies: bool,
    /// Slice spacing from positions (mm).
    pub slice_spacing: f64,
    /// Warnings (e.g. padding mapped, MONOCHROME1 inverted, SliceThickness differs from spacing).
    pub warnings: Vec<String>,
}

/// Tolerances of the slice-spacing checks.
#[derive(Debug, Clone, Copy)]
pub struct SpacingRules {
    /// Relative deviation from the median gap still counted as uniform.
    pub rel_tol: f64,
    /// Absolute deviation (mm) still counted as uniform.
    pub abs_tol: f64,
    /// Largest angle (degrees) between the slice stacking direction and the image normal.
    pub max_tilt_deg: f64,
}

impl Default for SpacingRules {
    fn default() -> Self {
        SpacingRules {
            rel_tol: 0.05,
            abs_tol: 0.02,
            max_tilt_deg: 0.5,
        }
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Stored values of one decoded frame (decoded data is in native little-endian order; dicom-rs
/// swaps big-endian data as 16-bit words, so 32-bit big-endian samples need their halves swapped),
/// sign-extended per BitsStored and PixelRepresentation of the data set. `None` for layouts this
/// does not cover (e.g. 1-bit), which fall back to dicom-rs's own conversion.
fn stored_values(bytes: &[u8], h: &SliceHeader, n: usize) -> Option<Vec<f64>> {
    let bits = h.bits_stored.clamp(1, h.bits_allocated.max(1)) as u32;
    let signed = h.pixel_representation == 1;
    let mask: u64 = (1u64 << bits) - 1;
    let ext = |raw: u64| -> f64 {
        let v = raw & mask;
        if signed && (v >> (bits - 1)) & 1 == 1 {
            v as f64 - (1u64 << bits) as f64
        } else {
            v as f64
        }
    };
    let big_endian = h.transfer_syntax == "1.2.840.10008.1.2.2";
    let vals: Vec<f64> = match h.bits_allocated {
        // Packed eight to a byte, least significant bit first (segmentations).
        1 => (0..n)
            .map(|i| bytes.get(i / 8).map(|b| ((b >> (i % 8)) & 1) as f64))
            .collect::<Option<_>>()?,
        8 => bytes.iter().take(n).map(|&b| ext(b as u64)).collect(),
        16 => bytes
            .chunks_exact(2)
            .take(n)
            .map(|c| ext(u16::from_le_bytes([c[0], c[1]]) as u64))
            .collect(),
        32 => bytes
            .chunks_exact(4)
            .take(n)
            .map(|c| {
                let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                ext(if big_endian { v.rotate_left(16) } else { v } as u64)
            })
            .collect(),
        _ => return None,
    };
    (vals.len() >= n).then_some(vals)
}

/// The frames of uncompressed pixel data, read straight from the PixelData bytes.
fn native_frames(obj: &DefaultDicomObject, h: &SliceHeader, n: usize) -> Option<Vec<Vec<f64>>> {
    let bytes = element(obj, tags::PIXEL_DATA)?.to_bytes().ok()?;
    let frame_len = (n * h.bits_allocated as usize).div_ceil(8);
    if frame_len == 0 {
        return None;
    }
    (0..h.frames.max(1) as usize)
        .map(|fi| stored_values(bytes.get(fi * frame_len..(fi + 1) * frame_len)?, h, n))
        .collect()
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// The frames of RLE Lossless pixel data, decoded here (one fragment per frame, or all fragments
/// of a single frame together).
fn rle_frames(obj: &DefaultDicomObject, h: &SliceHeader, n: usize) -> Option<Vec<Vec<f64>>> {
    let frags = element(obj, tags::PIXEL_DATA)?.value().fragments()?;
    let frames = h.frames.max(1) as usize;
    let bps = match h.bits_allocated {
        8 | 16 | 32 => h.bits_allocated as usize / 8,
        _ => return None,
    };
    let joined;
    let per_frame: Vec<&[u8]> = if frags.len() == frames {
        frags.iter().map(|f| f.as_slice()).collect()
    } else if frames == 1 {
        joined = frags.concat();
        vec![&joined]
    } else {
        return None;
    };
    per_frame
        .into_iter()
        .map(|f| stored_values(&crate::rle::decode_frame(f, n, bps)?, h, n))
        .collect()
}

/// MONOCHROME1 stores bright as low: invert within the stored range, before the rescale.
fn invert_monochrome1(vals: &mut [f64], h: &SliceHeader) {
    let bits = h.bits_stored.clamp(1, 32) as u32;
    let (lo, hi) = if h.pixel_representation == 1 {
        (
            -(1i64 << (bits - 1)) as f64,
            ((1i64 << (bits - 1)) - 1) as f64,
        )
    } else {
        (0.0, ((1u64 << bits) - 1) as f64)
    };
    for v in vals.iter_mut() {
        *v = hi + lo - *v;
    }
}

/// Decodes all frames of a file into rescaled values (HU for CT), with padding mapped to `pad_to`.
/// Returns one Vec per frame.
pub fn decode_file(h: &SliceHeader) -> Result<Vec<Vec<f32>>, Reject> {
    Ok(decode_stored(h)?
        .into_iter()
        .map(|fr| {
            fr.into_iter()
                .map(|v| (v * h.slope + h.intercept) as f32)
                .collect()
        })
        .collect())
}

/// Decodes all frames of a file into stored values (MONOCHROME1 inverted; padding as NaN),
/// before any rescale.
pub fn decode_stored(h: &SliceHeader) -> Result<Vec<Vec<f64>>, Reject> {
    let opened = if h.repaired {
        open_repaired(&h.path)?
    } else {
        dicom_object::open_file(&h.path)
    };
    let obj = opened.map_err(|e| {
        // The whole chain: the cause ("failed to fill whole buffer") is below the top message.
        let mut m = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            m = format!("{m}: {s}");
            src = s.source();
        }
        let code = if ["end of", "EOF", "nexpected", "fill whole buffer"]
            .iter()
            .any(|k| m.contains(k))
        {
            "dicom_truncated"
        } else {
            "dicom_unreadable"
        };
        Reject::new(code, format!("{}: {m}", h.path.display()))
    })?;
    let n = h.rows as usize * h.cols as usize;
    let fail = |what: String| {
        Reject::new(
            "dicom_decode_failed",
            format!("{}: {what}", h.path.display()),
        )
    };
    let native = is_native(&h.transfer_syntax);
    let native_or = |what: &str| {
        native_frames(&obj, h, n).ok_or_else(|| {
            fail(format!(
                "{what} pixel data does not match Rows, Columns and BitsAllocated"
            ))
        })
    };
    let frames: Vec<Vec<f64>> = if native && h.bits_allocated == 1 {
        // dicom-pixeldata's frames of 1-bit data come back empty; the bits are unpacked here.
        native_or("1-bit")?
    } else {
        match obj.decode_pixel_data() {
            Ok(decoded) => (0..decoded.number_of_frames().max(1))
                .map(|fi| {
                    let bytes = decoded
                        .frame_data(fi)
                        .map_err(|e| fail(format!("frame {fi}: {e}")))?;
                    match stored_values(bytes, h, n) {
                        Some(v) => Ok(v),
                        None => {
                            let opts =
                                ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
                            decoded
                                .to_vec_frame_with_options(fi, &opts)
                                .map_err(|e| fail(format!("frame {fi}: {e}")))
                        }
                    }
                })
                .collect::<Result<_, Reject>>()?,
            // The decoder reads the pixel attributes itself and fails when they are stored as
            // UN; native pixels need no decoder, and the header's values are read leniently.
            Err(_) if native => native_or("native")?,
            Err(e) if h.transfer_syntax == RLE_LOSSLESS => rle_frames(&obj, h, n).ok_or_else(|| {
                fail(format!(
                    "cannot decode RLE pixel data ({e}), nor as {} frames of {n} {}-bit samples",
                    h.frames.max(1),
                    h.bits_allocated
                ))
            })?,
            Err(e) => {
                return Err(fail(format!(
                    "cannot decode pixel data in transfer syntax {}: {e}",
                    h.transfer_syntax
                )));
            }
        }
    };
    let mut out = Vec::with_capacity(frames.len());
    for (fi, mut stored) in frames.into_iter().enumerate() {
        if stored.len() < n {
            return Err(Reject::new(
                "dicom_decode_failed",
                format!(
                    "{}: frame {fi} has {} values, expected {n}",
                    h.path.display(),
                    stored.len()
                ),
            ));
        }
        stored.truncate(n);
        // Padding is defined on stored values, before any inversion.
        let padded: Vec<bool> = stored.iter().map(|v| h.padding == Some(*v)).collect();
        if h.photometric == "MONOCHROME1" {
            invert_monochrome1(&mut stored, h);
        }
        out.push(
            stored
                .into_iter()
                .zip(padded)
                .map(|(v, pad)| if pad { f64::NAN } else { v })
                .collect(),
        );
    }
    Ok(out)
}

/// A whole file that needs [`Repairs`] to parse (see [`SliceHeader::repaired`]), parsed after them.
fn open_repaired(
    path: &Path,
) -> Result<Result<DefaultDicomObject, dicom_object::ReadError>, Reject> {
    let bytes = std::fs::read(path)
        .map_err(|e| Reject::new("unreadable", format!("{}: {e}", path.display())))?;
    let Scan::Done(r) = check_element_lengths(&bytes, bytes.len() as u64)? else {
        return Err(Reject::new(
            "dicom_truncated",
            format!("{}: shorter than when its header was read", path.display()),
        ));
    };
    let fixed = repaired(&bytes, &r)?;
    Ok(OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Never)
        .from_reader(&fixed[128..]))
}

/// Replaces padding (NaN) with the minimum real value; returns how many voxels were padding.
fn fill_padding(data: &mut [f32]) -> usize {
    let min = data
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::INFINITY, f32::min);
    let mut n = 0;
    for v in data.iter_mut() {
        if !v.is_finite() {
            *v = if min.is_finite() { min } else { 0.0 };
            n += 1;
        }
    }
    n
}

/// Orientation, spacing and positions usable before any arithmetic on them: all finite, both
/// direction cosines unit length (within 1%) and orthogonal (within ~1 degree), spacing positive.
fn check_plane_geometry(
    r: [f64; 3],
    c: [f64; 3],
    ps: [f64; 2],
    positions: &[[f64; 3]],
) -> Result<(), Reject> {
    let bad = |m: String| Err(Reject::new("geometry_invalid", m));
    if r.iter().chain(&c).any(|v| !v.is_finite()) {
        return bad(format!("ImageOrientationPatient {r:?} {c:?} is not finite"));
    }
    let (nr, nc) = (dot(r, r).sqrt(), dot(c, c).sqrt());
    if (nr - 1.0).abs() > 0.01 || (nc - 1.0).abs() > 0.01 || dot(r, c).abs() > 0.02 {
        return bad(format!(
            "ImageOrientationPatient {r:?} {c:?}: the row and column cosines must be unit length and orthogonal"
        ));
    }
    if ps.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return bad(format!("PixelSpacing {ps:?} is not positive"));
    }
    if let Some(p) = positions.iter().find(|p| p.iter().any(|v| !v.is_finite())) {
        return bad(format!("ImagePositionPatient {p:?} is not finite"));
    }
    Ok(())
}

fn lps_to_ras(m: [[f64; 4]; 4]) -> [[f64; 4]; 4] {
    let mut r = m;
    for j in 0..4 {
        r[0][j] = -m[0][j];
        r[1][j] = -m[1][j];
    }
    r
}

/// One image plane of a series: a single-frame file, or one frame of an enhanced multi-frame file.
struct Plane<'a> {
    file: &'a SliceHeader,
    frame: usize,
    ipp: [f64; 3],
    slope: f64,
    intercept: f64,
}

impl Plane<'_> {
    fn name(&self) -> String {
        if self.file.frames > 1 {
            format!("{} frame {}", self.file.path.display(), self.frame + 1)
        } else {
            self.file.path.display().to_string()
        }
    }
}

/// Assembles a series group into a volume (HU for CT), or rejects the whole series with a reason:
/// `series_too_few_slices`, `series_duplicate_slice`, `series_missing_slice`,
/// `series_nonuniform_spacing`, `series_gantry_tilt`, `dicom_no_geometry`, `dicom_truncated`,
/// `dicom_decode_failed`, `dicom_multiframe_unsupported`. Enhanced multi-frame objects (one file,
/// frames positioned by the per-frame functional groups) follow the same rules frame by frame.
pub fn assemble(group: &SeriesGroup, rules: &SpacingRules) -> Result<(Volume, SeriesInfo), Reject> {
    let files = &group.files;
    let h0 = &files[0];
    let enhanced = files.len() == 1 && h0.frames > 1;
    let (planes, iop, ps): (Vec<Plane>, Option<[f64; 6]>, Option<[f64; 2]>) = if enhanced {
        let g = &h0.frames_geo;
        if g.len() != h0.frames as usize || g.iter().any(|f| f.ipp.is_none()) {
            return Err(Reject::new(
                "dicom_multiframe_unsupported",
                format!(
                    "{}: {} frames without per-frame positions (PerFrameFunctionalGroupsSequence > PlanePositionSequence)",
                    h0.path.display(),
                    h0.frames
                ),
            ));
        }
        let planes = g
            .iter()
            .enumerate()
            .map(|(i, f)| Plane {
                file: h0,
                frame: i,
                ipp: f.ipp.unwrap(),
                slope: f.slope.unwrap_or(h0.slope),
                intercept: f.intercept.unwrap_or(h0.intercept),
            })
            .collect();
        (
            planes,
            g[0].iop.or(h0.iop),
            g[0].pixel_spacing.or(h0.pixel_spacing),
        )
    } else {
        if files.iter().any(|h| h.ipp.is_none()) {
            return Err(Reject::new(
                "dicom_no_geometry",
                "a slice has no ImagePositionPatient",
            ));
        }
        let planes = files
            .iter()
            .map(|h| Plane {
                file: h,
                frame: 0,
                ipp: h.ipp.unwrap(),
                slope: h.slope,
                intercept: h.intercept,
            })
            .collect();
        (planes, h0.iop, h0.pixel_spacing)
    };
    let (Some(iop), Some(ps)) = (iop, ps) else {
        return Err(Reject::new(
            "dicom_no_geometry",
            format!(
                "{}: no ImageOrientationPatient/PixelSpacing",
                h0.path.display()
            ),
        ));
    };
    if planes.len() < 2 {
        return Err(Reject::new(
            "series_too_few_slices",
            format!(
                "series has {} image(s); a volume needs at least 2",
                planes.len()
            ),
        ));
    }
    let (r, c) = ([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
    check_plane_geometry(r, c, ps, &planes.iter().map(|p| p.ipp).collect::<Vec<_>>())?;
    let n = cross(r, c);
    let nn = dot(n, n).sqrt();
    let n = [n[0] / nn, n[1] / nn, n[2] / nn];
    let mut order: Vec<(f64, usize)> = planes
        .iter()
        .enumerate()
        .map(|(i, p)| (dot(n, p.ipp), i))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let gaps: Vec<f64> = order.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    if let Some(i) = gaps.iter().position(|g| g.abs() < rules.abs_tol.max(1e-3)) {
        return Err(Reject::new(
            "series_duplicate_slice",
            format!(
                "{} and {} are at the same position ({:.3} mm along the normal)",
                planes[order[i].1].name(),
                planes[order[i + 1].1].name(),
                order[i].0
            ),
        ));
    }
    // Stacking direction vs the image normal.
    let first = planes[order[0].1].ipp;
    let last = planes[order[order.len() - 1].1].ipp;
    let d = [last[0] - first[0], last[1] - first[1], last[2] - first[2]];
    let angle = (dot(d, n) / dot(d, d).sqrt())
        .clamp(-1.0, 1.0)
        .acos()
        .to_degrees();
    let tag_tilt = h0.gantry_tilt.unwrap_or(0.0);
    if angle > rules.max_tilt_deg || tag_tilt.abs() > rules.max_tilt_deg {
        return Err(Reject::new(
            "series_gantry_tilt",
            format!(
                "slices stack {angle:.2} degrees off the image normal (GantryDetectorTilt {tag_tilt}); resampling a tilted acquisition is not supported"
            ),
        ));
    }
    let tol = rules.abs_tol.max(rules.rel_tol * median);
    if let Some((i, g)) = gaps
        .iter()
        .enumerate()
        .find(|(_, g)| (*g - median).abs() > tol)
    {
        let ratio = g / median;
        if ratio > 1.5 && (ratio - ratio.round()).abs() < 0.15 {
            return Err(Reject::new(
                "series_missing_slice",
                format!(
                    "gap of {g:.3} mm after slice {i} is {:.0}x the median {median:.3} mm: {} slice(s) missing",
                    ratio.round(),
                    ratio.round() - 1.0
                ),
            ));
        }
        return Err(Reject::new(
            "series_nonuniform_spacing",
            format!("gap of {g:.3} mm after slice {i}, median {median:.3} mm (tolerance {tol:.3})"),
        ));
    }
    let dz = (order[order.len() - 1].0 - order[0].0) / (order.len() - 1) as f64;
    let (rows, cols) = (h0.rows as usize, h0.cols as usize);
    let plane = rows * cols;
    // Decode (files in parallel; an enhanced object once), rescale per plane, keep the sorted order.
    use rayon::prelude::*;
    let stored: Vec<Vec<f64>> = if enhanced {
        let mut frames = decode_stored(h0)?;
        order
            .iter()
            .map(|&(_, i)| std::mem::take(&mut frames[planes[i].frame]))
            .collect()
    } else {
        order
            .par_iter()
            .map(|&(_, i)| decode_stored(planes[i].file).map(|mut fr| fr.swap_remove(0)))
            .collect::<Result<_, _>>()?
    };
    let mut data = Vec::with_capacity(plane * stored.len());
    for (s, &(_, i)) in stored.iter().zip(&order) {
        if s.len() < plane {
            return Err(Reject::new(
                "dicom_decode_failed",
                format!("{}: {} values, expected {plane}", planes[i].name(), s.len()),
            ));
        }
        let (m, b) = (planes[i].slope, planes[i].intercept);
        data.extend(s[..plane].iter().map(|&v| (v * m + b) as f32));
    }
    let mut warnings = Vec::new();
    let padded = fill_padding(&mut data);
    if padded > 0 {
        warnings.push(format!(
            "{padded} PixelPaddingValue voxel(s) set to the minimum value"
        ));
    }
    if h0.photometric == "MONOCHROME1" {
        warnings.push("MONOCHROME1 inverted".into());
    }
    let thickness = if enhanced {
        h0.frames_geo[0].thickness
    } else {
        h0.slice_thickness
    };
    if let Some(t) = thickness
        && (t - dz).abs() > 0.25 * dz
    {
        warnings.push(format!("SliceThickness {t} differs from the position spacing {dz:.3} (spacing from positions used)"));
    }
    let has_rescale = h0.has_rescale
        || h0
            .frames_geo
            .iter()
            .any(|f| f.slope.is_some() || f.intercept.is_some());
    if !has_rescale && h0.modality == "CT" {
        warnings.push("no RescaleSlope/Intercept: stored values used as HU".into());
    }
    let rescale_varies = planes
        .iter()
        .any(|p| p.slope != planes[0].slope || p.intercept != planes[0].intercept);
    let p0 = planes[order[0].1].ipp;
    let mut lps = [[0.0; 4]; 4];
    for a in 0..3 {
        lps[a][0] = r[a] * ps[1];
        lps[a][1] = c[a] * ps[0];
        lps[a][2] = n[a] * dz;
        lps[a][3] = p0[a];
    }
    lps[3][3] = 1.0;
    Ok((
        Volume {
            dims: [cols, rows, order.len()],
            data,
            affine: lps_to_ras(lps),
        },
        SeriesInfo {
            n_files: files.len(),
            transfer_syntax: h0.transfer_syntax.clone(),
            slope: planes[0].slope,
            intercept: planes[0].intercept,
            rescale_varies,
            slice_spacing: dz,
            warnings,
        },
    ))
}

/// A single image file as a one-slice (or multi-frame) volume: for `inspect` of one file.
/// The slice spacing is SliceThickness (or 1 mm) since one slice has no neighbour.
pub fn single_file_volume(h: &SliceHeader) -> Result<Volume, Reject> {
    let mut frames = decode_file(h)?;
    let (rows, cols) = (h.rows as usize, h.cols as usize);
    let iop = h.iop.unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let (r, c) = ([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
    let n = cross(r, c);
    let ps = h.pixel_spacing.unwrap_or([1.0, 1.0]);
    let dz = h.slice_thickness.filter(|t| *t > 0.0).unwrap_or(1.0);
    let p0 = h.ipp.unwrap_or([0.0; 3]);
    let mut lps = [[0.0; 4]; 4];
    for a in 0..3 {
        lps[a][0] = r[a] * ps[1];
        lps[a][1] = c[a] * ps[0];
        lps[a][2] = n[a] * dz;
        lps[a][3] = p0[a];
    }
    lps[3][3] = 1.0;
    let k = frames.len();
    let mut data = Vec::with_capacity(rows * cols * k);
    for fr in frames.iter_mut() {
        data.extend_from_slice(&fr[..rows * cols]);
    }
    fill_padding(&mut data);
    Ok(Volume {
        dims: [cols, rows, k],
        data,
        affine: lps_to_ras(lps),
    })
}
