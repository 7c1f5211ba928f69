//! Keyed pseudonymous ids. Outputs never carry source identifiers (PatientID, accession numbers,
//! file names with MRNs); they carry `blake3::keyed_hash(key = blake3(salt), namespace || 0 || id)`,
//! truncated to 16 hex characters (64 bits: collisions are negligible below ~10^8 ids).

/// The pseudonym of `source_id` within `namespace` (e.g. "patient", "study", "series").
pub fn pseudonym(salt: &str, namespace: &str, source_id: &str) -> String {
    let key = blake3::hash(salt.as_bytes());
    let mut h = blake3::Hasher::new_keyed(key.as_bytes());
    h.update(namespace.as_bytes());
    h.update(&[0]);
    h.update(source_id.as_bytes());
    h.finalize().to_hex()[..16].to_string()
}

/// Split names in order.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// The split of a patient: a uniform number in [0, 1) from blake3(seed, "split", patient id), cut
/// at the cumulative `ratios` (train, val, test; normalised to sum 1). A patient's split depends
/// only on its id, the seed and the ratios, never on which other patients are present, so every
/// row of a patient lands in the same split and adding patients moves nobody.
pub fn split_of(seed: u64, ratios: [f64; 3], patient_id: &str) -> &'static str {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(b"split\0");
    h.update(patient_id.as_bytes());
    let b = h.finalize();
    let x = u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"));
    let u = (x >> 11) as f64 / (1u64 << 53) as f64;
    let total: f64 = ratios.iter().map(|r| r.max(0.0)).sum();
    let total = if total > 0.0 { total } else { 1.0 };
    let mut acc = 0.0;
    for (i, r) in ratios.iter().enumerate() {
        acc += r.max(0.0) / total;
        if u < acc {
            return SPLITS[i];
        }
    }
    SPLITS[2]
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn keyed_and_namespaced() {
        let a = pseudonym("s1", "patient", "MRN123");
        assert_eq!(a, pseudonym("s1", "patient", "MRN123"));
        assert_ne!(a, pseudonym("s2", "patient", "MRN123"));
        assert_ne!(a, pseudonym("s1", "study", "MRN123"));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("MRN"));
    }

    #[test]
    fn splits_follow_ratios_and_seed() {
        let n = 20_000;
        let mut counts = [0usize; 3];
        for i in 0..n {
            let s = split_of(1, [0.8, 0.1, 0.1], &format!("p{i}"));
            counts[SPLITS.iter().position(|x| *x == s).unwrap()] += 1;
        }
        let f = |c: usize| c as f64 / n as f64;
        assert!((f(counts[0]) - 0.8).abs() < 0.02, "{counts:?}");
        assert!((f(counts[1]) - 0.1).abs() < 0.01, "{counts:?}");
        assert_eq!(split_of(1, [1.0, 0.0, 0.0], "x"), "train");
        assert_eq!(split_of(1, [0.0, 0.0, 1.0], "x"), "test");
        let moved = (0..1000)
            .filter(|i| {
                let p = format!("p{i}");
                split_of(1, [0.5, 0.25, 0.25], &p) != split_of(2, [0.5, 0.25, 0.25], &p)
            })
            .count();
        assert!(moved > 300, "the seed changes the assignment ({moved})");
    }
}
