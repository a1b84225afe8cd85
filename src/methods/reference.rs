//! The reference sampler: plain DDIM in image space (what Table 1 compares DDRep against).

use anyhow::Result;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{MethodOutput, StepDiagnostic};
use crate::diffusion::{check_ddim_settings, ddim_step, DdimCoeffs, Denoiser, GuidedDenoiser, Level};
use crate::noise::NoiseSource;
use crate::tensor_util::ensure_finite;

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
pub struct ReferenceConfig {
    #[serde(default = "d_steps")]
    pub steps: usize,
    #[serde(default = "d_eta")]
    pub eta: f64,
    #[serde(default = "d_offset")]
    pub steps_offset: usize,
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        Self { steps: d_steps(), eta: d_eta(), steps_offset: d_offset() }
    }
}

/// DDIM from `x~_T = sigma_T eps`, drawing noise in the same order as DDRep (`eps`, then one
/// `z` per step), so both see the same random numbers. Returns the final VP sample, as the
/// diffusers pipeline hands it to the VAE.
pub fn reference<B: Backend, D: Denoiser<B> + ?Sized>(
    den: &GuidedDenoiser<B, D>,
    n: usize,
    cfg: &ReferenceConfig,
    noise: &mut dyn NoiseSource<B>,
    device: &B::Device,
) -> Result<MethodOutput<B, ()>> {
    check_ddim_settings(cfg.steps, cfg.eta)?;
    let schedule = den.schedule().clone();
    let levels = schedule.ddim_levels(cfg.steps, cfg.steps_offset)?;
    let [c, h, w] = den.model().sample_shape();
    let shape = [n, c, h, w];
    let mut x = noise.normal(shape, device)?.mul_scalar(schedule.sigma(levels[0]));
    let mut diagnostics = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let coeffs = DdimCoeffs::new(&schedule, levels[step], levels[step + 1], cfg.eta);
        let Level::Timestep(t) = levels[step] else { unreachable!() };
        let z = noise.normal(shape, device)?;
        let x0_hat = den.x0(x.clone(), t)?;
        ensure_finite(&x0_hat, || format!("the denoiser output at step {step} (t = {t})"))?;
        x = ddim_step(x, x0_hat, &coeffs, z);
        diagnostics.push(StepDiagnostic { step, kind: "reverse".into(), t, sigma: coeffs.sigma_from, residual: vec![0.0; n], nfe: den.nfe(), overlap: None });
    }
    let image = x.mul_scalar(schedule.scale(levels[cfg.steps]));
    Ok(MethodOutput { params: None, image, diagnostics, nfe: den.nfe() })
}
