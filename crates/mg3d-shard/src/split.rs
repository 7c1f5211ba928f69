//! Patient-level train/val/test splits.
//!
//! The split of a patient is [`mg3d_core::ids::split_of`]: blake3 of `(seed, patient_id)` mapped to
//! [0, 1) and cut at the cumulative ratios. It depends only on the seed, the ratios and the
//! patient id, so every sample of a patient lands in one split whatever the row order or the other
//! patients, and adding patients never moves existing ones. When the `curate` stage already
//! assigned splits (its `corpus.parquet` has a `split` column) the shards keep them; the writer
//! still refuses a patient that appears in two splits.

use crate::ShardError;
use crate::format::SPLITS;

/// Normalises train/val/test ratios to sum 1; errors on negatives, NaN or an all-zero list.
pub fn normalise_ratios(r: &[f64]) -> Result<[f64; 3], ShardError> {
    if r.len() != 3 || r.iter().any(|x| !x.is_finite() || *x < 0.0) {
        return Err(ShardError::Config(format!(
            "ratios must be three non-negative numbers [train, val, test], got {r:?}"
        )));
    }
    let s: f64 = r.iter().sum();
    if s <= 0.0 {
        return Err(ShardError::Config(
            "ratios sum to 0: give at least one split a positive share, e.g. [0.8, 0.1, 0.1]"
                .into(),
        ));
    }
    Ok([r[0] / s, r[1] / s, r[2] / s])
}

/// Split number (0 train, 1 val, 2 test) of a split name.
pub fn split_number(name: &str) -> Option<usize> {
    SPLITS.iter().position(|s| *s == name)
}

/// Split number (0 train, 1 val, 2 test) of a patient under normalised ratios.
pub fn split_of(seed: u64, patient_id: &str, ratios: &[f64; 3]) -> usize {
    split_number(mg3d_core::ids::split_of(seed, *ratios, patient_id)).unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_ratios_never_chosen() {
        for (r, allowed) in [
            ([1.0, 0.0, 0.0], [true, false, false]),
            ([0.0, 1.0, 0.0], [false, true, false]),
            ([0.0, 0.0, 1.0], [false, false, true]),
            ([0.5, 0.0, 0.5], [true, false, true]),
            ([0.5, 0.5, 0.0], [true, true, false]),
        ] {
            let r = normalise_ratios(&r).unwrap();
            for i in 0..2000 {
                assert!(allowed[split_of(7, &format!("p{i}"), &r)], "{r:?}");
            }
        }
    }

    #[test]
    fn bad_ratios_are_errors() {
        assert!(normalise_ratios(&[0.0, 0.0, 0.0]).is_err());
        assert!(normalise_ratios(&[1.0, -0.1, 0.1]).is_err());
        assert!(normalise_ratios(&[1.0, 0.1]).is_err());
        assert!(normalise_ratios(&[f64::NAN, 0.1, 0.1]).is_err());
    }
}
