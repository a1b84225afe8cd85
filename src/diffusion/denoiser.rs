//! The `Denoiser` trait (a noise predictor) and the guided VE denoiser built on it.

use std::cell::Cell;

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Tensor};

use super::guidance::{Guidance, Passes};
use super::schedule::{Level, Schedule};

/// A noise predictor `eps(x_t, t, c)` on VP inputs, as a UNet is. Implemented by the
/// analytic priors and by Stable Diffusion 1.5.
pub trait Denoiser<B: Backend> {
    /// What this model is, for run records (e.g. "analytic mixture ...", "sd15 <sha256>").
    fn describe(&self) -> String;
    /// Shape `[C, H, W]` of one sample.
    fn sample_shape(&self) -> [usize; 3];
    /// The training noise schedule.
    fn schedule(&self) -> &Schedule;
    /// Noise prediction for VP input `x_vp` (`[n, C, H, W]`); row `i` is at training timestep
    /// `timesteps[i]` and conditioned on `prompts[i]` (`None` = unconditional).
    fn eps(&self, x_vp: Tensor<B, 4>, timesteps: &[usize], prompts: &[Option<&str>]) -> Result<Tensor<B, 4>>;
}

/// A shared model is a denoiser too (the experiment runner keeps the SD1.5 model beside its
/// VAE decoder).
impl<B: Backend, D: Denoiser<B> + ?Sized> Denoiser<B> for std::sync::Arc<D> {
    fn describe(&self) -> String {
        self.as_ref().describe()
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.as_ref().sample_shape()
    }
    fn schedule(&self) -> &Schedule {
        self.as_ref().schedule()
    }
    fn eps(&self, x_vp: Tensor<B, 4>, timesteps: &[usize], prompts: &[Option<&str>]) -> Result<Tensor<B, 4>> {
        self.as_ref().eps(x_vp, timesteps, prompts)
    }
}

/// A denoiser bound to a batch of prompts and a guidance setting, counting its evaluations.
/// It works in the VE view: `x0(x~, t) = x~ - sigma_t * eps_hat(s_t x~, t)`.
pub struct GuidedDenoiser<'a, B: Backend, D: Denoiser<B> + ?Sized> {
    model: &'a D,
    prompts: Vec<String>,
    guidance: Guidance,
    nfe: Cell<usize>,
    _backend: std::marker::PhantomData<B>,
}

impl<'a, B: Backend, D: Denoiser<B> + ?Sized> GuidedDenoiser<'a, B, D> {
    pub fn new(model: &'a D, prompts: Vec<String>, guidance: Guidance) -> Result<Self> {
        if !guidance.scale.is_finite() {
            bail!("CFG scale must be finite, got {}", guidance.scale);
        }
        Ok(Self { model, prompts, guidance, nfe: Cell::new(0), _backend: Default::default() })
    }

    pub fn model(&self) -> &D {
        self.model
    }

    pub fn schedule(&self) -> &Schedule {
        self.model.schedule()
    }

    pub fn prompts(&self) -> &[String] {
        &self.prompts
    }

    /// Denoiser evaluations so far (a CFG pair batched together counts as one).
    pub fn nfe(&self) -> usize {
        self.nfe.get()
    }

    /// Guided noise prediction on VP input, row `i` at training timestep `t[i]`.
    pub fn eps(&self, x_vp: Tensor<B, 4>, t: &[usize]) -> Result<Tensor<B, 4>> {
        let n = x_vp.dims()[0];
        if n != self.prompts.len() || n != t.len() {
            bail!("batch of {n} samples but {} prompts and {} timesteps", self.prompts.len(), t.len());
        }
        self.nfe.set(self.nfe.get() + 1);
        let cond: Vec<Option<&str>> = self.prompts.iter().map(|p| Some(p.as_str())).collect();
        match self.guidance.passes() {
            Passes::Conditional => self.model.eps(x_vp, t, &cond),
            Passes::Unconditional => self.model.eps(x_vp, t, &vec![None; n]),
            Passes::Both(w) => {
                // One batched call [uncond; cond], as the diffusers pipeline does.
                let mut rows: Vec<Option<&str>> = vec![None; n];
                rows.extend(cond);
                let tt: Vec<usize> = t.iter().chain(t).cloned().collect();
                let both = self.model.eps(Tensor::cat(vec![x_vp.clone(), x_vp], 0), &tt, &rows)?;
                let eps_u = both.clone().narrow(0, 0, n);
                let eps_c = both.narrow(0, n, n);
                Ok(eps_u.clone() + (eps_c - eps_u).mul_scalar(w))
            }
        }
    }

    /// Tweedie estimate `D(x~)` of the clean sample from VE input at training timestep `t`.
    pub fn x0(&self, x_ve: Tensor<B, 4>, t: usize) -> Result<Tensor<B, 4>> {
        let level = Level::Timestep(t);
        let (sigma, scale) = (self.schedule().sigma(level), self.schedule().scale(level));
        let n = x_ve.dims()[0];
        let eps = self.eps(x_ve.clone().mul_scalar(scale), &vec![t; n])?;
        Ok(x_ve - eps.mul_scalar(sigma))
    }

    /// `D(x~)` with a different timestep per row.
    pub fn x0_rows(&self, x_ve: Tensor<B, 4>, t: &[usize]) -> Result<Tensor<B, 4>> {
        let s = self.schedule();
        let sig: Vec<f64> = t.iter().map(|&t| s.sigma(Level::Timestep(t))).collect();
        let sc: Vec<f64> = t.iter().map(|&t| s.scale(Level::Timestep(t))).collect();
        let device = x_ve.device();
        let eps = self.eps(x_ve.clone() * row_scalars(&sc, &device), t)?;
        Ok(x_ve - eps * row_scalars(&sig, &device))
    }
}

/// A `[n, 1, 1, 1]` tensor of per-row scalars, for broadcasting over samples.
pub fn row_scalars<B: Backend>(v: &[f64], device: &B::Device) -> Tensor<B, 4> {
    crate::tensor_util::tensor_from_f64(v, [v.len(), 1, 1, 1], device)
}
