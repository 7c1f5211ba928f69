//! mg3d's RLE Lossless decoder against mg3d-synth's encoder (written separately, per PS3.5 G).

use rand::{Rng, SeedableRng};

#[test]
fn decodes_what_the_synth_encoder_writes() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for (cols, rows) in [(1, 1), (7, 3), (64, 64), (129, 5)] {
        // Runs and noise, so both PackBits forms occur.
        let samples: Vec<u16> = (0..cols * rows)
            .map(|i| {
                if (i / 37) % 2 == 0 {
                    1000
                } else {
                    rng.random::<u16>()
                }
            })
            .collect();
        let frame = mg3d_synth::dicom_out::rle_encode_frame16(&samples, cols, rows);
        let bytes = mg3d_dicom::rle::decode_frame(&frame, cols * rows, 2).unwrap();
        let back: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(back, samples, "{cols}x{rows}");
    }
}
