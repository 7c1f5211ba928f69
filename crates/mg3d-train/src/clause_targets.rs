//! Clause-level similarity targets for the inter-patient matching objective (MG-3D "SSM",
//! shared/reference/mg3d-method.md §3.5), in plain Rust (a reference the
//! tensor implementation in [`crate::losses`] is tested against).
//!
//! For two reports i and j with clause embeddings `e_i` (S_i x d) and `e_j` (S_j x d), the target
//! is `T = cos(e_i, e_j)` (S_i x S_j); pairs with `T >= POSITIVE_THRESHOLD` are positives (the
//! visual clause similarity is pulled to T), pairs with `T <= NEGATIVE_THRESHOLD` negatives (pushed
//! to 0), the band between is ignored. The trainer computes `e` as the mean of the frozen
//! embedding-layer vectors of each clause's tokens.

/// Clause pairs at or above this cosine are positives.
pub const POSITIVE_THRESHOLD: f32 = 0.9;
/// Clause pairs at or below this cosine are negatives.
pub const NEGATIVE_THRESHOLD: f32 = 0.6;

/// Targets for one pair of reports, row-major `S_i x S_j`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClauseTargets {
    /// Rows (clauses of report i).
    pub rows: usize,
    /// Columns (clauses of report j).
    pub cols: usize,
    /// Cosine similarity T.
    pub similarity: Vec<f32>,
    /// T >= positive threshold.
    pub positive: Vec<bool>,
    /// T <= negative threshold.
    pub negative: Vec<bool>,
}

/// Cosine similarity of every clause of `a` with every clause of `b` (row-major, `dim` wide),
/// accumulated in f64. A zero vector has similarity 0 with everything.
pub fn clause_cosine(a: &[f32], b: &[f32], dim: usize) -> Vec<f32> {
    assert!(dim > 0 && a.len().is_multiple_of(dim) && b.len().is_multiple_of(dim));
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let na: Vec<f64> = a.chunks(dim).map(norm).collect();
    let nb: Vec<f64> = b.chunks(dim).map(norm).collect();
    let mut out = Vec::with_capacity(na.len() * nb.len());
    for (ra, &x) in a.chunks(dim).zip(&na) {
        for (rb, &y) in b.chunks(dim).zip(&nb) {
            let dot: f64 = ra.iter().zip(rb).map(|(&p, &q)| p as f64 * q as f64).sum();
            out.push(if x > 0.0 && y > 0.0 {
                (dot / (x * y)) as f32
            } else {
                0.0
            });
        }
    }
    out
}

/// The matching targets for two reports' clause embeddings with the given thresholds.
pub fn matching_targets_with(
    a: &[f32],
    b: &[f32],
    dim: usize,
    positive_at: f32,
    negative_at: f32,
) -> ClauseTargets {
    let similarity = clause_cosine(a, b, dim);
    ClauseTargets {
        rows: a.len() / dim,
        cols: b.len() / dim,
        positive: similarity.iter().map(|&t| t >= positive_at).collect(),
        negative: similarity.iter().map(|&t| t <= negative_at).collect(),
        similarity,
    }
}

/// [`matching_targets_with`] at MG-3D's thresholds (0.9 / 0.6).
pub fn matching_targets(a: &[f32], b: &[f32], dim: usize) -> ClauseTargets {
    matching_targets_with(a, b, dim, POSITIVE_THRESHOLD, NEGATIVE_THRESHOLD)
}

/// The SSM pair loss for given visual clause similarities `p` (same shape as the targets):
/// `mean |P*(pos+neg) - T*pos|`, computed in f64 (the reference for the trainer's tensor version).
pub fn matching_loss(p: &[f32], t: &ClauseTargets) -> f64 {
    assert_eq!(p.len(), t.similarity.len());
    if p.is_empty() {
        return 0.0;
    }
    let s: f64 = p
        .iter()
        .enumerate()
        .map(|(k, &pk)| {
            let pos = t.positive[k] as u8 as f64;
            let neg = t.negative[k] as u8 as f64;
            (pk as f64 * (pos + neg) - t.similarity[k] as f64 * pos).abs()
        })
        .sum();
    s / p.len() as f64
}
