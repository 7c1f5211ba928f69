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
    // Parameters θ = [w (d), b]; the last coordinate is not penalised.
    let p = d + 1;
    let mut theta = vec![0.0; p];
    for _ in 0..iterations {
        let mut grad = vec![0.0; p];
        let mut hess = vec![0.0; p * p];
        for k in 0..d {
            grad[k] = theta[k];
            hess[k * p + k] = 1.0;
        }
        for (row, &label) in z.iter().zip(y) {
            let t = if label { 1.0 } else { 0.0 };
            let f = dot(&theta[..d], row) + theta[d];
            let prob = sigmoid(f);
            let g = c * (prob - t);
            let h = c * (prob * (1.0 - prob)).max(1e-10);
            for a in 0..p {
                let xa = if a < d { row[a] } else { 1.0 };
                grad[a] += g * xa;
                for b2 in a..p {
                    let xb = if b2 < d { row[b2] } else { 1.0 };
                    hess[a * p + b2] += h * xa * xb;
                }
            }
        }
        for a in 0..p {
            for b2 in 0..a {
                hess[a * p + b2] = hess[b2 * p + a];
            }
        }
        let Some(step) = solve_spd(&mut hess, &grad, p) else {
            break;
        };
        let mut largest: f64 = 0.0;
        for (t, s) in theta.iter_mut().zip(&step) {
            *t -= s;
            largest = largest.max(s.abs());
        }
        if largest < 1e-8 {
            break;
        }
    }
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

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(f: f64) -> f64 {
    if f >= 0.0 {
        1.0 / (1.0 + (-f).exp())
    } else {
        let e = f.exp();
        e / (1.0 + e)
    }
}

/// Solves `A x = b` for a symmetric positive definite `A` (row-major n×n, overwritten by its
/// Cholesky factor); `None` when `A` is not positive definite.
fn solve_spd(a: &mut [f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut s = a[j * n + j];
        for k in 0..j {
            s -= a[j * n + k] * a[j * n + k];
        }
        if s <= 0.0 || !s.is_finite() {
            return None;
        }
        let l = s.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut t = a[i * n + j];
            for k in 0..j {
                t -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = t / l;
        }
    }
    let mut y = b.to_vec();
    for i in 0..n {
        for k in 0..i {
            y[i] -= a[i * n + k] * y[k];
        }
        y[i] /= a[i * n + i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= a[k * n + i] * y[k];
        }
        y[i] /= a[i * n + i];
    }
    Some(y)
}
