//! The DDIM step with stochasticity `eta` (ALGORITHM.md §2), its separated-noise form (§4)
//! and the RePaint forward step for the non-Markovian process (§5), all in the VE view.
//!
//! Every function takes its noise `z` from the caller, so a trajectory can be replayed.

use burn::tensor::{backend::Backend, Tensor};

use super::schedule::{Level, Schedule};

/// Checks the settings every DDIM chain shares: at least one step, `eta` in [0, 1].
pub fn check_ddim_settings(steps: usize, eta: f64) -> anyhow::Result<()> {
    if steps == 0 {
        anyhow::bail!("steps must be at least 1");
    }
    if !(eta.is_finite() && (0.0..=1.0).contains(&eta)) {
        anyhow::bail!("eta must be in [0, 1], got {eta}");
    }
    Ok(())
}

/// Scalars of one DDIM transition from level `from` (sigma) to the less noisy `to` (sigma').
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimCoeffs {
    /// sigma at the noisier level.
    pub sigma_from: f64,
    /// sigma' at the less noisy level.
    pub sigma_to: f64,
    /// Std of the fresh noise the step injects, in VE units.
    pub sig_eta: f64,
    /// `sqrt(sigma'^2 - sig_eta^2)`: how much of the current noise direction is kept.
    pub dir: f64,
    /// VP signal scales `sqrt(abar)` at both ends.
    pub scale_from: f64,
    pub scale_to: f64,
}

impl DdimCoeffs {
    pub fn new(schedule: &Schedule, from: Level, to: Level, eta: f64) -> Self {
        let (ai, aj) = (schedule.abar(from), schedule.abar(to));
        // diffusers' `_get_variance`, divided by abar_j to move into VE units.
        let variance = (1.0 - aj) / (1.0 - ai) * (1.0 - ai / aj);
        let sig_eta = eta * variance.max(0.0).sqrt() / aj.sqrt();
        let sigma_to = schedule.sigma(to);
        Self {
            sigma_from: schedule.sigma(from),
            sigma_to,
            sig_eta,
            dir: (sigma_to * sigma_to - sig_eta * sig_eta).max(0.0).sqrt(),
            scale_from: ai.sqrt(),
            scale_to: aj.sqrt(),
        }
    }

    /// Factor on `(x_j - x0)` in the RePaint forward step: `sigma * dir / sigma'^2`.
    pub fn repaint_k(&self) -> f64 {
        self.sigma_from * self.dir / (self.sigma_to * self.sigma_to)
    }

    /// Std of the fresh noise in the RePaint forward step: `sigma * sig_eta / sigma'`.
    pub fn repaint_noise(&self) -> f64 {
        self.sigma_from * self.sig_eta / self.sigma_to
    }
}

/// One DDIM step in VE form: `x0 + dir * (x - x0) / sigma + sig_eta * z`.
pub fn ddim_step<B: Backend>(
    x: Tensor<B, 4>,
    x0_hat: Tensor<B, 4>,
    c: &DdimCoeffs,
    z: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let kept = (x - x0_hat.clone()).mul_scalar(c.dir / c.sigma_from);
    x0_hat + kept + z.mul_scalar(c.sig_eta)
}

/// The same step as diffusers' `DDIMScheduler.step` (epsilon prediction): VP sample and
/// noise prediction in, VP `prev_sample` out.
pub fn ddim_step_vp<B: Backend>(
    sample: Tensor<B, 4>,
    eps: Tensor<B, 4>,
    c: &DdimCoeffs,
    z: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let x = sample.div_scalar(c.scale_from);
    let x0_hat = x.clone() - eps.mul_scalar(c.sigma_from);
    ddim_step(x, x0_hat, c, z).mul_scalar(c.scale_to)
}

/// §4: the DDIM step on the separated state `x~ = xhat + sigma * eps`.
/// Returns the next noiseless target `xhat_j` and the next noise `eps_new` (again N(0, I)).
pub fn separated_noise<B: Backend>(
    xhat: Tensor<B, 4>,
    eps: Tensor<B, 4>,
    x0_hat: Tensor<B, 4>,
    c: &DdimCoeffs,
    z: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let target = x0_hat.clone() + (xhat - x0_hat).mul_scalar(c.dir / c.sigma_from);
    let eps_new = (eps.mul_scalar(c.dir) + z.mul_scalar(c.sig_eta)).div_scalar(c.sigma_to);
    (target, eps_new)
}

/// §5: RePaint forward step from the less noisy level back up to the noisier one, using the
/// coefficients `c` of the reverse step it undoes and an estimate `x0` of the clean image.
/// Separated form: returns `(xhat_i, eps_i)`.
pub fn repaint_forward<B: Backend>(
    xhat_j: Tensor<B, 4>,
    eps_j: Tensor<B, 4>,
    x0: Tensor<B, 4>,
    c: &DdimCoeffs,
    z: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let k = c.repaint_k();
    let xhat_i = x0.clone() + (xhat_j - x0).mul_scalar(k);
    let eps_i = (eps_j.mul_scalar(k * c.sigma_to) + z.mul_scalar(c.repaint_noise()))
        .div_scalar(c.sigma_from);
    (xhat_i, eps_i)
}

/// §5 in plain (unseparated) form: `x0 + k (x_j - x0) + (sigma sig_eta / sigma') z`.
pub fn repaint_forward_plain<B: Backend>(
    x_j: Tensor<B, 4>,
    x0: Tensor<B, 4>,
    c: &DdimCoeffs,
    z: Tensor<B, 4>,
) -> Tensor<B, 4> {
    x0.clone() + (x_j - x0).mul_scalar(c.repaint_k()) + z.mul_scalar(c.repaint_noise())
}
