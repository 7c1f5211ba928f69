//! Graph building at scale: collapse identical signatures, find candidates through an inverted
//! index over abnormal (region, finding) slots, score candidate pairs in parallel, and pick the
//! top-k neighbours of every report from other patients with deterministic tie-breaking.

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::signature::{Metric, Signature, similarity};

/// Graph parameters.
#[derive(Debug, Clone, Copy)]
pub struct GraphParams {
    /// Neighbours kept per report.
    pub top_k: usize,
    /// Edges (between distinct signatures) kept when their weight is at least this.
    pub min_weight: f32,
}

/// A unique signature and the reports that have it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The shared abnormal slots ([`Signature::abnormal_only`]).
    pub signature: Signature,
    /// Indices into the report list, ascending.
    pub members: Vec<u32>,
}

/// The collapsed graph.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Unique signatures, sorted by signature (so node ids do not depend on input order).
    pub nodes: Vec<Node>,
    /// Node of each report.
    pub report_node: Vec<u32>,
    /// Undirected edges between distinct nodes, `src < dst`, weight >= min_weight, sorted.
    pub edges: Vec<(u32, u32, f32)>,
    /// Per node: the nearest other nodes, strongest first, holding at least `need` reports
    /// (fewer when fewer share an abnormality).
    pub nearest: Vec<Vec<(u32, f32)>>,
    /// Node pairs that were scored (each pair is scored from both ends).
    pub scored_pairs: u64,
}

/// Per node: edges to larger ids, nearest nodes, pairs scored.
type NodeResult = (Vec<(u32, f32)>, Vec<(u32, f32)>, u64);

/// Reports with identical abnormal findings collapse into one node: the nodes (in signature
/// order) and each report's node.
fn collapse(signatures: &[Signature]) -> (Vec<Node>, Vec<u32>) {
    let reduced: Vec<Signature> = signatures.iter().map(Signature::abnormal_only).collect();
    let mut groups: BTreeMap<&Signature, Vec<u32>> = BTreeMap::new();
    for (i, s) in reduced.iter().enumerate() {
        groups.entry(s).or_default().push(i as u32);
    }
    let mut report_node = vec![0u32; signatures.len()];
    let nodes: Vec<Node> = groups
        .into_iter()
        .enumerate()
        .map(|(n, (sig, members))| {
            for &r in &members {
                report_node[r as usize] = n as u32;
            }
            Node {
                signature: sig.clone(),
                members,
            }
        })
        .collect();
    (nodes, report_node)
}

/// Collapses signatures into nodes (equal abnormal slots, see [`Signature::abnormal_only`]) and
/// searches, for every node, (a) every other node at or above `min_weight` (edges) and (b) its
/// nearest nodes, enough to hold `need` reports (the top-k per report plus a margin for reports of
/// the same patient).
///
/// Nodes are grouped by abnormal-region mask. For a node, the groups sharing an abnormal region are
/// visited in decreasing order of the similarity's upper bound for the two masks
/// ([`Metric::upper_bound`]); inside a group only nodes sharing an abnormal (region, finding) slot
/// are scored. The search stops when the bound falls below both `min_weight` and the weight of the
/// current `need`-th nearest report, so nothing above either is missed.
pub fn build(signatures: &[Signature], m: &Metric, params: &GraphParams, need: usize) -> Graph {
    let (nodes, report_node) = collapse(signatures);
    let n_nodes = nodes.len();
    // Abnormal slots as bitsets, and nodes grouped by abnormal-region mask.
    let words = (m.n_regions * m.n_findings).div_ceil(64).max(1);
    let mut bits = vec![0u64; n_nodes * words];
    let mut masks = vec![0u64; n_nodes];
    let mut by_mask: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (n, node) in nodes.iter().enumerate() {
        for slot in node.signature.abnormal_slots() {
            bits[n * words + slot as usize / 64] |= 1u64 << (slot % 64);
        }
        masks[n] = node.signature.abnormal_regions(m.n_findings);
        by_mask.entry(masks[n]).or_default().push(n as u32);
    }
    let mask_list: Vec<u64> = by_mask.keys().copied().collect();
    let group_of: BTreeMap<u64, usize> =
        mask_list.iter().enumerate().map(|(i, &k)| (k, i)).collect();
    let group_nodes: Vec<&Vec<u32>> = by_mask.values().collect();
    // Per group: the groups sharing an abnormal region, by decreasing upper bound.
    let order: Vec<Vec<(f32, usize)>> = mask_list
        .par_iter()
        .map(|&a| {
            let mut v: Vec<(f32, usize)> = mask_list
                .iter()
                .enumerate()
                .filter(|&(_, &b)| a & b != 0)
                .map(|(j, &b)| (m.upper_bound(a, b), j))
                .collect();
            v.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            v
        })
        .collect();
    let shares = |i: usize, j: usize| -> bool {
        (0..words).any(|w| bits[i * words + w] & bits[j * words + w] != 0)
    };
    let size = |j: u32| nodes[j as usize].members.len();
    let results: Vec<NodeResult> = (0..n_nodes)
        .into_par_iter()
        .map(|i| {
            let mut edges = Vec::new();
            let mut cands: Vec<(f32, u32)> = Vec::new();
            let mut scored = 0u64;
            let own = size(i as u32) - 1;
            // Weight of the need-th nearest report found so far (0 until enough are found).
            let kth = |c: &mut Vec<(f32, u32)>| -> f32 {
                if own >= need {
                    return 1.0;
                }
                c.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
                let mut cum = own;
                for &(w, j) in c.iter() {
                    cum += size(j);
                    if cum >= need {
                        return w;
                    }
                }
                0.0
            };
            let mut bar = kth(&mut cands);
            for &(ub, g) in &order[group_of[&masks[i]]] {
                if ub < params.min_weight && ub < bar {
                    break;
                }
                let before = cands.len();
                for &j in group_nodes[g] {
                    if j as usize == i || !shares(i, j as usize) {
                        continue;
                    }
                    scored += 1;
                    let w = similarity(&nodes[i].signature, &nodes[j as usize].signature, m);
                    if w >= params.min_weight && j as usize > i {
                        edges.push((j, w));
                    }
                    if w > 0.0 && w >= bar {
                        cands.push((w, j));
                    }
                }
                if cands.len() > before {
                    bar = kth(&mut cands);
                    // Keep the list short: drop what can no longer be among the nearest.
                    cands.retain(|&(w, _)| w >= bar);
                }
            }
            cands.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            let mut near = Vec::new();
            let mut cum = own;
            for (w, j) in cands {
                if cum >= need {
                    break;
                }
                cum += size(j);
                near.push((j, w));
            }
            edges.sort_unstable_by_key(|e| e.0);
            (edges, near, scored)
        })
        .collect();
    let mut edges = Vec::new();
    let mut nearest = Vec::with_capacity(n_nodes);
    let mut scored_pairs = 0;
    for (i, (e, near, s)) in results.into_iter().enumerate() {
        edges.extend(e.into_iter().map(|(j, w)| (i as u32, j, w)));
        nearest.push(near);
        scored_pairs += s;
    }
    Graph {
        nodes,
        report_node,
        edges,
        nearest,
        scored_pairs,
    }
}

/// A 64-bit mix (splitmix64 finaliser) for deterministic, well-spread tie-breaking.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// Stable 64-bit key of a string id (for tie-breaking).
pub fn id_key(id: &str) -> u64 {
    let h = blake3::hash(id.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl Graph {
    /// Adjacency per node: (neighbour node, weight), strongest first.
    pub fn adjacency(&self) -> Vec<Vec<(u32, f32)>> {
        let mut adj = vec![Vec::new(); self.nodes.len()];
        for &(a, b, w) in &self.edges {
            adj[a as usize].push((b, w));
            adj[b as usize].push((a, w));
        }
        for v in &mut adj {
            v.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        }
        adj
    }

    /// Top-k neighbour reports of every report, excluding reports of the same patient:
    /// reports in the same node first (weight 1), then members of the nearest nodes by weight.
    /// Equal weights are ordered by a hash of (report key, candidate key), so ties are broken the
    /// same way on every run but differently for every report (no hub reports).
    pub fn top_k(&self, keys: &[u64], patients: &[u32], k: usize) -> Vec<Vec<(u32, f32)>> {
        (0..self.report_node.len())
            .into_par_iter()
            .map(|r| {
                let n = self.report_node[r] as usize;
                // Weight levels, strongest first: the node itself (1.0), then neighbours.
                let mut levels: Vec<(f32, Vec<u32>)> = vec![(1.0, vec![n as u32])];
                for &(m, w) in &self.nearest[n] {
                    match levels.last_mut() {
                        Some(last) if last.0 == w => last.1.push(m),
                        _ => levels.push((w, vec![m])),
                    }
                }
                let mut out: Vec<(u32, f32)> = Vec::with_capacity(k);
                for (w, level_nodes) in levels {
                    if out.len() >= k {
                        break;
                    }
                    let mut cands: Vec<(u64, u32)> = level_nodes
                        .iter()
                        .flat_map(|&m| self.nodes[m as usize].members.iter().copied())
                        .filter(|&c| c as usize != r && patients[c as usize] != patients[r])
                        .map(|c| (mix(keys[r] ^ mix(keys[c as usize])), c))
                        .collect();
                    let need = k - out.len();
                    if cands.len() > need {
                        cands.select_nth_unstable(need - 1);
                        cands.truncate(need);
                    }
                    cands.sort_unstable();
                    out.extend(cands.into_iter().map(|(_, c)| (c, w)));
                }
                out
            })
            .collect()
    }

    /// Connected components over reports (a node's members are connected to each other).
    /// Returns the component sizes in reports, largest first.
    pub fn component_sizes(&self) -> Vec<usize> {
        let mut parent: Vec<u32> = (0..self.nodes.len() as u32).collect();
        fn find(p: &mut [u32], mut x: u32) -> u32 {
            while p[x as usize] != x {
                p[x as usize] = p[p[x as usize] as usize];
                x = p[x as usize];
            }
            x
        }
        for &(a, b, _) in &self.edges {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                parent[ra.max(rb) as usize] = ra.min(rb);
            }
        }
        let mut sizes: BTreeMap<u32, usize> = BTreeMap::new();
        for (n, node) in self.nodes.iter().enumerate() {
            let root = find(&mut parent, n as u32);
            *sizes.entry(root).or_default() += node.members.len();
        }
        let mut v: Vec<usize> = sizes.into_values().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }
}
