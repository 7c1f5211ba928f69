//! Metric functions: ROC AUC (ties as half), the Youden operating point and the scores at it,
//! percentile bootstrap confidence intervals, Recall@K and MAP@K.
//!
//! Conventions (the ones scikit-learn and CT-CLIP's scripts use, written down so the numbers can
//! be recomputed elsewhere):
//! - AUC is the Mann-Whitney probability that a random positive scores above a random negative,
//!   a tie counting one half (sklearn's `roc_auc_score`). Undefined (`None`) without both classes.
//! - The Youden point is the threshold `t` maximising TPR - FPR over the distinct scores, a sample
//!   predicted positive when `score >= t`; among equal maxima the highest threshold wins (sklearn's
//!   `roc_curve` order with `argmax`, as CT-CLIP does).
//! - Confidence intervals are percentile intervals (numpy's linear interpolation) over resamples
//!   of the rows with replacement; a resample where the statistic is undefined is skipped and
//!   counted.
//! - Ranking ties are broken by candidate index (lower first), so results never depend on sort
//!   stability.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// ROC AUC with ties counted as one half; `None` unless both classes are present.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // Mid-ranks (1-based) of all scores; NaN sorts last.
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += mid * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n))
}

/// The threshold maximising Youden's J = TPR - FPR (`score >= t` is positive); `None` unless
/// both classes are present.
pub fn youden_threshold(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n_pos = labels.iter().filter(|&&l| l).count() as f64;
    let n_neg = labels.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut best: Option<(f64, f64)> = None;
    let mut i = 0;
    while i < order.len() {
        let t = scores[order[i]];
        while i < order.len() && scores[order[i]] == t {
            if labels[order[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        let j = tp / n_pos - fp / n_neg;
        if best.is_none_or(|(bj, _)| j > bj) {
            best = Some((j, t));
        }
    }
    best.map(|(_, t)| t)
}

/// Counts of a binary decision.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Confusion {
    /// True positives.
    pub tp: f64,
    /// False positives.
    pub fp: f64,
    /// True negatives.
    pub tn: f64,
    /// False negatives.
    pub fn_: f64,
}

impl Confusion {
    /// The confusion of `score >= threshold` against `labels`.
    pub fn at(scores: &[f64], labels: &[bool], threshold: f64) -> Confusion {
        let mut c = Confusion::default();
        for (&s, &l) in scores.iter().zip(labels) {
            match (s >= threshold, l) {
                (true, true) => c.tp += 1.0,
                (true, false) => c.fp += 1.0,
                (false, false) => c.tn += 1.0,
                (false, true) => c.fn_ += 1.0,
            }
        }
        c
    }
    /// TP / (TP + FP); 0 when nothing is predicted positive (sklearn's `zero_division=0`).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    /// TP / (TP + FN).
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// Harmonic mean of precision and recall: 2TP / (2TP + FP + FN).
    pub fn f1(&self) -> f64 {
        ratio(2.0 * self.tp, 2.0 * self.tp + self.fp + self.fn_)
    }
    /// (TP + TN) / all.
    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn_)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The `q`-quantile (0..=1) of `values` with numpy's default linear interpolation.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// A 95% percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// 2.5th percentile over the resamples.
    pub low: f64,
    /// 97.5th percentile over the resamples.
    pub high: f64,
    /// Resamples where the statistic was defined.
    pub used: usize,
}

/// Percentile bootstrap of several statistics at once: `resamples` draws of `n` row indices
/// with replacement from a ChaCha8 stream seeded by `seed`; `stat` returns one value per
/// statistic, `None` where it is undefined in that resample (skipped for that statistic only).
/// Returns each statistic's interval, `None` when it was never defined.
pub fn bootstrap(
    n: usize,
    resamples: usize,
    seed: u64,
    mut stat: impl FnMut(&[usize]) -> Vec<Option<f64>>,
) -> Vec<Option<Interval>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draws: Vec<Vec<f64>> = Vec::new();
    let mut rows = vec![0usize; n];
    if n > 0 {
        for _ in 0..resamples {
            for r in rows.iter_mut() {
                *r = rng.random_range(0..n);
            }
            let values = stat(&rows);
            draws.resize(draws.len().max(values.len()), Vec::new());
            for (d, v) in draws.iter_mut().zip(values) {
                d.extend(v);
            }
        }
    }
    draws
        .iter()
        .map(|d| {
            (!d.is_empty()).then(|| Interval {
                low: quantile(d, 0.025),
                high: quantile(d, 0.975),
                used: d.len(),
            })
        })
        .collect()
}

/// Rank (0-based) of candidate `target` in `scores` sorted descending, ties broken by index.
pub fn rank_of(scores: &[f64], target: usize) -> usize {
    let s = scores[target];
    scores
        .iter()
        .enumerate()
        .filter(|&(i, &x)| x > s || (x == s && i < target))
        .count()
}

/// Recall@K: the fraction of queries whose target candidate ranks within the top `k`.
/// `scores[q]` holds query `q`'s score for every candidate; `targets[q]` is its match.
pub fn recall_at_k(scores: &[Vec<f64>], targets: &[usize], k: usize) -> f64 {
    if scores.is_empty() {
        return f64::NAN;
    }
    let hits = scores
        .iter()
        .zip(targets)
        .filter(|(s, t)| rank_of(s, **t) < k)
        .count();
    hits as f64 / scores.len() as f64
}

/// Recall@K of a random ranking: K / candidates (capped at 1).
pub fn random_recall_at_k(candidates: usize, k: usize) -> f64 {
    if candidates == 0 {
        f64::NAN
    } else {
        (k as f64 / candidates as f64).min(1.0)
    }
}

/// Candidate indices sorted by descending score, ties by index.
pub fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

/// Average precision at K of one ranked list of relevance flags:
/// AP@K = (1 / min(K, R)) · Σ_{i ≤ K, rel_i} precision@i, with R the number of relevant
/// candidates in the whole list; `None` when nothing is relevant.
pub fn average_precision_at_k(ranked_relevance: &[bool], k: usize) -> Option<f64> {
    let total = ranked_relevance.iter().filter(|&&r| r).count();
    if total == 0 {
        return None;
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (i, &rel) in ranked_relevance.iter().take(k).enumerate() {
        if rel {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    Some(sum / total.min(k) as f64)
}

/// MAP@K of queries given as (scores over candidates, relevance of each candidate): each query's
/// candidates are ranked by score and its AP@K taken; queries without any relevant candidate are
/// skipped. Returns (MAP, queries used).
pub fn map_at_k(queries: &[(Vec<f64>, Vec<bool>)], k: usize) -> (f64, usize) {
    let aps: Vec<f64> = queries
        .iter()
        .filter_map(|(s, rel)| {
            let ranked: Vec<bool> = ranking(s).into_iter().map(|i| rel[i]).collect();
            average_precision_at_k(&ranked, k)
        })
        .collect();
    if aps.is_empty() {
        (f64::NAN, 0)
    } else {
        (aps.iter().sum::<f64>() / aps.len() as f64, aps.len())
    }
}

/// Label-overlap relevance for volume→volume retrieval: two volumes are relevant to each other
/// when they share a positive label, or when neither has any positive label (both normal).
/// Unknown labels (`None`) count as not positive.
pub fn label_overlap(a: &[Option<bool>], b: &[Option<bool>]) -> bool {
    let pa: Vec<bool> = a.iter().map(|x| *x == Some(true)).collect();
    let pb: Vec<bool> = b.iter().map(|x| *x == Some(true)).collect();
    let any_a = pa.iter().any(|&x| x);
    let any_b = pb.iter().any(|&x| x);
    if !any_a && !any_b {
        return true;
    }
    pa.iter().zip(&pb).any(|(&x, &y)| x && y)
}

/// Shuffles `v` in place (Fisher-Yates; the seeded draws every random order here uses).
pub(crate) fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
}

/// Expected MAP@K of random rankings of the same queries, estimated over `rounds` seeded
/// shuffles (the baseline MAP@K is compared with).
pub fn random_map_at_k(relevance: &[Vec<bool>], k: usize, rounds: usize, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut total = 0.0;
    let mut count = 0usize;
    for _ in 0..rounds {
        for rel in relevance {
            let mut r = rel.clone();
            shuffle(&mut r, &mut rng);
            if let Some(ap) = average_precision_at_k(&r, k) {
                total += ap;
                count += 1;
            }
        }
    }
    if count == 0 {
        f64::NAN
    } else {
        total / count as f64
    }
}
