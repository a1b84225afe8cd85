//! DDRep (paper Alg. 1): the PF-ODE pulled back to diffrep parameters, discretised as DDIM
//! with separated noise, each step solved as least squares, with optional RePaint jumps.

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::solver::{fit, residual_rms, SolverConfig};
use super::{MethodOutput, StepDiagnostic};
use crate::diffrep::Diffrep;
use crate::diffusion::{
    chain_moves, check_ddim_settings, repaint_forward, separated_noise, DdimCoeffs, Denoiser, GuidedDenoiser, Level, Move, RepaintConfig,
};
use crate::noise::NoiseSource;
use crate::tensor_util::ensure_finite;

/// Which clean-image estimate a RePaint forward step uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RepaintX0 {
    /// The latest `x0_hat` (no extra evaluation).
    #[default]
    Latest,
    /// `D(x~_j)` evaluated at the lower level (one more NFE per forward step).
    Reevaluate,
}

fn d_steps() -> usize {
    50
}
fn d_eta() -> f64 {
    1.0
}
fn d_offset() -> usize {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DdrepConfig {
    /// DDIM steps.
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// DDIM stochasticity (the paper's value was lost; 1.0 by default).
    #[serde(default = "d_eta")]
    pub eta: f64,
    #[serde(default = "d_offset")]
    pub steps_offset: usize,
    #[serde(default)]
    pub solver: SolverConfig,
    #[serde(default)]
    pub repaint: Option<RepaintConfig>,
    #[serde(default)]
    pub repaint_x0: RepaintX0,
}

impl Default for DdrepConfig {
    fn default() -> Self {
        Self { steps: d_steps(), eta: d_eta(), steps_offset: d_offset(), solver: SolverConfig::default(), repaint: None, repaint_x0: RepaintX0::Latest }
    }
}

impl DdrepConfig {
    pub fn validate(&self) -> Result<()> {
        check_ddim_settings(self.steps, self.eta)?;
        self.solver.validate()
    }
}

/// Samples `n = seeds.len()` diffreps. Noise comes from `noise` in a fixed order: the
/// separated noise `eps` first, then one `z` per move (drawn even when eta = 0, so the
/// streams of different settings stay aligned).
pub fn ddrep<B, D, R>(
    den: &GuidedDenoiser<B::InnerBackend, D>,
    rep: &R,
    seeds: &[u64],
    cfg: &DdrepConfig,
    noise: &mut dyn NoiseSource<B::InnerBackend>,
    device: &B::Device,
) -> Result<MethodOutput<B::InnerBackend, R::Params>>
where
    B: AutodiffBackend,
    D: Denoiser<B::InnerBackend> + ?Sized,
    R: Diffrep<B>,
{
    cfg.validate()?;
    let schedule = den.schedule().clone();
    let levels = schedule.ddim_levels(cfg.steps, cfg.steps_offset)?;
    let moves = chain_moves(cfg.steps, cfg.repaint)?;
    let n = seeds.len();
    let [c, h, w] = rep.render_shape();
    let shape = [n, c, h, w];
    let inner_device = device;

    let mut params = rep.init(seeds, device)?;
    let mut xhat = rep.render(&params).inner();
    let mut eps = noise.normal(shape, inner_device)?;
    let mut x0_latest = None;
    let mut diagnostics = Vec::with_capacity(moves.len());

    for (step, mv) in moves.iter().enumerate() {
        let (kind, coeffs, t_level) = match *mv {
            Move::Reverse { from } => ("reverse", DdimCoeffs::new(&schedule, levels[from], levels[from + 1], cfg.eta), levels[from]),
            Move::Forward { from } => ("forward", DdimCoeffs::new(&schedule, levels[from - 1], levels[from], cfg.eta), levels[from - 1]),
        };
        let Level::Timestep(t) = t_level else { unreachable!("only the last level is Final") };
        let z = noise.normal(shape, inner_device)?;
        let target = match *mv {
            Move::Reverse { .. } => {
                let x_noisy = xhat.clone() + eps.clone().mul_scalar(coeffs.sigma_from);
                let x0_hat = den.x0(x_noisy, t)?;
                ensure_finite(&x0_hat, || format!("the denoiser output at step {step} (t = {t})"))?;
                let (target, eps_new) = separated_noise(xhat.clone(), eps.clone(), x0_hat.clone(), &coeffs, z);
                eps = eps_new;
                x0_latest = Some(x0_hat);
                target
            }
            Move::Forward { from } => {
                let x0 = match (cfg.repaint_x0, levels[from]) {
                    (RepaintX0::Reevaluate, Level::Timestep(tj)) => {
                        den.x0(xhat.clone() + eps.clone().mul_scalar(coeffs.sigma_to), tj)?
                    }
                    _ => x0_latest.clone().expect("a forward move follows a reverse move"),
                };
                let (target, eps_new) = repaint_forward(xhat.clone(), eps.clone(), x0, &coeffs, z);
                eps = eps_new;
                target
            }
        };
        params = fit(rep, params, target.clone(), &cfg.solver)?;
        xhat = rep.render(&params).inner();
        ensure_finite(&xhat, || format!("the diffrep render after the least-squares fit at step {step} (t = {t})"))?;
        diagnostics.push(StepDiagnostic {
            step,
            kind: kind.into(),
            t,
            sigma: coeffs.sigma_from,
            residual: residual_rms::<B>(xhat.clone(), target),
            nfe: den.nfe(),
            overlap: None,
        });
    }
    Ok(MethodOutput { params: Some(params), image: xhat, diagnostics, nfe: den.nfe() })
}
