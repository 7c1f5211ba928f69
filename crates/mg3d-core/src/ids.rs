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
}
