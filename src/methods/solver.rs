//! The inner least-squares solve of DDRep (paper Eq. 5): `argmin_theta ||r(theta) - target||^2`.

use anyhow::{bail, Result};
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{backend::AutodiffBackend, Tensor};
use serde::{Deserialize, Serialize};

use crate::diffrep::Diffrep;
use crate::tensor_util::per_sample_mse;

fn d_adam_steps() -> usize {
    200
}
fn d_adam_lr() -> f64 {
    1e-3
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_eps() -> f64 {
    1e-8
}

/// How each step's least-squares problem is solved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SolverConfig {
    /// Adam from the warm start (the paper: 200 steps; its learning rate was lost).
    Adam {
        #[serde(default = "d_adam_steps")]
        steps: usize,
        #[serde(default = "d_adam_lr")]
        lr: f64,
        #[serde(default = "d_beta1")]
        beta_1: f64,
        #[serde(default = "d_beta2")]
        beta_2: f64,
        #[serde(default = "d_eps")]
        epsilon: f64,
    },
    /// Closed-form least squares, for linear diffreps (a test double for Adam).
    Exact,
    /// One step `theta += lr * J^T (target - r(theta))`: the pullback *without* the
    /// `(J^T J)^{-1}` metric term, i.e. the SJC/SDS direction with DDRep's step rule.
    Transpose {
        #[serde(default = "one")]
        lr: f64,
    },
}

fn one() -> f64 {
    1.0
}

impl Default for SolverConfig {
    fn default() -> Self {
        SolverConfig::Adam { steps: d_adam_steps(), lr: d_adam_lr(), beta_1: d_beta1(), beta_2: d_beta2(), epsilon: d_eps() }
    }
}

impl SolverConfig {
    pub fn validate(&self) -> Result<()> {
        match self {
            SolverConfig::Adam { steps, lr, beta_1, beta_2, epsilon } => {
                if *steps == 0 {
                    bail!("solver.steps must be at least 1");
                }
                crate::limits::at_most("solver.steps", *steps, crate::limits::MAX_ITERATIONS)?;
                if !(lr.is_finite() && *lr > 0.0) {
                    bail!("solver.lr must be positive, got {lr}");
                }
                if !(0.0..1.0).contains(beta_1) || !(0.0..1.0).contains(beta_2) || epsilon.is_nan() || *epsilon <= 0.0 {
                    bail!("solver betas must be in [0, 1) and epsilon positive");
                }
            }
            SolverConfig::Transpose { lr } if !(lr.is_finite() && *lr > 0.0) => bail!("solver.lr must be positive, got {lr}"),
            _ => {}
        }
        Ok(())
    }
}

/// `0.5 * sum over samples of mean squared error` (for multiview renders, `samples` < rows:
/// each sample's error is its mean over its views, Eq. 8): each sample's gradient is its own.
fn loss<B: AutodiffBackend>(render: Tensor<B, 4>, target: Tensor<B, 4>, samples: usize) -> Tensor<B, 1> {
    (render - target).powi_scalar(2).mean().mul_scalar(0.5 * samples as f64)
}

/// Fits `params` to `target`; returns the new parameters and the per-sample mean squared
/// residual of the final render.
pub fn fit<B: AutodiffBackend, R: Diffrep<B>>(
    rep: &R,
    params: R::Params,
    target: Tensor<B::InnerBackend, 4>,
    solver: &SolverConfig,
) -> Result<R::Params> {
    match solver {
        SolverConfig::Exact => match rep.exact_fit(&params, target) {
            Some(p) => Ok(p),
            None => bail!("the exact solver needs a linear diffrep; '{}' is not", rep.name()),
        },
        _ => {
            let samples = target.dims()[0];
            fit_with(&|p: &R::Params| rep.render(p), samples, params, target, solver)
        }
    }
}

/// The same fit for any render function of the parameters (e.g. a multiview diffrep rendering
/// a fixed batch of views): `render(params)` has `samples * V` rows, sample-major, and each
/// sample's loss is its mean squared error over its `V` views (paper Eq. 8). The exact solver
/// is not available here.
pub fn fit_with<B: AutodiffBackend, P: AutodiffModule<B> + Clone>(
    render: &dyn Fn(&P) -> Tensor<B, 4>,
    samples: usize,
    params: P,
    target: Tensor<B::InnerBackend, 4>,
    solver: &SolverConfig,
) -> Result<P> {
    let rows = target.dims()[0];
    if samples == 0 || rows % samples != 0 {
        bail!("a fit of {rows} rendered rows for {samples} samples");
    }
    match solver {
        SolverConfig::Exact => bail!("the exact solver needs a linear single-view diffrep"),
        SolverConfig::Adam { steps, lr, beta_1, beta_2, epsilon } => {
            let mut optim = AdamConfig::new()
                .with_beta_1(*beta_1 as f32)
                .with_beta_2(*beta_2 as f32)
                .with_epsilon(*epsilon as f32)
                .init::<B, P>();
            let target = Tensor::<B, 4>::from_inner(target);
            let mut params = params;
            for _ in 0..*steps {
                let l = loss(render(&params), target.clone(), samples);
                let grads = GradientsParams::from_grads(l.backward(), &params);
                params = optim.step(*lr, params, grads);
            }
            Ok(params)
        }
        SolverConfig::Transpose { lr } => {
            // Gradient of 0.5 ||r - target||^2 summed over pixels (averaged over a sample's
            // views) is -J^T (target - r).
            let views = (rows / samples) as f64;
            let target = Tensor::<B, 4>::from_inner(target);
            let r = render(&params);
            let l = (r - target).powi_scalar(2).sum().mul_scalar(0.5 / views);
            let grads = GradientsParams::from_grads(l.backward(), &params);
            let mut sgd = burn::optim::SgdConfig::new().init::<B, P>();
            Ok(sgd.step(*lr, params, grads))
        }
    }
}

/// Per-sample root-mean-square residual `||r(theta) - target|| / sqrt(D)`.
/// Refuses a non-finite fit residual of move `step`: the render and the target are finite
/// there, so their difference overflowed f32 and the diagnostics (and the fit) mean nothing.
pub fn check_residual(residual: &[f64], step: usize, t: usize) -> Result<()> {
    if residual.iter().any(|r| !r.is_finite()) {
        bail!(
            "non-finite residual after the least-squares fit at step {step} (t = {t}): the render or its target is beyond f32's range (a diverging fit, e.g. too large a learning rate, or too large a CFG scale)"
        );
    }
    Ok(())
}

pub fn residual_rms<B: AutodiffBackend>(render: Tensor<B::InnerBackend, 4>, target: Tensor<B::InnerBackend, 4>) -> Vec<f64> {
    per_sample_mse(render - target).into_iter().map(f64::sqrt).collect()
}
