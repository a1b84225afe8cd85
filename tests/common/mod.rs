//! Shared test helpers: closed-form laws of linear-Gaussian sampler recursions on a 1-D
//! Gaussian prior coordinate (ALGORITHM.md §7), and Monte-Carlo checks with error bars.
#![allow(dead_code)]

use ddrep::diffusion::{DdimCoeffs, Level, Move, Schedule};

/// Joint Gaussian law of the state `(xhat, eps, x0_latest)` of one prior coordinate.
#[derive(Clone, Debug)]
pub struct Law {
    pub mean: [f64; 3],
    pub cov: [[f64; 3]; 3],
}

/// How the diffrep follows its target along one coordinate.
#[derive(Clone, Copy, Debug)]
pub enum Update {
    /// Exact least squares (DDRep): `xhat' = target`.
    Exact,
    /// `theta += J^T (target - r)` with column scale `s`: `xhat' = xhat + s^2 (target - xhat)`.
    Transpose { scale: f64 },
}

impl Law {
    /// `r(theta_0) = 0`, `eps ~ N(0, 1)`.
    pub fn start() -> Self {
        Self { mean: [0.0; 3], cov: [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]] }
    }

    /// `state' = a state + b + noise`, noise independent with covariance `q`.
    fn affine(&self, a: [[f64; 3]; 3], b: [f64; 3], q: [[f64; 3]; 3]) -> Self {
        let mut mean = b;
        let mut cov = q;
        for i in 0..3 {
            mean[i] = (0..3).fold(mean[i], |m, k| m + a[i][k] * self.mean[k]);
            for j in 0..3 {
                for k in 0..3 {
                    for l in 0..3 {
                        cov[i][j] += a[i][k] * self.cov[k][l] * a[j][l];
                    }
                }
            }
        }
        Self { mean, cov }
    }

    pub fn var_xhat(&self) -> f64 {
        self.cov[0][0]
    }
}

/// Propagates the law of one coordinate (prior mean `m`, variance `v`) through a chain of
/// moves of DDRep's separated-noise recursion (§4, §5 with the latest x0).
pub fn propagate(schedule: &Schedule, levels: &[Level], moves: &[Move], eta: f64, m: f64, v: f64, update: Update) -> Law {
    let mut law = Law::start();
    for mv in moves {
        let (a, b, q) = match *mv {
            Move::Reverse { from } => {
                let c = DdimCoeffs::new(schedule, levels[from], levels[from + 1], eta);
                let sh = c.sigma_from;
                let shrink = v / (v + sh * sh);
                // x0_hat = (1 - shrink) m + shrink xhat + shrink sigma eps
                let x0 = ([shrink, shrink * sh, 0.0], (1.0 - shrink) * m);
                let k = c.dir / sh;
                // target = (1 - k) x0_hat + k xhat
                let tgt = ([(1.0 - k) * x0.0[0] + k, (1.0 - k) * x0.0[1], 0.0], (1.0 - k) * x0.1);
                let (row0, b0) = follow(update, tgt);
                let a = [row0, [0.0, c.dir / c.sigma_to, 0.0], x0.0];
                let mut q = [[0.0; 3]; 3];
                q[1][1] = (c.sig_eta / c.sigma_to).powi(2);
                (a, [b0, 0.0, x0.1], q)
            }
            Move::Forward { from } => {
                let c = DdimCoeffs::new(schedule, levels[from - 1], levels[from], eta);
                let k = c.repaint_k();
                // target = x0 + k (xhat - x0); eps' = (k sigma' eps + noise) / sigma
                let tgt = ([k, 0.0, 1.0 - k], 0.0);
                let (row0, b0) = follow(update, tgt);
                let a = [row0, [0.0, k * c.sigma_to / c.sigma_from, 0.0], [0.0, 0.0, 1.0]];
                let mut q = [[0.0; 3]; 3];
                q[1][1] = (c.repaint_noise() / c.sigma_from).powi(2);
                (a, [b0, 0.0, 0.0], q)
            }
        };
        law = law.affine(a, b, q);
    }
    law
}

fn follow(update: Update, target: ([f64; 3], f64)) -> ([f64; 3], f64) {
    match update {
        Update::Exact => target,
        Update::Transpose { scale } => {
            let s2 = scale * scale;
            let mut row = target.0.map(|x| s2 * x);
            row[0] += 1.0 - s2;
            (row, s2 * target.1)
        }
    }
}

/// Sample mean and unbiased variance.
pub fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    (m, x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0))
}

/// Asserts sample mean and variance agree with `(mean, var)` within `z` standard errors
/// (SE of the mean `sqrt(var/n)`, of the variance `var sqrt(2/(n-1))` for Gaussian data).
pub fn assert_law(what: &str, x: &[f64], mean: f64, var: f64, z: f64) {
    let n = x.len() as f64;
    let (m, v) = mean_var(x);
    let se_m = (var / n).sqrt();
    let se_v = var * (2.0 / (n - 1.0)).sqrt();
    assert!((m - mean).abs() <= z * se_m, "{what}: sample mean {m:.5} vs closed form {mean:.5} (SE {se_m:.5}, allowed {z} SE)");
    assert!((v - var).abs() <= z * se_v, "{what}: sample variance {v:.5} vs closed form {var:.5} (SE {se_v:.5}, allowed {z} SE)");
}

/// Path of `../shared` when the CI sets `DDREP_SHARED`; tests that need it print a skip.
pub fn shared_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("DDREP_SHARED").map(Into::into)
}

/// A failed `ddrep` run printed exactly one `error: ...` line containing `needle`, no panic.
pub fn assert_one_line_error(o: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "'{needle}' not in: {err}");
}
