//! Fusion layers and heads: the gated cross formula against an element-wise f64 computation,
//! masks, shapes.

use mg3d_train::fusion::*;
use tch::{Device, Kind, Tensor, nn};

fn v(t: &Tensor) -> Vec<f64> {
    t.to_kind(Kind::Double).view([-1]).try_into().unwrap()
}

#[test]
fn gated_cross_matches_the_formula() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let h = 4;
    let layer = GatedCross::new(&vs.root(), h);
    let a = Tensor::randn([1, 3, h], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([1, 2, h], (Kind::Float, Device::Cpu));
    let (a2, b2) = layer.forward(&a, &b);
    assert_eq!(a2.size(), [1, 3, h]);
    assert_eq!(b2.size(), [1, 2, h]);
    // f64 reference: A'_i = v_A(a_i) * mean_j sigmoid(q_A(a_i) . k_B(b_j) / sqrt(h)).
    let vars = vs.variables();
    let lin = |name: &str, x: &Tensor| -> Tensor {
        x.matmul(&vars[&format!("{name}.weight")].transpose(0, 1)) + &vars[&format!("{name}.bias")]
    };
    let (qa, vb_) = (lin("query_a", &a), lin("value_a", &a));
    let kb = lin("key_b", &b);
    let (q, k, val) = (v(&qa), v(&kb), v(&vb_));
    let got = v(&a2);
    for i in 0..3 {
        let mut g = 0.0;
        for j in 0..2 {
            let dot: f64 = (0..4).map(|d| q[i * 4 + d] * k[j * 4 + d]).sum();
            g += 1.0 / (1.0 + (-dot / 2.0).exp());
        }
        g /= 2.0;
        for d in 0..4 {
            assert!((got[i * 4 + d] - val[i * 4 + d] * g).abs() < 1e-5);
        }
    }
}

#[test]
fn pools_heads_and_decoder_shapes() {
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root();
    let h = 16;
    let x = Tensor::randn([2, 5, h], (Kind::Float, Device::Cpu));
    let mask = Tensor::from_slice(&[true, true, true, false, false, true, true, true, true, true])
        .view([2, 5]);
    let pool = SentenceAttentionPool::new(&(&p / "pool"), h, 4);
    let out = pool.forward(&x, &mask);
    assert_eq!(out.size(), [2, h]);
    // Padding does not matter: changing masked clauses leaves the pooled vector unchanged.
    let x2 = x.copy();
    let _ = x2.get(0).narrow(0, 3, 2).fill_(7.0);
    assert!(pool.forward(&x2, &mask).allclose(&out, 1e-5, 1e-6, false));
    let tp = TokenPooler::new(&(&p / "tp"), 5, h);
    assert_eq!(tp.forward(&x).size(), [2, h]);
    let sp = ClauseMlp::new(&(&p / "sp"), h, 12, 8, true, true, true);
    let y = sp.forward(&x, &mask);
    assert_eq!(y.size(), [2, 5, 8]);
    assert!(y.abs().max().double_value(&[]) <= 1.0);
    let gate = UniGate::new(&(&p / "gate"), h);
    assert_eq!(
        gate.forward(&x.get(0).get(0).unsqueeze(0), &x.narrow(0, 0, 1))
            .size(),
        [1, 5, h]
    );
    let head = ContrastHead::new(&(&p / "head"), 2 * h, h);
    assert_eq!(
        head.forward(&Tensor::randn([2, 2 * h], (Kind::Float, Device::Cpu)))
            .size(),
        [2, h]
    );
    let dec = MimDecoder::new(&(&p / "dec"), h, 3, 4);
    let img = Tensor::randn([2, h, 2, 2, 2], (Kind::Float, Device::Cpu));
    assert_eq!(dec.forward(&img).size(), [2, 1, 16, 16, 16]);
    // masked mean / batch norm ignore padding.
    let mm = masked_mean(&x, &mask);
    let want = x
        .get(0)
        .narrow(0, 0, 3)
        .mean_dim([0i64].as_slice(), false, Kind::Float);
    assert!(mm.get(0).allclose(&want, 1e-5, 1e-6, false));
}
