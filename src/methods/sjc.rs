//! Score Jacobian Chaining (Wang et al. 2022) as its authors run it (ALGORITHM.md §6):
//! gradient ascent on the diffrep along `J^T (D(y + sigma n) - y) / sigma`, Adamax.

use anyhow::{bail, Result};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::adamax::Adamax;
use super::{MethodOutput, StepDiagnostic};
use crate::diffrep::Diffrep;
use crate::diffusion::denoiser::row_scalars;
use crate::diffusion::{Denoiser, GuidedDenoiser};
use crate::noise::{rng_for, NoiseSource};
use crate::tensor_util::{ensure_finite, per_sample_mse};

fn d_iters() -> usize {
    3000
}
fn d_lr() -> f64 {
    0.05
}
fn d_skip_high() -> usize {
    30
}
fn d_skip_low() -> usize {
    10
}
fn d_log() -> usize {
    100
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SjcConfig {
    /// Ascent iterations (paper: 3000 for image SIRENs, 10 000 for NeRFs).
    #[serde(default = "d_iters")]
    pub iters: usize,
    /// Adamax learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Largest training sigmas skipped.
    #[serde(default = "d_skip_high")]
    pub skip_high: usize,
    /// Smallest training sigmas skipped.
    #[serde(default = "d_skip_low")]
    pub skip_low: usize,
    /// Log a diagnostic every this many iterations.
    #[serde(default = "d_log")]
    pub log_every: usize,
    /// Multiview diffreps: views rendered per iteration (SJC's NeRF: 1); absent: the
    /// diffrep's own `views`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<usize>,
    /// SJC's NeRF emptiness regulariser (voxel NeRFs only); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emptiness: Option<EmptinessConfig>,
}

impl Default for SjcConfig {
    fn default() -> Self {
        Self { iters: d_iters(), lr: d_lr(), skip_high: d_skip_high(), skip_low: d_skip_low(), log_every: d_log(), views: None, emptiness: None }
    }
}

fn d_e_scale() -> f64 {
    10.0
}
fn d_e_weight() -> f64 {
    1e4
}
fn d_e_step() -> f64 {
    0.5
}
fn d_e_mult() -> f64 {
    20.0
}

/// SJC's emptiness loss (`run_sjc.py`): `weight * mean(log(1 + scale * w))` over the
/// compositing weights `w` of a view's ray samples, its weight multiplied by `multiplier`
/// from iteration `step * iters` on. Defaults are SJC's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptinessConfig {
    #[serde(default = "d_e_scale")]
    pub scale: f64,
    #[serde(default = "d_e_weight")]
    pub weight: f64,
    /// Fraction of the iterations after which the weight is multiplied.
    #[serde(default = "d_e_step")]
    pub step: f64,
    #[serde(default = "d_e_mult")]
    pub multiplier: f64,
}

impl Default for EmptinessConfig {
    fn default() -> Self {
        Self { scale: d_e_scale(), weight: d_e_weight(), step: d_e_step(), multiplier: d_e_mult() }
    }
}

impl EmptinessConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !(ok(self.scale) && ok(self.weight) && ok(self.multiplier) && ok(self.step)) {
            bail!("sjc.emptiness: scale, weight, step and multiplier must be finite and >= 0");
        }
        Ok(())
    }

    /// The loss weight at iteration `it` of `iters`.
    pub fn weight_at(&self, it: usize, iters: usize) -> f64 {
        if self.step * iters as f64 <= it as f64 {
            self.weight * self.multiplier
        } else {
            self.weight
        }
    }
}

impl SjcConfig {
    /// Checks the settings against a schedule of `t_train` training timesteps.
    pub fn validate(&self, t_train: usize) -> Result<()> {
        if self.iters == 0 {
            bail!("sjc.iters must be at least 1");
        }
        crate::limits::at_most("sjc.iters", self.iters, crate::limits::MAX_ITERATIONS)?;
        if self.skip_high.saturating_add(self.skip_low) >= t_train {
            bail!("sjc skips {} + {} of {t_train} sigmas: none left", self.skip_high, self.skip_low);
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("sjc.lr must be positive, got {}", self.lr);
        }
        Ok(())
    }

    /// Whether iteration `it` is logged in the diagnostics.
    pub(super) fn logs(&self, it: usize) -> bool {
        self.log_every > 0 && (it.is_multiple_of(self.log_every) || it + 1 == self.iters)
    }

    /// A training timestep uniform over the kept sigmas. Sigmas sorted from largest to
    /// smallest: index i is training timestep T - 1 - i.
    pub(super) fn draw_timestep(&self, rng: &mut ChaCha8Rng, t_train: usize) -> usize {
        t_train - 1 - rng.random_range(self.skip_high..t_train - self.skip_low)
    }
}

/// SJC's variance-reduced ascent direction per row, `(D(y + sigma z, t) - y) / sigma`
/// (= sigma * score), and the rows' sigmas.
pub(super) fn sjc_direction<B: Backend, D: Denoiser<B> + ?Sized>(den: &GuidedDenoiser<B, D>, y: Tensor<B, 4>, ts: &[usize], z: Tensor<B, 4>, it: usize) -> Result<(Tensor<B, 4>, Vec<f64>)> {
    let sig: Vec<f64> = ts.iter().map(|&t| den.schedule().sigma(crate::diffusion::Level::Timestep(t))).collect();
    let sig_t = row_scalars::<B>(&sig, &y.device());
    let x0 = den.x0_rows(y.clone() + z * sig_t.clone(), ts)?;
    ensure_finite(&x0, || format!("the denoiser output at SJC iteration {it}"))?;
    Ok(((x0 - y) / sig_t, sig))
}

/// SJC. Per sample and iteration: `sigma` uniform over the kept training sigmas (from the
/// sample's own `"sjc"` stream), `n` from `noise`.
pub fn sjc<B, D, R>(
    den: &GuidedDenoiser<B::InnerBackend, D>,
    rep: &R,
    seeds: &[u64],
    cfg: &SjcConfig,
    noise: &mut dyn NoiseSource<B::InnerBackend>,
    device: &B::Device,
) -> Result<MethodOutput<B::InnerBackend, R::Params>>
where
    B: AutodiffBackend,
    D: Denoiser<B::InnerBackend> + ?Sized,
    R: Diffrep<B>,
{
    let t_train = den.schedule().num_train_timesteps();
    cfg.validate(t_train)?;
    let n = seeds.len();
    let [c, h, w] = rep.render_shape();
    let mut rngs: Vec<_> = seeds.iter().map(|&s| rng_for(s, "sjc")).collect();
    let mut params = rep.init(seeds, device)?;
    let mut optim = Adamax::default().init::<B, R::Params>();
    let mut diagnostics = Vec::new();
    for it in 0..cfg.iters {
        let ts: Vec<usize> = rngs.iter_mut().map(|r| cfg.draw_timestep(r, t_train)).collect();
        let y = rep.render(&params);
        let z = noise.normal([n, c, h, w], device)?;
        let (g, sig) = sjc_direction(den, y.clone().inner(), &ts, z, it)?;
        if cfg.logs(it) {
            let residual = per_sample_mse(g.clone()).into_iter().map(f64::sqrt).collect();
            diagnostics.push(StepDiagnostic { step: it, kind: "iteration".into(), t: ts[0], sigma: sig[0], residual, nfe: den.nfe(), overlap: None });
        }
        // Ascent: minimise -<y, g> with g held fixed.
        let l = (y * Tensor::<B, 4>::from_inner(g)).sum().neg();
        let grads = GradientsParams::from_grads(l.backward(), &params);
        params = optim.step(cfg.lr, params, grads);
    }
    let image = rep.render(&params).inner();
    ensure_finite(&image, || "the final SJC render".into())?;
    Ok(MethodOutput { params: Some(params), image, diagnostics, nfe: den.nfe() })
}
