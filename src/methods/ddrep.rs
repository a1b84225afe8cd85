//! DDRep (paper Alg. 1): the PF-ODE pulled back to diffrep parameters, discretised as DDIM
//! with separated noise, each step solved as least squares, with optional RePaint jumps.

use anyhow::Result;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::solver::{check_residual, fit, residual_rms, SolverConfig};
use super::{MethodOutput, StepDiagnostic};
use crate::diffrep::Diffrep;
use crate::diffusion::{
    chain_moves, check_ddim_settings, repaint_forward, separated_noise, DdimCoeffs, Denoiser, GuidedDenoiser, Level, Move, RepaintConfig, Schedule,
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

/// The regression target of one move of the chain, with what the diagnostics record.
pub(super) struct MoveTarget<B: Backend> {
    pub kind: &'static str,
    pub t: usize,
    /// sigma at the move's noisier level.
    pub sigma: f64,
    pub target: Tensor<B, 4>,
}

/// DDRep's chain of DDIM (and RePaint) moves, shared by the single-view and the multiview
/// sampler: it carries the separated noise `eps` and the latest `x0_hat` from move to move,
/// and turns the current render into the next least-squares target.
pub(super) struct PullbackChain<B: Backend> {
    schedule: Schedule,
    levels: Vec<Level>,
    pub moves: Vec<Move>,
    eta: f64,
    repaint_x0: RepaintX0,
    eps: Tensor<B, 4>,
    x0_latest: Option<Tensor<B, 4>>,
}

impl<B: Backend> PullbackChain<B> {
    /// `eps`: the separated noise, drawn before any move.
    pub fn new(schedule: &Schedule, cfg: &DdrepConfig, eps: Tensor<B, 4>) -> Result<Self> {
        cfg.validate()?;
        let levels = schedule.ddim_levels(cfg.steps, cfg.steps_offset)?;
        let moves = chain_moves(cfg.steps, cfg.repaint)?;
        Ok(Self { schedule: schedule.clone(), levels, moves, eta: cfg.eta, repaint_x0: cfg.repaint_x0, eps, x0_latest: None })
    }

    /// Move `step` from the render `xhat` with fresh noise `z`: a reverse move denoises
    /// `xhat + sigma eps` (one NFE) and takes the separated-noise DDIM step; a forward move
    /// re-noises by RePaint's forward step. Returns the target the diffrep is fitted to.
    pub fn pullback_step<D: Denoiser<B> + ?Sized>(&mut self, step: usize, den: &GuidedDenoiser<B, D>, xhat: &Tensor<B, 4>, z: Tensor<B, 4>) -> Result<MoveTarget<B>> {
        let (levels, eta) = (&self.levels, self.eta);
        let (kind, coeffs, t_level) = match self.moves[step] {
            Move::Reverse { from } => ("reverse", DdimCoeffs::new(&self.schedule, levels[from], levels[from + 1], eta), levels[from]),
            Move::Forward { from } => ("forward", DdimCoeffs::new(&self.schedule, levels[from - 1], levels[from], eta), levels[from - 1]),
        };
        let Level::Timestep(t) = t_level else { unreachable!("only the last level is Final") };
        let (target, eps) = match self.moves[step] {
            Move::Reverse { .. } => {
                let x0_hat = den.x0(xhat.clone() + self.eps.clone().mul_scalar(coeffs.sigma_from), t)?;
                ensure_finite(&x0_hat, || format!("the denoiser output at step {step} (t = {t})"))?;
                let out = separated_noise(xhat.clone(), self.eps.clone(), x0_hat.clone(), &coeffs, z);
                self.x0_latest = Some(x0_hat);
                out
            }
            Move::Forward { from } => {
                let x0 = match (self.repaint_x0, levels[from]) {
                    (RepaintX0::Reevaluate, Level::Timestep(tj)) => den.x0(xhat.clone() + self.eps.clone().mul_scalar(coeffs.sigma_to), tj)?,
                    _ => self.x0_latest.clone().expect("a forward move follows a reverse move"),
                };
                repaint_forward(xhat.clone(), self.eps.clone(), x0, &coeffs, z)
            }
        };
        // A finite x0 can still give an infinite target (a huge CFG scale overflows f32 in the
        // step); Adam's normalised updates would fit it without a NaN ever showing.
        ensure_finite(&target, || format!("the pulled-back target of {kind} move {step} (t = {t})"))?;
        self.eps = eps;
        Ok(MoveTarget { kind, t, sigma: coeffs.sigma_from, target })
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
    let [c, h, w] = rep.render_shape();
    let shape = [seeds.len(), c, h, w];
    let mut params = rep.init(seeds, device)?;
    let mut xhat = rep.render(&params).inner();
    let mut chain = PullbackChain::new(den.schedule(), cfg, noise.normal(shape, device)?)?;
    let mut diagnostics = Vec::with_capacity(chain.moves.len());
    for step in 0..chain.moves.len() {
        let z = noise.normal(shape, device)?;
        let MoveTarget { kind, t, sigma, target } = chain.pullback_step(step, den, &xhat, z)?;
        params = fit(rep, params, target.clone(), &cfg.solver)?;
        xhat = rep.render(&params).inner();
        ensure_finite(&xhat, || format!("the diffrep render after the least-squares fit at step {step} (t = {t})"))?;
        let residual = residual_rms::<B>(xhat.clone(), target);
        check_residual(&residual, step, t)?;
        diagnostics.push(StepDiagnostic { step, kind: kind.into(), t, sigma, residual, nfe: den.nfe(), overlap: None });
    }
    Ok(MethodOutput { params: Some(params), image: xhat, diagnostics, nfe: den.nfe() })
}
