//! Metric functions on hand-computed cases, and against scikit-learn on generated data (skipped
//! without the project's Python environment unless MG3D_REQUIRE_PYTHON=1).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use mg3d_eval::metrics::{
    Confusion, auc, average_precision_at_k, bootstrap, label_overlap, map_at_k, quantile,
    random_map_at_k, random_recall_at_k, rank_of, recall_at_k, youden_threshold,
};
use mg3d_eval::probe::fit_logistic;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn auc_hand_cases_with_ties() {
    // sklearn's documentation example.
    let y = [false, false, true, true];
    assert!(close(auc(&[0.1, 0.4, 0.35, 0.8], &y).unwrap(), 0.75));
    // Pairs (pos, neg): (2,1)=1, (2,2)=1/2, (3,1)=1, (3,2)=1 -> 3.5 / 4.
    let y = [false, true, false, true];
    assert!(close(auc(&[1.0, 2.0, 2.0, 3.0], &y).unwrap(), 0.875));
    // All tied: one half.
    assert!(close(auc(&[0.5; 4], &y).unwrap(), 0.5));
    // Perfect and inverted.
    assert!(close(auc(&[0.0, 1.0, 0.0, 1.0], &y).unwrap(), 1.0));
    assert!(close(auc(&[1.0, 0.0, 1.0, 0.0], &y).unwrap(), 0.0));
    // Undefined without both classes.
    assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
    assert_eq!(auc(&[0.1, 0.2], &[false, false]), None);
    // Order of rows does not matter.
    let s = [0.3, 0.3, 0.9, 0.1, 0.3, 0.7];
    let l = [true, false, true, false, false, true];
    let a = auc(&s, &l).unwrap();
    let (mut s2, mut l2) = (s.to_vec(), l.to_vec());
    s2.reverse();
    l2.reverse();
    assert!(close(a, auc(&s2, &l2).unwrap()));
    // Hand count: pos {0.3, 0.9, 0.7}, neg {0.3, 0.1, 0.3}: 0.3 vs (0.5, 1, 0.5) = 2,
    // 0.9 and 0.7 beat all three = 6 -> 8 / 9.
    assert!(close(a, 8.0 / 9.0));
}

#[test]
fn youden_point_and_scores_at_it() {
    let s = [0.1, 0.4, 0.35, 0.8];
    let y = [false, false, true, true];
    // J: t=0.8 -> 0.5, t=0.4 -> 0, t=0.35 -> 0.5, t=0.1 -> 0; the highest threshold wins ties.
    let t = youden_threshold(&s, &y).unwrap();
    assert!(close(t, 0.8));
    let c = Confusion::at(&s, &y, t);
    assert_eq!((c.tp, c.fp, c.tn, c.fn_), (1.0, 0.0, 2.0, 1.0));
    assert!(close(c.precision(), 1.0));
    assert!(close(c.recall(), 0.5));
    assert!(close(c.f1(), 2.0 / 3.0));
    assert!(close(c.accuracy(), 0.75));
    // Nothing predicted positive: precision 0, not NaN.
    let c = Confusion::at(&s, &y, 2.0);
    assert_eq!(c.precision(), 0.0);
    assert_eq!(youden_threshold(&s, &[true; 4]), None);
}

#[test]
fn quantiles_interpolate_like_numpy() {
    let v = [4.0, 1.0, 3.0, 2.0];
    assert!(close(quantile(&v, 0.5), 2.5));
    assert!(close(quantile(&v, 0.025), 1.075));
    assert!(close(quantile(&v, 0.975), 3.925));
    assert!(close(quantile(&[7.0], 0.3), 7.0));
}

#[test]
fn bootstrap_is_seeded_and_brackets_the_statistic() {
    let s: Vec<f64> = (0..60)
        .map(|i| (i % 7) as f64 + if i % 3 == 0 { 3.0 } else { 0.0 })
        .collect();
    let y: Vec<bool> = (0..60).map(|i| i % 3 == 0).collect();
    let stat = |rows: &[usize]| {
        let ss: Vec<f64> = rows.iter().map(|&r| s[r]).collect();
        let yy: Vec<bool> = rows.iter().map(|&r| y[r]).collect();
        vec![auc(&ss, &yy)]
    };
    let a = bootstrap(s.len(), 1000, 7, stat)[0].unwrap();
    let b = bootstrap(s.len(), 1000, 7, stat)[0].unwrap();
    let c = bootstrap(s.len(), 1000, 8, stat)[0].unwrap();
    assert_eq!(a, b);
    assert_eq!(a.used, b.used);
    assert_ne!(a, c);
    let full = auc(&s, &y).unwrap();
    assert!(a.low < full && full < a.high, "{a:?} vs {full}");
    // A statistic undefined in every resample has no interval; the others keep theirs.
    let mixed = bootstrap(s.len(), 100, 7, |_| vec![None, Some(1.0)]);
    assert_eq!(mixed[0], None);
    assert_eq!(mixed[1].unwrap().used, 100);
}

#[test]
fn recall_at_k_hand_case() {
    // Three queries over four candidates; targets 0, 1, 3.
    let scores = vec![
        vec![0.9, 0.1, 0.2, 0.3], // target 0 ranks 0
        vec![0.5, 0.5, 0.2, 0.1], // target 1 ties candidate 0: the lower index goes first -> rank 1
        vec![0.4, 0.3, 0.2, 0.1], // target 3 ranks 3
    ];
    let targets = [0, 1, 3];
    assert_eq!(rank_of(&scores[1], 1), 1);
    assert!(close(recall_at_k(&scores, &targets, 1), 1.0 / 3.0));
    assert!(close(recall_at_k(&scores, &targets, 2), 2.0 / 3.0));
    assert!(close(recall_at_k(&scores, &targets, 4), 1.0));
    assert!(close(random_recall_at_k(4, 1), 0.25));
    assert!(close(random_recall_at_k(4, 10), 1.0));
}

#[test]
fn average_precision_and_map_hand_cases() {
    // Relevant at ranks 1 and 3 of 5: AP@5 = (1/1 + 2/3) / 2.
    let r = [true, false, true, false, false];
    assert!(close(
        average_precision_at_k(&r, 5).unwrap(),
        (1.0 + 2.0 / 3.0) / 2.0
    ));
    // AP@2 = (1/1) / min(2, 2).
    assert!(close(average_precision_at_k(&r, 2).unwrap(), 0.5));
    // AP@1 = 1 / min(1, 2).
    assert!(close(average_precision_at_k(&r, 1).unwrap(), 1.0));
    assert_eq!(average_precision_at_k(&[false, false], 2), None);
    // MAP over two queries: one as above (scores give that order), one with its only relevant
    // candidate ranked second (AP@5 = 1/2); a query without relevant candidates is skipped.
    let q = vec![
        (vec![0.9, 0.8, 0.7, 0.6, 0.5], r.to_vec()),
        (vec![0.1, 0.9, 0.3], vec![false, false, true]),
        (vec![0.1, 0.2], vec![false, false]),
    ];
    let (map, used) = map_at_k(&q, 5);
    assert_eq!(used, 2);
    assert!(close(map, ((1.0 + 2.0 / 3.0) / 2.0 + 0.5) / 2.0));
    // A random ranking's MAP lies between the worst and best orders.
    let rel = vec![
        vec![true, false, false, false],
        vec![false, true, true, false],
    ];
    let rnd = random_map_at_k(&rel, 4, 200, 1);
    assert!(rnd > 0.3 && rnd < 0.9, "{rnd}");
    assert_eq!(rnd, random_map_at_k(&rel, 4, 200, 1));
}

#[test]
fn label_overlap_rules() {
    let n = None;
    let (t, f) = (Some(true), Some(false));
    assert!(label_overlap(&[t, f, n], &[t, t, f]));
    assert!(!label_overlap(&[t, f, n], &[f, t, n]));
    // Both normal (no positive label; unknowns are not positive): relevant.
    assert!(label_overlap(&[f, f, n], &[n, f, f]));
    assert!(!label_overlap(&[f, f, f], &[f, t, f]));
}

#[test]
fn logistic_probe_separates_and_is_deterministic() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x: Vec<Vec<f64>> = (0..80)
        .map(|_| (0..3).map(|_| rng.random::<f64>()).collect())
        .collect();
    let y: Vec<bool> = x.iter().map(|r| r[0] + 0.5 * r[1] > 0.8).collect();
    let m = fit_logistic(&x, &y, 10.0, 50).unwrap();
    let s: Vec<f64> = x.iter().map(|r| m.predict(r)).collect();
    assert!(auc(&s, &y).unwrap() > 0.97);
    let m2 = fit_logistic(&x, &y, 10.0, 50).unwrap();
    assert_eq!(s, x.iter().map(|r| m2.predict(r)).collect::<Vec<_>>());
    assert!(fit_logistic(&x, &[true; 80], 1.0, 50).is_none());
}

fn python() -> Option<PathBuf> {
    mg3d_testkit::python_with(&["sklearn", "numpy"])
}

/// AUC (with many ties) and the logistic probe's probabilities equal scikit-learn's
/// `roc_auc_score` and `LogisticRegression(C)` on generated data.
#[test]
fn auc_and_probe_equal_scikit_learn() {
    let Some(py) = python() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut cases = vec![];
    for case in 0..5 {
        let n = 30 + 20 * case;
        let y: Vec<bool> = (0..n).map(|_| rng.random_bool(0.3)).collect();
        // Scores rounded to one decimal: many ties.
        let s: Vec<f64> = y
            .iter()
            .map(|&l| ((rng.random::<f64>() + if l { 0.4 } else { 0.0 }) * 10.0).round() / 10.0)
            .collect();
        let x: Vec<Vec<f64>> = y
            .iter()
            .map(|&l| {
                (0..4)
                    .map(|k| {
                        rng.random::<f64>() * (k + 1) as f64 + if l && k < 2 { 0.7 } else { 0.0 }
                    })
                    .collect()
            })
            .collect();
        cases.push((s, y, x));
    }
    let payload = serde_json::to_string(
        &cases
            .iter()
            .map(|(s, y, x)| serde_json::json!({"s": s, "y": y, "x": x}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let script = r#"
import json, sys
import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
out = []
for c in json.loads(sys.stdin.read()):
    y = np.array(c["y"], dtype=int)
    x = StandardScaler().fit_transform(np.array(c["x"]))
    m = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(x, y)
    out.append({"auc": roc_auc_score(y, c["s"]), "p": m.predict_proba(x)[:, 1].tolist()})
print(json.dumps(out))
"#;
    let mut child = Command::new(&py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(payload.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "scikit-learn script failed");
    let reference: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for ((s, y, x), r) in cases.iter().zip(&reference) {
        let ours = auc(s, y).unwrap();
        assert!(
            (ours - r["auc"].as_f64().unwrap()).abs() < 1e-12,
            "{ours} vs {r}"
        );
        let m = fit_logistic(x, y, 0.5, 100).unwrap();
        for (row, p) in x.iter().zip(r["p"].as_array().unwrap()) {
            let (a, b) = (m.predict(row), p.as_f64().unwrap());
            assert!((a - b).abs() < 1e-6, "probe {a} vs scikit-learn {b}");
        }
    }
}
