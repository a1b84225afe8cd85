//! Score Distillation Sampling (DreamFusion, Poole et al. 2022): descent along
//! `w(t) (eps_hat(x_t) - n) J`, `t` uniform in a range, `w(t) = 1 - abar_t`.

use anyhow::{bail, Result};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{backend::AutodiffBackend, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{MethodOutput, StepDiagnostic};
use crate::diffrep::Diffrep;
use crate::diffusion::denoiser::row_scalars;
use crate::diffusion::{Denoiser, GuidedDenoiser, Level};
use crate::noise::{rng_for, NoiseSource};
use crate::tensor_util::{ensure_finite, per_sample_mse};

fn d_iters() -> usize {
    3000
}
fn d_lr() -> f64 {
    0.01
}
fn d_tmin() -> f64 {
    0.02
}
fn d_tmax() -> f64 {
    0.98
}
fn d_log() -> usize {
    100
}

/// DreamFusion's weighting of the SDS gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SdsWeighting {
    /// `w(t) = 1 - abar_t` (DreamFusion).
    #[default]
    OneMinusAbar,
    /// `w(t) = 1`.
    Uniform,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdsConfig {
    #[serde(default = "d_iters")]
    pub iters: usize,
    /// Adam learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// `t` is drawn uniformly from `[t_min, t_max]` as fractions of the training steps.
    #[serde(default = "d_tmin")]
    pub t_min: f64,
    #[serde(default = "d_tmax")]
    pub t_max: f64,
    #[serde(default)]
    pub weighting: SdsWeighting,
    #[serde(default = "d_log")]
    pub log_every: usize,
}

impl Default for SdsConfig {
    fn default() -> Self {
        Self { iters: d_iters(), lr: d_lr(), t_min: d_tmin(), t_max: d_tmax(), weighting: SdsWeighting::default(), log_every: d_log() }
    }
}

pub fn sds<B, D, R>(
    den: &GuidedDenoiser<B::InnerBackend, D>,
    rep: &R,
    seeds: &[u64],
    cfg: &SdsConfig,
    noise: &mut dyn NoiseSource<B::InnerBackend>,
    device: &B::Device,
) -> Result<MethodOutput<B::InnerBackend, R::Params>>
where
    B: AutodiffBackend,
    D: Denoiser<B::InnerBackend> + ?Sized,
    R: Diffrep<B>,
{
    if cfg.iters == 0 {
        bail!("sds.iters must be at least 1");
    }
    crate::limits::at_most("sds.iters", cfg.iters, crate::limits::MAX_ITERATIONS)?;
    if !(0.0 <= cfg.t_min && cfg.t_min <= cfg.t_max && cfg.t_max <= 1.0) {
        bail!("sds needs 0 <= t_min <= t_max <= 1, got {} and {}", cfg.t_min, cfg.t_max);
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        bail!("sds.lr must be positive, got {}", cfg.lr);
    }
    let schedule = den.schedule().clone();
    let t_train = schedule.num_train_timesteps();
    let lo = ((cfg.t_min * t_train as f64) as usize).min(t_train - 1);
    let hi = ((cfg.t_max * t_train as f64) as usize).clamp(lo, t_train - 1);
    let n = seeds.len();
    let [c, h, w] = rep.render_shape();
    let mut rngs: Vec<_> = seeds.iter().map(|&s| rng_for(s, "sds")).collect();
    let mut params = rep.init(seeds, device)?;
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init::<B, R::Params>();
    let mut diagnostics = Vec::new();
    for it in 0..cfg.iters {
        let ts: Vec<usize> = rngs.iter_mut().map(|r| r.random_range(lo..=hi)).collect();
        let abar: Vec<f64> = ts.iter().map(|&t| schedule.abar(Level::Timestep(t))).collect();
        let s: Vec<f64> = abar.iter().map(|a| a.sqrt()).collect();
        let sn: Vec<f64> = abar.iter().map(|a| (1.0 - a).sqrt()).collect();
        let wt: Vec<f64> = match cfg.weighting {
            SdsWeighting::OneMinusAbar => abar.iter().map(|a| 1.0 - a).collect(),
            SdsWeighting::Uniform => vec![1.0; n],
        };
        let y = rep.render(&params);
        let z = noise.normal([n, c, h, w], device)?;
        let x_t = y.clone().inner() * row_scalars(&s, device) + z.clone() * row_scalars(&sn, device);
        let eps_hat = den.eps(x_t, &ts)?;
        ensure_finite(&eps_hat, || format!("the denoiser output at SDS iteration {it}"))?;
        let g = (eps_hat - z) * row_scalars(&wt, device);
        if cfg.log_every > 0 && (it % cfg.log_every == 0 || it + 1 == cfg.iters) {
            let residual = per_sample_mse(g.clone()).into_iter().map(f64::sqrt).collect();
            let sigma = schedule.sigma(Level::Timestep(ts[0]));
            diagnostics.push(StepDiagnostic { step: it, kind: "iteration".into(), t: ts[0], sigma, residual, nfe: den.nfe(), overlap: None });
        }
        // Descent on <y, g> with g held fixed: the SDS gradient is g J.
        let l = (y * Tensor::<B, 4>::from_inner(g)).sum();
        let grads = GradientsParams::from_grads(l.backward(), &params);
        params = optim.step(cfg.lr, params, grads);
    }
    let image = rep.render(&params).inner();
    ensure_finite(&image, || "the final SDS render".into())?;
    Ok(MethodOutput { params: Some(params), image, diagnostics, nfe: den.nfe() })
}
