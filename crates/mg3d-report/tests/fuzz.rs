//! Sentence and clause segmentation over mutated report texts (odd Unicode spaces, list numbers,
//! abbreviations, decimals): no panic, and every range on character boundaries. `make test` runs
//! MG3D_FUZZ_ITERS (default 30,000) inputs; `make fuzz` runs 1,000,000.

use mg3d_report::text::{clauses, sentences};
use mg3d_testkit::crafted::{fuzz_iters, mutate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const TEXTS: [&str; 4] = [
    "No\u{a0}effusion. Heart\u{202f}normal.\u{3000}Dr.\u{a0}X no. 3 (e.g. 2019).",
    "1.\u{a0}Nodule 3,5 cm; stable (µ, β). 2. Effusion, right.\nIMPRESSION: none.",
    "Größe 3.5 x 2 cm; Läsion unverändert. Keine Ergüsse — gut!? \u{feff}Ok.",
    "approx. 4 mm. St. post CABG, i.e. sternotomy wires; vs. prior.",
];

#[test]
fn segmentation_survives_mutated_texts() {
    let iters = fuzz_iters(30_000);
    let bad: Vec<u64> = (0..iters)
        .into_par_iter()
        .filter(|&i| {
            let mut rng = ChaCha8Rng::seed_from_u64(i);
            let raw = mutate(TEXTS[rng.random_range(0..TEXTS.len())].as_bytes(), &mut rng);
            let text = String::from_utf8_lossy(&raw).into_owned();
            std::panic::catch_unwind(|| {
                for s in sentences(&text) {
                    for c in clauses(&text, s.clone()) {
                        assert!(text.is_char_boundary(c.start) && text.is_char_boundary(c.end));
                    }
                }
            })
            .is_err()
        })
        .collect();
    eprintln!("fuzz: {iters} report texts; {} failed", bad.len());
    assert!(
        bad.is_empty(),
        "inputs (ChaCha8 seeds) that failed: {bad:?}"
    );
}
