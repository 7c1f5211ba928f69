//! A DICOM file's pixels as stored values (every frame; MONOCHROME1 inverted, padding as NaN) and
//! as rescaled values: dicom-pixeldata's decoders, with mg3d's own paths where they fail (native
//! data whose attributes are UN, 1-bit data, RLE with 32-bit samples, repaired files).

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};

use crate::dicom_scan::{Scan, check_element_lengths};
use crate::header::{SliceHeader, element, is_native, repaired};
use mg3d_volume::Reject;

/// Stored values of one decoded frame (decoded data is in native little-endian order; dicom-rs
/// swaps big-endian data as 16-bit words, so 32-bit big-endian samples need their halves swapped),
/// sign-extended per BitsStored and PixelRepresentation of the data set. `None` for layouts this
/// does not cover (e.g. 1-bit), which fall back to dicom-rs's own conversion.
pub(crate) fn stored_values(bytes: &[u8], h: &SliceHeader, n: usize) -> Option<Vec<f64>> {
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
pub(crate) fn native_frames(
    obj: &DefaultDicomObject,
    h: &SliceHeader,
    n: usize,
) -> Option<Vec<Vec<f64>>> {
    let bytes = element(obj, tags::PIXEL_DATA)?.to_bytes().ok()?;
    let frame_len = (n * h.bits_allocated as usize).div_ceil(8);
    if frame_len == 0 {
        return None;
    }
    (0..h.frames.max(1) as usize)
        .map(|fi| stored_values(bytes.get(fi * frame_len..(fi + 1) * frame_len)?, h, n))
        .collect()
}

pub(crate) const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// The frames of RLE Lossless pixel data, decoded here (one fragment per frame, or all fragments
/// of a single frame together).
pub(crate) fn rle_frames(
    obj: &DefaultDicomObject,
    h: &SliceHeader,
    n: usize,
) -> Option<Vec<Vec<f64>>> {
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
pub(crate) fn invert_monochrome1(vals: &mut [f64], h: &SliceHeader) {
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
pub(crate) fn open_repaired(
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
pub(crate) fn fill_padding(data: &mut [f32]) -> usize {
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
