//! The linear probe: L2-regularised logistic regression on frozen features, fitted by Newton's
//! method (IRLS) on standardised features. Deterministic (no random initialisation, no sampling).
//!
//! Objective (scikit-learn's `LogisticRegression(C)` with an unpenalised intercept):
//! `min_w,b  0.5 |w|² + C Σ_i log(1 + exp(-y_i (w·x_i + b)))`, y in {-1, +1}.

/// A fitted binary logistic regression.
#[derive(Debug, Clone)]
pub struct Logistic {
    mean: Vec<f64>,
    scale: Vec<f64>,
    w: Vec<f64>,
    b: f64,
}

/// Fits a probe on rows `x` (each of equal width) with binary `y`; `c` is the inverse
/// regularisation strength. Returns `None` unless both classes occur.
pub fn fit_logistic(x: &[Vec<f64>], y: &[bool], c: f64, iterations: usize) -> Option<Logistic> {
    let n = x.len();
    if n == 0 || y.iter().all(|&v| v) || y.iter().all(|&v| !v) {
        return None;
    }
    let d = x[0].len();
    let mut mean = vec![0.0; d];
    for r in x {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v / n as f64;
        }
    }
    let mut scale = vec![0.0; d];
    for r in x {
        for k in 0..d {
            scale[k] += (r[k] - mean[k]).powi(2) / n as f64;
        }
    }
    for s in scale.iter_mut() {
        *s = if *s > 1e-12 { s.sqrt() } else { 1.0 };
    }
    let z: Vec<Vec<f64>> = x
        .iter()
        .map(|r| (0..d).map(|k| (r[k] - mean[k]) / scale[k]).collect())
        .collect();
    // Parameters θ = [w (d), b]; the last coordinate is not penalised. Newton steps in f64 on
    // libtorch (the Hessian is Zᵀ diag(h) Z + I, formed by one matrix product).
    let p = d + 1;
    let cpu = (tch::Kind::Double, tch::Device::Cpu);
    let flat: Vec<f64> = z
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::once(1.0)))
        .collect();
    let zt = tch::Tensor::from_slice(&flat).view([n as i64, p as i64]);
    let t = tch::Tensor::from_slice(
        &y.iter()
            .map(|&v| f64::from(u8::from(v)))
            .collect::<Vec<_>>(),
    );
    let mut penalty = vec![1.0; p];
    penalty[d] = 0.0;
    let penalty = tch::Tensor::from_slice(&penalty);
    let mut theta = tch::Tensor::zeros([p as i64], cpu);
    for _ in 0..iterations {
        let prob = zt.mv(&theta).sigmoid();
        let grad = &theta * &penalty + zt.tr().mv(&((&prob - &t) * c));
        let h = (&prob * (&prob * -1.0 + 1.0)).clamp_min(1e-10) * c;
        let hess = zt.tr().matmul(&(&zt * h.unsqueeze(1))) + penalty.diag(0);
        let Ok(l) = hess.f_linalg_cholesky(false) else {
            break;
        };
        let step = grad.unsqueeze(1).cholesky_solve(&l, false).squeeze_dim(1);
        if step.isfinite().all().int64_value(&[]) == 0 {
            break;
        }
        theta -= &step;
        if step.abs().max().double_value(&[]) < 1e-8 {
            break;
        }
    }
    let theta: Vec<f64> = theta.try_into().unwrap_or_else(|_| vec![0.0; p]);
    Some(Logistic {
        mean,
        scale,
        w: theta[..d].to_vec(),
        b: theta[d],
    })
}

impl Logistic {
    /// Probability of the positive class for one row.
    pub fn predict(&self, row: &[f64]) -> f64 {
        let f: f64 = row
            .iter()
            .enumerate()
            .map(|(k, v)| (v - self.mean[k]) / self.scale[k] * self.w[k])
            .sum::<f64>()
            + self.b;
        sigmoid(f)
    }
}

fn sigmoid(f: f64) -> f64 {
    if f >= 0.0 {
        1.0 / (1.0 + (-f).exp())
    } else {
        let e = f.exp();
        e / (1.0 + e)
    }
}
