//! Per-report fine-grained signatures and the disentangled similarity between two of them.
//!
//! A signature holds, per region, whether the report mentions the region and the state of each
//! finding there (absent / uncertain / present). The similarity of two signatures is
//!
//! ```text
//!   A = regions where either report has an abnormality (a present or uncertain finding)
//!   N = every other region: both reports call it normal (a region a report does not mention
//!       counts as normal, the radiology convention; explicit negatives say the same)
//!   J_r = sum_f min(w_a(r,f), w_b(r,f)) / sum_f max(w_a(r,f), w_b(r,f))   for r in A
//!         with w = 1 for present, `uncertain_weight` for uncertain, 0 otherwise
//!   sim = (sum_{r in A} J_r + beta * |N|) / (|A| + beta * |N|),   beta = `normal_region_weight`
//! ```
//!
//! (1 when the denominator is 0). The similarity therefore depends only on the abnormal
//! (region, finding, state) slots: signatures with equal abnormal slots weigh 1, a shared
//! abnormality in a region counts fully, a region both call normal counts `beta` as much, and an
//! uncertain finding counts partially. Mentions and explicit negatives are kept in the signature
//! (signatures.parquet, shards) for inspection and training targets.

use crate::regions::{Layout, SimilarityParams};

/// What the similarity needs of a layout: its sizes and tunables.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Regions in the layout (at most 64).
    pub n_regions: usize,
    /// Finding slots per region.
    pub n_findings: usize,
    /// Tunables.
    pub params: SimilarityParams,
}

impl Metric {
    /// The metric of a layout.
    pub fn of(layout: &Layout) -> Metric {
        Metric {
            n_regions: layout.regions.len(),
            n_findings: layout.findings.len(),
            params: layout.similarity,
        }
    }
    fn all_regions(&self) -> u64 {
        if self.n_regions >= 64 {
            u64::MAX
        } else {
            (1u64 << self.n_regions) - 1
        }
    }
    /// An upper bound of the similarity of any two signatures with these abnormal-region masks
    /// (regions abnormal in only one of them have J = 0, shared ones at most 1).
    pub fn upper_bound(&self, mask_a: u64, mask_b: u64) -> f32 {
        let all = self.all_regions();
        let shared = (mask_a & mask_b).count_ones() as f32;
        let abn = (mask_a | mask_b).count_ones() as f32;
        let normal =
            (all & !(mask_a | mask_b)).count_ones() as f32 * self.params.normal_region_weight;
        if abn + normal == 0.0 {
            1.0
        } else {
            (shared + normal) / (abn + normal)
        }
    }
}

/// The state of one finding in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum State {
    /// Explicitly negated.
    Absent = 1,
    /// Hedged ("possible", "cannot be excluded").
    Uncertain = 2,
    /// Asserted.
    Present = 3,
}

impl State {
    /// From an entities.parquet assertion (`present` / `absent` / `uncertain`).
    pub fn from_assertion(a: &str) -> Option<State> {
        match a {
            "present" => Some(State::Present),
            "absent" => Some(State::Absent),
            "uncertain" => Some(State::Uncertain),
            _ => None,
        }
    }

    /// The code in the dense vector (1 absent, 2 uncertain, 3 present).
    pub fn code(self) -> i8 {
        self as i8
    }

    /// From a dense code (0 = not mentioned).
    pub fn from_code(c: i8) -> Option<State> {
        match c {
            1 => Some(State::Absent),
            2 => Some(State::Uncertain),
            3 => Some(State::Present),
            _ => None,
        }
    }

    /// Name as in entities.parquet.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Absent => "absent",
            State::Uncertain => "uncertain",
            State::Present => "present",
        }
    }

    fn is_abnormal(self) -> bool {
        self != State::Absent
    }
}

/// A report's signature. Identical reports (as far as regions and findings go) have equal signatures.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature {
    /// Bit r set when region r is mentioned (an anatomy or observation placed there).
    pub mentioned: u64,
    /// (slot, state), sorted by slot, one entry per slot; slot = region * n_findings + finding.
    pub states: Vec<(u16, State)>,
}

/// Builds a signature from mentions and observations.
#[derive(Debug, Clone)]
pub struct SignatureBuilder {
    n_findings: usize,
    mentioned: u64,
    states: std::collections::BTreeMap<u16, State>,
}

impl SignatureBuilder {
    /// An empty builder for `layout`.
    pub fn new(layout: &Layout) -> Self {
        SignatureBuilder {
            n_findings: layout.findings.len(),
            mentioned: 0,
            states: Default::default(),
        }
    }

    /// Marks a region as mentioned.
    pub fn mention(&mut self, region: usize) {
        self.mentioned |= 1u64 << region;
    }

    /// Records a finding's state in a region. Several statements about one finding in one region
    /// merge to the strongest: present over uncertain over absent ("no new nodule ... known nodule").
    pub fn observe(&mut self, region: usize, finding: usize, state: State) {
        self.mention(region);
        let slot = (region * self.n_findings + finding) as u16;
        let e = self.states.entry(slot).or_insert(state);
        if state > *e {
            *e = state;
        }
    }

    /// The finished signature.
    pub fn finish(self) -> Signature {
        Signature {
            mentioned: self.mentioned,
            states: self.states.into_iter().collect(),
        }
    }
}

impl Signature {
    /// Bitmask of regions with an abnormality.
    pub fn abnormal_regions(&self, n_findings: usize) -> u64 {
        let mut m = 0u64;
        for &(slot, s) in &self.states {
            if s.is_abnormal() {
                m |= 1u64 << (slot as usize / n_findings);
            }
        }
        m
    }

    /// Slots with a present or uncertain finding (the inverted-index keys).
    pub fn abnormal_slots(&self) -> impl Iterator<Item = u16> + '_ {
        self.states
            .iter()
            .filter(|(_, s)| s.is_abnormal())
            .map(|&(slot, _)| slot)
    }

    /// The signature reduced to its abnormal slots: what the similarity reads, so reports with
    /// equal reductions collapse into one graph node.
    pub fn abnormal_only(&self) -> Signature {
        Signature {
            mentioned: 0,
            states: self
                .states
                .iter()
                .filter(|(_, s)| s.is_abnormal())
                .copied()
                .collect(),
        }
    }

    /// The dense vector: per region `[mentioned, state of finding 0, ..]` with codes 0/1/2/3.
    pub fn to_dense(&self, layout: &Layout) -> Vec<i8> {
        let nf = layout.findings.len();
        let stride = layout.region_stride();
        let mut v = vec![0i8; layout.dense_len()];
        for r in 0..layout.regions.len() {
            if self.mentioned >> r & 1 == 1 {
                v[r * stride] = 1;
            }
        }
        for &(slot, s) in &self.states {
            let (r, f) = (slot as usize / nf, slot as usize % nf);
            v[r * stride + 1 + f] = s.code();
        }
        v
    }

    /// The inverse of [`Signature::to_dense`]; `None` when the length does not match the layout.
    pub fn from_dense(v: &[i8], layout: &Layout) -> Option<Signature> {
        if v.len() != layout.dense_len() {
            return None;
        }
        let nf = layout.findings.len();
        let stride = layout.region_stride();
        let mut sig = Signature::default();
        for r in 0..layout.regions.len() {
            if v[r * stride] != 0 {
                sig.mentioned |= 1u64 << r;
            }
            for f in 0..nf {
                if let Some(s) = State::from_code(v[r * stride + 1 + f]) {
                    sig.states.push(((r * nf + f) as u16, s));
                }
            }
        }
        Some(sig)
    }

    /// Human-readable abnormal findings, `region:finding:state`, in slot order.
    pub fn abnormal_terms(&self, layout: &Layout) -> Vec<String> {
        let nf = layout.findings.len();
        self.states
            .iter()
            .filter(|(_, s)| s.is_abnormal())
            .map(|&(slot, s)| {
                let (r, f) = (slot as usize / nf, slot as usize % nf);
                format!(
                    "{}:{}:{}",
                    layout.regions[r],
                    layout.findings[f],
                    s.as_str()
                )
            })
            .collect()
    }
}

/// The similarity of two signatures and how each region contributed.
#[derive(Debug, Clone, PartialEq)]
pub struct Similarity {
    /// The aggregated weight in [0, 1].
    pub weight: f32,
    /// (region, per-region similarity J_r, aggregation weight 1) for every region in A.
    pub regions: Vec<(usize, f32, f32)>,
    /// Slots where both reports have an abnormality.
    pub shared: Vec<u16>,
}

fn abnormal_weight(s: Option<State>, p: &SimilarityParams) -> f32 {
    match s {
        Some(State::Present) => 1.0,
        Some(State::Uncertain) => p.uncertain_weight,
        _ => 0.0,
    }
}

/// The similarity weight only (the hot path of graph building).
pub fn similarity(a: &Signature, b: &Signature, m: &Metric) -> f32 {
    let (n_findings, p) = (m.n_findings, &m.params);
    let abn = a.abnormal_regions(n_findings) | b.abnormal_regions(n_findings);
    let normal = m.all_regions() & !abn;
    let n_a = abn.count_ones() as f32;
    let n_n = normal.count_ones() as f32 * p.normal_region_weight;
    if n_a + n_n == 0.0 {
        return 1.0;
    }
    // Per-region sums of min and max abnormal weights, merged over the two sorted slot lists.
    let mut mins = [0f32; 64];
    let mut maxs = [0f32; 64];
    let (mut i, mut j) = (0, 0);
    let (sa, sb) = (&a.states, &b.states);
    while i < sa.len() || j < sb.len() {
        let (slot, wa, wb) = match (sa.get(i), sb.get(j)) {
            (Some(&(x, s)), Some(&(y, t))) if x == y => {
                i += 1;
                j += 1;
                (x, abnormal_weight(Some(s), p), abnormal_weight(Some(t), p))
            }
            (Some(&(x, s)), Some(&(y, _))) if x < y => {
                i += 1;
                (x, abnormal_weight(Some(s), p), 0.0)
            }
            (Some(&(x, s)), None) => {
                i += 1;
                (x, abnormal_weight(Some(s), p), 0.0)
            }
            (_, Some(&(y, t))) => {
                j += 1;
                (y, 0.0, abnormal_weight(Some(t), p))
            }
            (None, None) => unreachable!(),
        };
        let r = slot as usize / n_findings;
        mins[r] += wa.min(wb);
        maxs[r] += wa.max(wb);
    }
    let mut sum = n_n;
    let mut mask = abn;
    while mask != 0 {
        let r = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        if maxs[r] > 0.0 {
            sum += mins[r] / maxs[r];
        }
    }
    sum / (n_a + n_n)
}

/// The similarity with its per-region breakdown (regions in A only; every other region counts
/// as both-normal with weight `normal_region_weight`) and the shared abnormal slots.
pub fn explain(a: &Signature, b: &Signature, m: &Metric) -> Similarity {
    let (n_findings, p) = (m.n_findings, &m.params);
    let weight = similarity(a, b, m);
    let abn = a.abnormal_regions(n_findings) | b.abnormal_regions(n_findings);
    let get = |s: &Signature, slot: u16| {
        s.states
            .binary_search_by_key(&slot, |&(k, _)| k)
            .ok()
            .map(|i| s.states[i].1)
    };
    let mut regions = Vec::new();
    let mut shared = Vec::new();
    for r in 0..m.n_regions.min(64) {
        if abn >> r & 1 == 1 {
            let (mut mn, mut mx) = (0f32, 0f32);
            for f in 0..n_findings {
                let slot = (r * n_findings + f) as u16;
                let (sa, sb) = (get(a, slot), get(b, slot));
                let (wa, wb) = (abnormal_weight(sa, p), abnormal_weight(sb, p));
                mn += wa.min(wb);
                mx += wa.max(wb);
                if wa > 0.0 && wb > 0.0 {
                    shared.push(slot);
                }
            }
            regions.push((r, if mx > 0.0 { mn / mx } else { 0.0 }, 1.0));
        }
    }
    Similarity {
        weight,
        regions,
        shared,
    }
}
