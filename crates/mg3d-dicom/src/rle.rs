//! DICOM RLE Lossless (PS3.5 Annex G) for grayscale frames, used where dicom-rs's decoder gives
//! up (32-bit samples, such as RT dose grids).
//!
//! A frame is one fragment: a 64-byte header (the segment count and up to 15 segment offsets,
//! little-endian u32), then one PackBits segment per byte plane, most significant plane first.

/// Decodes one frame of `n` single-sample pixels of `bytes_per_sample` bytes into little-endian
/// sample bytes. `None` when the fragment is malformed or decodes to the wrong size.
pub fn decode_frame(fragment: &[u8], n: usize, bytes_per_sample: usize) -> Option<Vec<u8>> {
    let word = |i: usize| -> Option<usize> {
        let b = fragment.get(4 * i..4 * i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n_seg = word(0)?;
    if n_seg != bytes_per_sample || !(1..=15).contains(&n_seg) {
        return None;
    }
    let mut out = vec![0u8; n.checked_mul(bytes_per_sample)?];
    for seg in 0..n_seg {
        let start = word(1 + seg)?;
        let end = if seg + 1 < n_seg {
            word(2 + seg)?
        } else {
            fragment.len()
        };
        let plane = packbits(fragment.get(start..end.max(start))?, n)?;
        // Segment 0 is the most significant byte of each sample.
        let byte = bytes_per_sample - 1 - seg;
        for (i, b) in plane.into_iter().enumerate() {
            out[i * bytes_per_sample + byte] = b;
        }
    }
    Some(out)
}

/// PackBits: a control byte c >= 0 copies the next c+1 bytes, c in -127..=-1 repeats the next
/// byte 1-c times, -128 does nothing. Stops at `n` bytes (segments are padded to even length).
fn packbits(src: &[u8], n: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n && i < src.len() {
        let c = src[i] as i8;
        i += 1;
        match c {
            0..=127 => {
                let k = c as usize + 1;
                out.extend_from_slice(src.get(i..i + k)?);
                i += k;
            }
            -127..=-1 => {
                let b = *src.get(i)?;
                i += 1;
                out.extend(std::iter::repeat_n(b, (1 - c as isize) as usize));
            }
            -128 => {}
        }
    }
    (out.len() >= n).then(|| {
        out.truncate(n);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(offsets: &[u32]) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&(offsets.len() as u32).to_le_bytes());
        for (i, o) in offsets.iter().enumerate() {
            h[4 + 4 * i..8 + 4 * i].copy_from_slice(&o.to_le_bytes());
        }
        h
    }

    #[test]
    fn two_planes_literal_and_run() {
        // Samples 0x0102, 0x0102, 0x0103 (16-bit): MSB plane [1, 1, 1], LSB plane [2, 2, 3].
        let msb = [(-2i8) as u8, 1]; // run of 3
        let lsb = [(-1i8) as u8, 2, 0, 3]; // run of 2, literal of 1
        let mut f = header(&[64, 66]);
        f.extend_from_slice(&msb);
        f.extend_from_slice(&lsb);
        assert_eq!(decode_frame(&f, 3, 2).unwrap(), vec![2, 1, 2, 1, 3, 1]);
    }

    #[test]
    fn malformed_is_none() {
        assert_eq!(decode_frame(&[0; 10], 4, 2), None);
        let mut f = header(&[64, 66]);
        f.extend_from_slice(&[5, 1]); // a literal of 6 with one byte
        assert_eq!(decode_frame(&f, 3, 2), None);
        assert_eq!(decode_frame(&header(&[64]), 3, 2), None); // wrong segment count
        assert_eq!(packbits(&[(-128i8) as u8, 0, 9], 1), Some(vec![9]));
    }
}
