//! The similarity definition on hand-made signatures, and graph building invariants, against values
//! computed by hand.

use mg3d_graph::graph::{GraphParams, build, id_key};
use mg3d_graph::regions::Layout;
use mg3d_graph::signature::{Metric, Signature, SignatureBuilder, State, explain, similarity};
use mg3d_graph::stage::DEFAULT_REGIONS;

fn layout() -> Layout {
    Layout::parse(DEFAULT_REGIONS, "regions.toml").unwrap()
}

/// A signature from (region, finding, state) triples and extra mentioned regions.
fn sig(l: &Layout, obs: &[(&str, &str, State)], mentions: &[&str]) -> Signature {
    let mut b = SignatureBuilder::new(l);
    let reg = |n: &str| l.regions.iter().position(|r| r == n).unwrap();
    for &(r, f, s) in obs {
        let fi = l.finding_index(f);
        assert_ne!(fi, l.findings.len() - 1, "{f} is a known finding");
        b.observe(reg(r), fi, s);
    }
    for m in mentions {
        b.mention(reg(m));
    }
    b.finish()
}

fn sim(l: &Layout, a: &Signature, b: &Signature) -> f32 {
    similarity(a, b, &Metric::of(l))
}

#[test]
fn identical_signatures_weigh_one_and_similarity_is_symmetric() {
    let l = layout();
    let a = sig(
        &l,
        &[
            ("lung_right", "lung nodule", State::Present),
            ("heart", "cardiomegaly", State::Uncertain),
            ("pleura_left", "pleural effusion", State::Absent),
        ],
        &["bones"],
    );
    assert_eq!(sim(&l, &a, &a.clone()), 1.0);
    let empty = Signature::default();
    assert_eq!(sim(&l, &empty, &empty), 1.0);
    let normal = sig(&l, &[], &["heart", "bones", "lung_right", "lung_left"]);
    assert_eq!(sim(&l, &normal, &normal.clone()), 1.0);
    let b = sig(
        &l,
        &[
            ("lung_right", "lung nodule", State::Uncertain),
            ("lung_right", "emphysema", State::Present),
        ],
        &["heart"],
    );
    assert_eq!(sim(&l, &a, &b), sim(&l, &b, &a));
    // Against a report with no abnormality: A = {lung_right, heart}, J = 0, 10 normal regions.
    assert!((sim(&l, &a, &empty) - 1.0 / 3.0).abs() < 1e-6);
    // Mentions and negatives do not change the weight: equal abnormal slots weigh 1.
    let a_quiet = sig(
        &l,
        &[
            ("lung_right", "lung nodule", State::Present),
            ("heart", "cardiomegaly", State::Uncertain),
        ],
        &[],
    );
    assert_eq!(sim(&l, &a, &a_quiet), 1.0);
}

#[test]
fn hand_computed_weights() {
    let l = layout();
    // A = {lung_right, heart}, the 10 other regions normal in both: (1 + 0 + 10*0.1) / (2 + 10*0.1).
    let a = sig(
        &l,
        &[
            ("lung_right", "lung nodule", State::Present),
            ("heart", "cardiomegaly", State::Present),
        ],
        &["pleura_right"],
    );
    let b = sig(
        &l,
        &[("lung_right", "lung nodule", State::Present)],
        &["pleura_right"],
    );
    let w = sim(&l, &a, &b);
    assert!((w - 2.0 / 3.0).abs() < 1e-6, "{w}");
    let ex = explain(&a, &b, &Metric::of(&l));
    assert_eq!(ex.weight, w);
    let names: Vec<(&str, f32, f32)> = ex
        .regions
        .iter()
        .map(|&(r, s, wt)| (l.regions[r].as_str(), s, wt))
        .collect();
    assert_eq!(names, vec![("lung_right", 1.0, 1.0), ("heart", 0.0, 1.0)]);
    assert_eq!(ex.shared.len(), 1);

    // Uncertain counts half: J = min(1, .5) / max(1, .5) = 0.5 in the one abnormal region,
    // 11 normal regions: (0.5 + 1.1) / (1 + 1.1).
    let u = sig(&l, &[("lung_right", "lung nodule", State::Uncertain)], &[]);
    let p = sig(&l, &[("lung_right", "lung nodule", State::Present)], &[]);
    assert!((sim(&l, &u, &p) - 1.6 / 2.1).abs() < 1e-6);

    // Two findings in one region, one shared: J = 1/2; 11 normal regions: (0.5 + 1.1) / 2.1.
    let x = sig(
        &l,
        &[
            ("lung_left", "lung nodule", State::Present),
            ("lung_left", "emphysema", State::Present),
        ],
        &["heart"],
    );
    let y = sig(
        &l,
        &[("lung_left", "lung nodule", State::Present)],
        &["heart"],
    );
    assert!((sim(&l, &x, &y) - 1.6 / 2.1).abs() < 1e-6);

    // Explicitly absent versus present is no match; absent findings alone are "normal".
    let neg = sig(
        &l,
        &[("lung_left", "lung nodule", State::Absent)],
        &["heart"],
    );
    assert!((sim(&l, &y, &neg) - 1.1 / 2.1).abs() < 1e-6);
    let neg2 = sig(&l, &[("lung_left", "emphysema", State::Absent)], &["heart"]);
    assert!(
        (sim(&l, &neg, &neg2) - 1.0).abs() < 1e-6,
        "both normal everywhere"
    );
}

#[test]
fn disjoint_abnormal_signatures_weigh_little() {
    let l = layout();
    let all: Vec<&str> = l.regions.iter().map(String::as_str).collect();
    let a = sig(&l, &[("lung_right", "lung nodule", State::Present)], &all);
    let b = sig(&l, &[("heart", "cardiomegaly", State::Present)], &all);
    // 2 abnormal regions with J = 0, 10 regions normal in both: 1.0 / 3.0.
    let w = sim(&l, &a, &b);
    assert!((w - 1.0 / 3.0).abs() < 1e-6, "{w}");
    // Three abnormal regions each, none shared: 0.6 / 6.6.
    let a3 = sig(
        &l,
        &[
            ("lung_right", "lung nodule", State::Present),
            ("heart", "cardiomegaly", State::Present),
            ("vessels", "arterial wall calcification", State::Present),
        ],
        &[],
    );
    let b3 = sig(
        &l,
        &[
            ("lung_left", "emphysema", State::Present),
            ("pleura_left", "pleural effusion", State::Present),
            ("mediastinum", "lymphadenopathy", State::Present),
        ],
        &[],
    );
    assert!((sim(&l, &a3, &b3) - 0.6 / 6.6).abs() < 1e-6);
    // With normal agreement switched off, disjoint abnormal signatures weigh 0.
    let mut m = Metric::of(&l);
    m.params.normal_region_weight = 0.0;
    assert_eq!(similarity(&a, &b, &m), 0.0);
}

#[test]
fn laterality_splits_families() {
    let l = layout();
    let f = l.finding_index("pleural effusion");
    let name =
        |v: Vec<usize>| -> Vec<String> { v.into_iter().map(|i| l.regions[i].clone()).collect() };
    assert_eq!(
        name(l.observation_regions(f, None, Some("left"))),
        ["pleura_left"]
    );
    assert_eq!(
        name(l.observation_regions(f, None, None)),
        ["pleura_right", "pleura_left"]
    );
    let n = l.finding_index("lung nodule");
    assert_eq!(
        name(l.observation_regions(n, Some("right upper lobe"), Some("right"))),
        ["lung_right"]
    );
    assert_eq!(
        name(l.observation_regions(n, Some("upper lobes"), Some("bilateral"))),
        ["lung_right", "lung_left"]
    );
    let dense = sig(
        &l,
        &[("pleura_left", "pleural effusion", State::Uncertain)],
        &["bones"],
    );
    assert_eq!(
        Signature::from_dense(&dense.to_dense(&l), &l).unwrap(),
        dense
    );
    assert!(
        Layout::parse(
            "[[region]]\nname='a'\n[[finding]]\nterm='x'\nregion='nowhere'\n",
            "t"
        )
        .is_err()
    );
}

fn corpus(l: &Layout) -> Vec<Signature> {
    let mut out = Vec::new();
    let regions = ["lung_right", "lung_left", "heart", "vessels"];
    let findings = [
        "lung nodule",
        "emphysema",
        "cardiomegaly",
        "arterial wall calcification",
    ];
    for i in 0..200u32 {
        let mut obs = Vec::new();
        for (k, f) in findings.iter().enumerate() {
            if (i >> k) & 1 == 1 {
                let st = if (i >> (k + 4)) & 1 == 1 {
                    State::Uncertain
                } else {
                    State::Present
                };
                obs.push((regions[k], *f, st));
            }
        }
        out.push(sig(l, &obs, &["bones", "heart"]));
    }
    out
}

#[test]
fn graph_is_deterministic_and_collapses_identical_signatures() {
    let l = layout();
    let sigs = corpus(&l);
    let params = GraphParams {
        top_k: 5,
        min_weight: 0.3,
    };
    let g = build(&sigs, &Metric::of(&l), &params, 6);
    assert!(g.nodes.len() < sigs.len());
    assert_eq!(
        g.nodes.iter().map(|n| n.members.len()).sum::<usize>(),
        sigs.len()
    );
    for (i, s) in sigs.iter().enumerate() {
        assert_eq!(
            g.nodes[g.report_node[i] as usize].signature,
            s.abnormal_only()
        );
    }
    // Every edge: src < dst, weight as defined, above the threshold; every such pair sharing an
    // abnormal slot is present (brute force).
    let mut brute = Vec::new();
    for a in 0..g.nodes.len() {
        for b in a + 1..g.nodes.len() {
            let (sa, sb) = (&g.nodes[a].signature, &g.nodes[b].signature);
            let shares = sa
                .abnormal_slots()
                .any(|x| sb.abnormal_slots().any(|y| x == y));
            let w = similarity(sa, sb, &Metric::of(&l));
            if shares && w >= params.min_weight {
                brute.push((a as u32, b as u32, w));
            }
        }
    }
    assert_eq!(g.edges, brute);
    // Reversed input order: the same nodes (by signature) and edges.
    let rev: Vec<Signature> = sigs.iter().rev().cloned().collect();
    let g2 = build(&rev, &Metric::of(&l), &params, 6);
    assert_eq!(g2.edges, g.edges);
    // Top-k: other patients only, sorted by weight, deterministic.
    let keys: Vec<u64> = (0..sigs.len()).map(|i| id_key(&format!("r{i}"))).collect();
    let patients: Vec<u32> = (0..sigs.len() as u32).map(|i| i / 2).collect();
    let top = g.top_k(&keys, &patients, 5);
    assert_eq!(top, g.top_k(&keys, &patients, 5));
    let m = Metric::of(&l);
    for (r, list) in top.iter().enumerate() {
        assert!(list.len() <= 5);
        // The weights are the 5 best of all other patients' reports that share an abnormal slot
        // (or have the same abnormal slots), by brute force.
        let (ra,) = (sigs[r].abnormal_only(),);
        let mut best: Vec<f32> = (0..sigs.len())
            .filter(|&c| patients[c] != patients[r])
            .filter(|&c| {
                let ca = sigs[c].abnormal_only();
                ca == ra
                    || ra
                        .abnormal_slots()
                        .any(|x| ca.abnormal_slots().any(|y| x == y))
            })
            .map(|c| similarity(&sigs[r], &sigs[c], &m))
            .filter(|&w| w > 0.0)
            .collect();
        best.sort_by(|a, b| b.total_cmp(a));
        best.truncate(5);
        let got: Vec<f32> = list.iter().map(|x| x.1).collect();
        assert_eq!(got, best, "report {r}");
        for w in list.windows(2) {
            assert!(w[0].1 >= w[1].1);
        }
        for &(c, w) in list {
            assert_ne!(patients[c as usize], patients[r]);
            let expect = similarity(&sigs[r], &sigs[c as usize], &Metric::of(&l));
            assert!((w - expect).abs() < 1e-6);
        }
    }
}
