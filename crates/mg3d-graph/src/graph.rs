//! Graph building at scale: collapse identical signatures, find candidates through an inverted
//! index over abnormal (region, finding) slots, score candidate pairs in parallel, and pick the
//! top-k neighbours of every report from other patients with deterministic tie-breaking.

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::regions::SimilarityParams;
use crate::signature::{Signature, similarity};

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
    /// The shared signature.
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
    /// Candidate node pairs that were scored.
    pub scored_pairs: u64,
}

/// Edges found by one chunk of nodes and the pairs it scored.
type ChunkResult = (Vec<(u32, u32, f32)>, u64);

/// Collapses signatures into nodes and scores candidate pairs.
pub fn build(
    signatures: &[Signature],
    n_findings: usize,
    sim: &SimilarityParams,
    params: &GraphParams,
) -> Graph {
    let mut groups: BTreeMap<&Signature, Vec<u32>> = BTreeMap::new();
    for (i, s) in signatures.iter().enumerate() {
        groups.entry(s).or_default().push(i as u32);
    }
    let mut report_node = vec![0u32; signatures.len()];
    let nodes: Vec<Node> = groups
        .into_iter()
        .enumerate()
        .map(|(n, (sig, members))| {
            for &m in &members {
                report_node[m as usize] = n as u32;
            }
            Node {
                signature: sig.clone(),
                members,
            }
        })
        .collect();
    // Inverted index: abnormal slot -> nodes (ascending).
    let mut index: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    for (n, node) in nodes.iter().enumerate() {
        for slot in node.signature.abnormal_slots() {
            index.entry(slot).or_default().push(n as u32);
        }
    }
    let chunk = 256usize;
    let n_nodes = nodes.len();
    let results: Vec<ChunkResult> = (0..n_nodes.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            let mut seen = vec![u32::MAX; n_nodes];
            let mut cands: Vec<u32> = Vec::new();
            let mut out = Vec::new();
            let mut scored = 0u64;
            for i in c * chunk..((c + 1) * chunk).min(n_nodes) {
                cands.clear();
                for slot in nodes[i].signature.abnormal_slots() {
                    let post = &index[&slot];
                    // Only partners with a larger id: each pair is scored once.
                    let start = post.partition_point(|&j| j <= i as u32);
                    for &j in &post[start..] {
                        if seen[j as usize] != i as u32 {
                            seen[j as usize] = i as u32;
                            cands.push(j);
                        }
                    }
                }
                cands.sort_unstable();
                scored += cands.len() as u64;
                for &j in &cands {
                    let w = similarity(
                        &nodes[i].signature,
                        &nodes[j as usize].signature,
                        n_findings,
                        sim,
                    );
                    if w >= params.min_weight {
                        out.push((i as u32, j, w));
                    }
                }
            }
            (out, scored)
        })
        .collect();
    let mut edges = Vec::new();
    let mut scored_pairs = 0;
    for (e, s) in results {
        edges.extend(e);
        scored_pairs += s;
    }
    Graph {
        nodes,
        report_node,
        edges,
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
    /// reports with the same signature first (weight 1), then members of adjacent nodes by weight.
    /// Equal weights are ordered by a hash of (report key, candidate key), so ties are broken the
    /// same way on every run but differently for every report (no hub reports).
    pub fn top_k(&self, keys: &[u64], patients: &[u32], k: usize) -> Vec<Vec<(u32, f32)>> {
        let adj = self.adjacency();
        (0..self.report_node.len())
            .into_par_iter()
            .map(|r| {
                let n = self.report_node[r] as usize;
                // Weight levels, strongest first: the node itself (1.0), then neighbours.
                let mut levels: Vec<(f32, Vec<u32>)> = vec![(1.0, vec![n as u32])];
                for &(m, w) in &adj[n] {
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
