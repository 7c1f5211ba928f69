//! Each MG-3D objective on tiny tensors against values computed by hand or in f64.

use mg3d_train::losses::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

fn t2(v: &[f32], r: i64, c: i64) -> Tensor {
    Tensor::from_slice(v).view([r, c])
}

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "{a} vs {b}");
}

#[test]
fn info_nce_matches_hand_values() {
    // Orthonormal pairs: logits = I / 0.1, each row's CE = ln(1 + e^-10).
    let a = t2(&[1.0, 0.0, 0.0, 1.0], 2, 2);
    let l = info_nce(&a, &a, 0.1).double_value(&[]);
    close(l, (1.0f64 + (-10.0f64).exp()).ln(), 1e-6);
    // A general case in f64: a = [[1,2],[3,1]], b = [[2,1],[0,1]].
    let av = [[1.0f64, 2.0], [3.0, 1.0]];
    let bv = [[2.0f64, 1.0], [0.0, 1.0]];
    let norm = |v: [f64; 2]| {
        let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
        [v[0] / n, v[1] / n]
    };
    let (an, bn) = ([norm(av[0]), norm(av[1])], [norm(bv[0]), norm(bv[1])]);
    let s = |i: usize, j: usize| (an[i][0] * bn[j][0] + an[i][1] * bn[j][1]) / 0.1;
    let ce = |row: [f64; 2], k: usize| -> f64 {
        let m = row[0].max(row[1]);
        let lse = m + ((row[0] - m).exp() + (row[1] - m).exp()).ln();
        lse - row[k]
    };
    let l_ab = (ce([s(0, 0), s(0, 1)], 0) + ce([s(1, 0), s(1, 1)], 1)) / 2.0;
    let l_ba = (ce([s(0, 0), s(1, 0)], 0) + ce([s(0, 1), s(1, 1)], 1)) / 2.0;
    let got = info_nce(
        &t2(&[1.0, 2.0, 3.0, 1.0], 2, 2),
        &t2(&[2.0, 1.0, 0.0, 1.0], 2, 2),
        0.1,
    )
    .double_value(&[]);
    close(got, (l_ab + l_ba) / 2.0, 1e-5);
}

#[test]
fn cube_mask_and_mim_loss() {
    // 32×32×16 with 16³ cubes: 2×2×1 = 4 cubes, ratio 0.5 -> 2 cubes = half the voxels.
    let m = cube_mask([32, 32, 16], [16, 16, 16], 0.5, 7);
    assert_eq!(m.size(), [1, 1, 32, 32, 16]);
    close(m.mean(Kind::Float).double_value(&[]), 0.5, 1e-9);
    assert!(
        cube_mask([32, 32, 16], [16, 16, 16], 0.5, 7).equal(&m),
        "seeded"
    );
    // Each cube is all 0 or all 1.
    for (z, y) in [(0, 0), (0, 16), (16, 0), (16, 16)] {
        let c = m.narrow(2, z, 16).narrow(3, y, 16);
        let s = c.sum(Kind::Float).double_value(&[]);
        assert!(s == 0.0 || s == 16.0 * 16.0 * 16.0, "{s}");
    }
    // Partial cubes at the border: 20 -> 2 cubes per axis.
    let p = cube_mask([20, 16, 16], [16, 16, 16], 1.0, 1);
    close(p.mean(Kind::Float).double_value(&[]), 1.0, 0.0);
    // MSE over all voxels of the masked difference, / ratio.
    let pred = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([1, 1, 1, 2, 2]);
    let target = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 4.0]).view([1, 1, 1, 2, 2]);
    let mask = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 0.0]).view([1, 1, 1, 2, 2]);
    // (1² + 0 + 2² + 0) / 4 / 0.5 = 2.5
    close(
        mim_loss(&pred, &target, &mask, 0.5).double_value(&[]),
        2.5,
        1e-6,
    );
}

#[test]
fn mlm_loss_ignores_unmasked_positions() {
    // B=1, L=3, V=2; only position 1 is labelled (class 1).
    let logits = Tensor::from_slice(&[5.0f32, -5.0, 0.0, 1.0, 3.0, 3.0]).view([1, 3, 2]);
    let labels = Tensor::from_slice(&[-100i64, 1, -100]).view([1, 3]);
    let want = (1.0f64.exp() + 1.0).ln() - 1.0; // -log softmax([0, 1])[1]
    close(mlm_loss(&logits, &labels).double_value(&[]), want, 1e-6);
}

#[test]
fn whole_word_masking_masks_words_together() {
    // [CLS] plan ##ning is good [SEP] [PAD]
    let ids = [101i64, 10, 11, 12, 13, 102, 0];
    let ws = [0i8, 1, 0, 1, 1, 0, 0];
    let att = [1i8, 1, 1, 1, 1, 1, 0];
    let special = |x: i64| x == 101 || x == 102 || x == 0;
    for seed in 0..200u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (out, labels) = whole_word_mask(&ids, &ws, &att, &special, 103, 30000, 0.15, &mut rng);
        // Specials and padding never masked; "plan ##ning" labelled together or not at all.
        for p in [0usize, 5, 6] {
            assert_eq!(labels[p], -100);
            assert_eq!(out[p], ids[p]);
        }
        assert_eq!(
            labels[1] == -100,
            labels[2] == -100,
            "seed {seed}: {labels:?}"
        );
        assert!(labels.iter().any(|&l| l != -100), "at least one word");
        for p in 0..ids.len() {
            if labels[p] != -100 {
                assert_eq!(labels[p], ids[p]);
            }
        }
        let mut again = ChaCha8Rng::seed_from_u64(seed);
        assert_eq!(
            whole_word_mask(&ids, &ws, &att, &special, 103, 30000, 0.15, &mut again),
            (out, labels)
        );
    }
}

#[test]
fn clause_gather_and_sal() {
    // B=1, L=4, d=2; clauses: -1, 0, 0, 1.
    let tok = Tensor::from_slice(&[9.0f32, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).view([1, 4, 2]);
    let cl = Tensor::from_slice(&[-1i64, 0, 0, 1]).view([1, 4]);
    let (f, m) = clause_gather(&tok, &cl);
    assert_eq!(f.size(), [1, 2, 2]);
    let v: Vec<f32> = f.view([-1]).try_into().unwrap();
    assert_eq!(v, [2.0, 3.0, 5.0, 6.0]);
    assert_eq!(
        m.to_kind(Kind::Int64)
            .view([-1])
            .try_into()
            .unwrap_or(vec![0i64]),
        [1, 1]
    );
    // SAL: r = [[1,0],[0,1]], t = [[1,1],[0,1]] -> (1 - 1/√2) + (1 - 1) = 0.2929; × 0.1.
    let r = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([1, 2, 2]);
    let t = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 1.0]).view([1, 2, 2]);
    let mask = Tensor::from_slice(&[true, true]).view([1, 2]);
    close(
        sal_loss(&r, &t, &mask, 0.1).double_value(&[]),
        0.1 * (1.0 - 1.0 / 2f64.sqrt()),
        1e-6,
    );
}

#[test]
fn ssm_matches_the_shared_f64_definition() {
    // B=3 reports, S=2 clauses (report 2 has one), text d=3, visual k=2.
    let text: [[[f32; 3]; 2]; 3] = [
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        [[1.0, 0.1, 0.0], [0.0, 0.0, 1.0]],
        [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]],
    ];
    let vis: [[[f32; 2]; 2]; 3] = [
        [[1.0, 0.2], [0.3, 1.0]],
        [[0.9, 0.1], [-1.0, 0.5]],
        [[0.2, 0.8], [0.0, 0.0]],
    ];
    let n_clauses = [2usize, 2, 1];
    let flat_t: Vec<f32> = text.iter().flatten().flatten().copied().collect();
    let flat_v: Vec<f32> = vis.iter().flatten().flatten().copied().collect();
    let mask = Tensor::from_slice(&[true, true, true, true, true, false]).view([3, 2]);
    let got = ssm_loss(
        &Tensor::from_slice(&flat_t).view([3, 2, 3]),
        &Tensor::from_slice(&flat_v).view([3, 2, 2]),
        &mask,
    )
    .double_value(&[]);
    // Reference: mg3d_train::clause_targets in f64 per pair, then the mean over pairs.
    let mut want = 0.0;
    let mut pairs = 0;
    for i in 0..3 {
        for j in i + 1..3 {
            let ti: Vec<f32> = text[i][..n_clauses[i]].iter().flatten().copied().collect();
            let tj: Vec<f32> = text[j][..n_clauses[j]].iter().flatten().copied().collect();
            let targets = mg3d_train::clause_targets::matching_targets(&ti, &tj, 3);
            let vi: Vec<f32> = vis[i][..n_clauses[i]].iter().flatten().copied().collect();
            let vj: Vec<f32> = vis[j][..n_clauses[j]].iter().flatten().copied().collect();
            let p = mg3d_train::clause_targets::clause_cosine(&vi, &vj, 2);
            want += mg3d_train::clause_targets::matching_loss(&p, &targets);
            pairs += 1;
        }
    }
    close(got, want / pairs as f64, 1e-5);
    // A batch of one has no pairs.
    let one = ssm_loss(
        &Tensor::from_slice(&flat_t[..6]).view([1, 2, 3]),
        &Tensor::from_slice(&flat_v[..4]).view([1, 2, 2]),
        &mask.narrow(0, 0, 1),
    );
    assert_eq!(one.double_value(&[]), 0.0);
}

#[test]
fn clause_targets_match_hand_values() {
    // a: two clauses, b: two clauses, dim 2.
    let a = [1.0f32, 0.0, 1.0, 1.0];
    let b = [1.0f32, 0.0, 0.0, 1.0];
    let t = mg3d_train::clause_targets::matching_targets(&a, &b, 2);
    let r = std::f32::consts::FRAC_1_SQRT_2;
    assert_eq!((t.rows, t.cols), (2, 2));
    let want = [1.0, 0.0, r, r];
    for (x, y) in t.similarity.iter().zip(want) {
        assert!((x - y).abs() < 1e-6);
    }
    assert_eq!(t.positive, [true, false, false, false]);
    assert_eq!(t.negative, [false, true, false, false]);
    // P = [0.5, 0.2, 0.9, 0.1]: |0.5-1| + |0.2-0| + 0 + 0 over 4.
    let loss = mg3d_train::clause_targets::matching_loss(&[0.5, 0.2, 0.9, 0.1], &t);
    assert!((loss - 0.7 / 4.0).abs() < 1e-9);
}
