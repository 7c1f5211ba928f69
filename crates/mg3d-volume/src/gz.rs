//! Whole-buffer gzip with libdeflate, two to three times zlib's speed: volume files are read and
//! written whole, so the streaming API buys nothing on this path (see `make bench-peers`).
//!
//! Anything the fast path does not cover (several gzip members, a size over the caller's limit,
//! damaged data) returns `None` from [`inflate_whole`]; the caller then reads the same bytes with
//! the streaming decoder, whose errors name what is wrong.

use libdeflate_sys::{
    libdeflate_alloc_decompressor, libdeflate_free_decompressor, libdeflate_gzip_decompress_ex,
    libdeflate_result_LIBDEFLATE_SUCCESS,
};

/// The decompressed contents of `gz` when it is exactly one gzip member whose stated size
/// (ISIZE) is at most `max_bytes` and whose data and CRC check out; `None` otherwise.
pub fn inflate_whole(gz: &[u8], max_bytes: u64) -> Option<Vec<u8>> {
    if gz.len() < 18 || !gz.starts_with(&[0x1f, 0x8b]) {
        return None;
    }
    let isize = u32::from_le_bytes(gz[gz.len() - 4..].try_into().ok()?) as u64;
    if isize > max_bytes {
        return None;
    }
    let mut out = vec![0u8; isize as usize];
    let (mut used_in, mut used_out) = (0usize, 0usize);
    // SAFETY: the decompressor is checked for null and freed on every path; `gz` and `out` are
    // live slices whose lengths are passed with them, and libdeflate writes at most `out.len()`
    // bytes into `out` and one usize into each of the two result places.
    let ok = unsafe {
        let d = libdeflate_alloc_decompressor();
        if d.is_null() {
            return None;
        }
        let r = libdeflate_gzip_decompress_ex(
            d,
            gz.as_ptr().cast(),
            gz.len(),
            out.as_mut_ptr().cast(),
            out.len(),
            &mut used_in,
            &mut used_out,
        );
        libdeflate_free_decompressor(d);
        r == libdeflate_result_LIBDEFLATE_SUCCESS
    };
    (ok && used_in == gz.len() && used_out == out.len()).then_some(out)
}

/// `data` as one gzip member at libdeflate `level` (1 fastest .. 12 smallest; 1 is already smaller
/// than zlib's level 6 on CT volumes' int16 data).
pub fn deflate_whole(data: &[u8], level: i32) -> Vec<u8> {
    let lvl = libdeflater::CompressionLvl::new(level.clamp(1, 12))
        .unwrap_or_else(|_| libdeflater::CompressionLvl::fastest());
    let mut c = libdeflater::Compressor::new(lvl);
    let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
    let n = c
        .gzip_compress(data, &mut out)
        .expect("the buffer has the bound libdeflate asks for");
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trips_and_refuses_what_it_cannot_check() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let z = deflate_whole(&data, 1);
        // Readable by the streaming decoder (another implementation) and by the fast path.
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&z[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        assert_eq!(inflate_whole(&z, 1 << 20).unwrap(), data);
        // Over the limit, two members, a damaged byte, a truncated tail: not the fast path.
        assert!(inflate_whole(&z, 1000).is_none());
        let two = [z.clone(), z.clone()].concat();
        assert!(inflate_whole(&two, 1 << 20).is_none());
        let mut bad = z.clone();
        bad[z.len() / 2] ^= 0x55;
        assert!(inflate_whole(&bad, 1 << 20).is_none());
        assert!(inflate_whole(&z[..z.len() - 1], 1 << 20).is_none());
    }
}
