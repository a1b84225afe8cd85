//! Exact analytic diffusion priors (ALGORITHM.md §7): a Gaussian with diagonal covariance in
//! the orthonormal DCT basis and a power-law spectrum, and a caption-keyed mixture of such
//! Gaussians. Their denoisers, hence their CFG, are exact; the math runs on the host in f64,
//! so results do not depend on the tensor backend.

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::diffusion::{Denoiser, Level, Schedule};
use crate::noise::{normal_vec, rng_for};
use crate::tensor_util::{tensor_from_f64, tensor_to_vec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnalyticKind {
    /// One Gaussian; prompts are ignored.
    Gaussian,
    /// One Gaussian per caption; the unconditional model is their equal-weight mixture.
    Mixture,
}

fn default_kind() -> AnalyticKind {
    AnalyticKind::Mixture
}
fn default_shape() -> [usize; 3] {
    [3, 32, 32]
}
fn default_pixel_std() -> f64 {
    0.35
}
fn default_exponent() -> f64 {
    3.0
}
fn default_chroma() -> f64 {
    0.3
}
fn default_mean_scale() -> f64 {
    1.0
}

/// Parameters of an analytic prior. The power-law spectrum is
/// `v(c, ky, kx) ∝ (1 + sqrt(ky^2 + kx^2))^(-exponent)`, normalised so the average pixel
/// variance is `pixel_std^2`; a caption's mean is a draw from `mean_scale^2 * v` seeded by the
/// caption's sha256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticConfig {
    #[serde(default = "default_kind")]
    pub kind: AnalyticKind,
    /// `[C, H, W]` of one sample.
    #[serde(default = "default_shape")]
    pub shape: [usize; 3],
    #[serde(default = "default_pixel_std")]
    pub pixel_std: f64,
    #[serde(default = "default_exponent")]
    pub exponent: f64,
    #[serde(default = "default_mean_scale")]
    pub mean_scale: f64,
    /// Relative variance of the two opponent colour axes (3-channel priors only).
    #[serde(default = "default_chroma")]
    pub chroma_weight: f64,
    /// Mixture components (the unconditional model mixes these). Prompts outside the list
    /// still have their own conditional Gaussian.
    #[serde(default)]
    pub captions: Vec<String>,
}

impl Default for AnalyticConfig {
    fn default() -> Self {
        Self {
            kind: default_kind(),
            shape: default_shape(),
            pixel_std: default_pixel_std(),
            exponent: default_exponent(),
            mean_scale: default_mean_scale(),
            chroma_weight: default_chroma(),
            captions: Vec::new(),
        }
    }
}

/// Orthonormal DCT-II matrix `M[k][n] = a_k cos(pi (n + 1/2) k / N)`, row-major.
fn dct_matrix(n: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for k in 0..n {
        let a = if k == 0 { (1.0 / n as f64).sqrt() } else { (2.0 / n as f64).sqrt() };
        for i in 0..n {
            m[k * n + i] = a * (std::f64::consts::PI * (i as f64 + 0.5) * k as f64 / n as f64).cos();
        }
    }
    m
}

/// Orthonormal colour basis: for RGB, luminance and two opponent axes (so that the prior's
/// images look like pictures, not rainbow noise); identity for other channel counts.
fn channel_matrix(c: usize) -> Vec<f64> {
    if c == 3 {
        let (a, b, d) = (1.0 / 3f64.sqrt(), 1.0 / 2f64.sqrt(), 1.0 / 6f64.sqrt());
        vec![a, a, a, b, -b, 0.0, d, d, -2.0 * d]
    } else {
        (0..c * c).map(|i| if i / c == i % c { 1.0 } else { 0.0 }).collect()
    }
}

/// The orthonormal basis of the analytic priors: a colour transform across channels and the
/// 2-D DCT-II within each channel, on `[C, H, W]` images.
#[derive(Clone, Debug)]
pub struct DctBasis {
    shape: [usize; 3],
    mc: Vec<f64>,
    mh: Vec<f64>,
    mw: Vec<f64>,
}

impl DctBasis {
    pub fn new(shape: [usize; 3]) -> Self {
        Self { shape, mc: channel_matrix(shape[0]), mh: dct_matrix(shape[1]), mw: dct_matrix(shape[2]) }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image to coefficients: colour transform, then `M_H X M_W^T` per channel.
    pub fn forward(&self, x: &[f64]) -> Vec<f64> {
        self.apply(&self.mix_channels(x, false), false)
    }

    /// Coefficients to image: `M_H^T C M_W` per channel, then the inverse colour transform.
    pub fn inverse(&self, c: &[f64]) -> Vec<f64> {
        self.mix_channels(&self.apply(c, true), true)
    }

    fn mix_channels(&self, x: &[f64], transpose: bool) -> Vec<f64> {
        let [ch, h, w] = self.shape;
        let plane = h * w;
        let mut out = vec![0.0; x.len()];
        for o in 0..ch {
            for i in 0..ch {
                let m = if transpose { self.mc[i * ch + o] } else { self.mc[o * ch + i] };
                if m != 0.0 {
                    for p in 0..plane {
                        out[o * plane + p] += m * x[i * plane + p];
                    }
                }
            }
        }
        out
    }

    fn apply(&self, x: &[f64], transpose: bool) -> Vec<f64> {
        let [ch, h, w] = self.shape;
        let at = |m: &[f64], n: usize, r: usize, c: usize| if transpose { m[c * n + r] } else { m[r * n + c] };
        let mut out = vec![0.0; x.len()];
        let mut tmp = vec![0.0; h * w];
        for c in 0..ch {
            let xs = &x[c * h * w..(c + 1) * h * w];
            // rows: tmp = M_H' X
            for r in 0..h {
                for col in 0..w {
                    let mut s = 0.0;
                    for k in 0..h {
                        s += at(&self.mh, h, r, k) * xs[k * w + col];
                    }
                    tmp[r * w + col] = s;
                }
            }
            // columns: out = tmp M_W'^T
            let os = &mut out[c * h * w..(c + 1) * h * w];
            for r in 0..h {
                for col in 0..w {
                    let mut s = 0.0;
                    for k in 0..w {
                        s += tmp[r * w + k] * at(&self.mw, w, col, k);
                    }
                    os[r * w + col] = s;
                }
            }
        }
        out
    }

    /// The image of the unit coefficient at `(c, ky, kx)`.
    pub fn basis_image(&self, c: usize, ky: usize, kx: usize) -> Vec<f64> {
        let [_, h, w] = self.shape;
        let mut e = vec![0.0; self.len()];
        e[c * h * w + ky * w + kx] = 1.0;
        self.inverse(&e)
    }
}

/// An exact analytic prior: Gaussian or caption-keyed Gaussian mixture, all components
/// sharing the diagonal (in DCT) covariance `variances`.
#[derive(Clone, Debug)]
pub struct AnalyticPrior {
    config: AnalyticConfig,
    schedule: Schedule,
    basis: DctBasis,
    variances: Vec<f64>,
    /// Mixture components' mean coefficients (one for the Gaussian kind).
    components: Vec<Vec<f64>>,
}

impl AnalyticPrior {
    /// The training schedule every analytic prior uses (SD1.5's), known without building one.
    pub fn training_schedule() -> Schedule {
        Schedule::sd15()
    }

    pub fn new(config: AnalyticConfig) -> Result<Self> {
        let [c, h, w] = config.shape;
        if c == 0 || h == 0 || w == 0 {
            bail!("analytic prior shape {:?} has a zero dimension", config.shape);
        }
        crate::limits::image_shape("the analytic prior's", config.shape)?;
        if !(config.pixel_std > 0.0 && config.pixel_std.is_finite()) {
            bail!("analytic prior pixel_std must be positive, got {}", config.pixel_std);
        }
        let finite = config.exponent.is_finite() && config.mean_scale.is_finite() && config.chroma_weight.is_finite();
        if !(finite && config.mean_scale >= 0.0 && config.chroma_weight > 0.0) {
            bail!("analytic prior exponent, mean_scale and chroma_weight must be finite (mean_scale >= 0, chroma_weight > 0)");
        }
        let mut variances = Vec::with_capacity(c * h * w);
        for ch in 0..c {
            // Opponent colour axes carry less energy than luminance, as in natural images.
            let weight = if c == 3 && ch > 0 { config.chroma_weight } else { 1.0 };
            for ky in 0..h {
                for kx in 0..w {
                    let k = ((ky * ky + kx * kx) as f64).sqrt();
                    variances.push(weight * (1.0 + k).powf(-config.exponent));
                }
            }
        }
        let total: f64 = variances.iter().sum();
        let norm = config.pixel_std.powi(2) * variances.len() as f64 / total;
        variances.iter_mut().for_each(|v| *v *= norm);
        let mut prior = Self {
            basis: DctBasis::new(config.shape),
            schedule: Self::training_schedule(),
            variances,
            components: Vec::new(),
            config,
        };
        prior.components = match prior.config.kind {
            AnalyticKind::Gaussian => vec![prior.caption_mean("ddrep:gaussian")],
            AnalyticKind::Mixture => {
                if prior.config.captions.is_empty() {
                    bail!("an analytic mixture needs at least one caption (its components)");
                }
                prior.config.captions.iter().map(|c| prior.caption_mean(c)).collect()
            }
        };
        Ok(prior)
    }

    /// A Gaussian prior with given DCT-basis variances and mean coefficients (for oracles).
    pub fn gaussian_with(shape: [usize; 3], variances: Vec<f64>, mean: Vec<f64>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if variances.len() != n || mean.len() != n {
            bail!("gaussian_with: {n} coefficients expected");
        }
        let config = AnalyticConfig { kind: AnalyticKind::Gaussian, shape, ..Default::default() };
        Ok(Self { basis: DctBasis::new(shape), schedule: Schedule::sd15(), variances, components: vec![mean], config })
    }

    pub fn config(&self) -> &AnalyticConfig {
        &self.config
    }

    pub fn basis(&self) -> &DctBasis {
        &self.basis
    }

    /// Prior variances of the DCT coefficients.
    pub fn variances(&self) -> &[f64] {
        &self.variances
    }

    /// Mean coefficients of a caption's component: `mean_scale * sqrt(v) * z`, z seeded by
    /// the caption's sha256.
    pub fn caption_mean(&self, caption: &str) -> Vec<f64> {
        let digest = Sha256::digest(caption.as_bytes());
        let seed = u64::from_le_bytes(digest[..8].try_into().unwrap());
        let z = normal_vec(&mut rng_for(seed, "analytic-mean"), self.variances.len());
        self.variances.iter().zip(z).map(|(v, z)| self.config.mean_scale * v.sqrt() * z as f64).collect()
    }

    /// Mean coefficients of the conditional model for a prompt.
    pub fn conditional_mean(&self, prompt: &str) -> Vec<f64> {
        match self.config.kind {
            AnalyticKind::Gaussian => self.components[0].clone(),
            AnalyticKind::Mixture => self.caption_mean(prompt),
        }
    }

    /// Exact `E[x0 | x~]` in coefficients, for one coefficient vector `y` at noise `sigma`.
    /// `prompt = None` uses the unconditional model (the mixture).
    pub fn denoise_coeffs(&self, y: &[f64], sigma: f64, prompt: Option<&str>) -> Vec<f64> {
        let s2 = sigma * sigma;
        let mean = match (self.config.kind, prompt) {
            (AnalyticKind::Mixture, None) => {
                // Posterior component weights; equal priors and shared covariance, so only
                // the Mahalanobis terms differ.
                let logw: Vec<f64> = self
                    .components
                    .iter()
                    .map(|mu| {
                        -0.5 * y.iter().zip(mu).zip(&self.variances).map(|((y, m), v)| (y - m).powi(2) / (v + s2)).sum::<f64>()
                    })
                    .collect();
                let mx = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logw.iter().map(|l| (l - mx).exp()).collect();
                let z: f64 = w.iter().sum();
                let mut m = vec![0.0; y.len()];
                for (wk, mu) in w.iter().zip(&self.components) {
                    for (mi, mk) in m.iter_mut().zip(mu) {
                        *mi += wk / z * mk;
                    }
                }
                m
            }
            (_, p) => self.conditional_mean(p.unwrap_or("")),
        };
        y.iter()
            .zip(&mean)
            .zip(&self.variances)
            .map(|((y, m), v)| m + v / (v + s2) * (y - m))
            .collect()
    }

    /// Exact denoiser on VE images (host vectors of one sample).
    pub fn denoise_image(&self, x_ve: &[f64], sigma: f64, prompt: Option<&str>) -> Vec<f64> {
        let y = self.basis.forward(x_ve);
        self.basis.inverse(&self.denoise_coeffs(&y, sigma, prompt))
    }
}

impl<B: Backend> Denoiser<B> for AnalyticPrior {
    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "embedded analytic prior ({:?}, shape {:?}, pixel_std {}, exponent {}, mean_scale {}, chroma_weight {}, {} component(s))",
            c.kind, c.shape, c.pixel_std, c.exponent, c.mean_scale, c.chroma_weight, self.components.len()
        )
    }

    fn sample_shape(&self) -> [usize; 3] {
        self.config.shape
    }

    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn eps(&self, x_vp: Tensor<B, 4>, timesteps: &[usize], prompts: &[Option<&str>]) -> Result<Tensor<B, 4>> {
        let dims = x_vp.dims();
        if [dims[1], dims[2], dims[3]] != self.config.shape {
            bail!("analytic prior expects samples of shape {:?}, got {:?}", self.config.shape, &dims[1..]);
        }
        if prompts.len() != dims[0] || timesteps.len() != dims[0] {
            bail!("{} prompts and {} timesteps for a batch of {}", prompts.len(), timesteps.len(), dims[0]);
        }
        let device = x_vp.device();
        let per = self.basis.len();
        let host = tensor_to_vec(x_vp);
        let mut out = Vec::with_capacity(host.len());
        for ((row, prompt), &t) in host.chunks(per).zip(prompts).zip(timesteps) {
            if t >= self.schedule.num_train_timesteps() {
                bail!("timestep {t} out of range");
            }
            let level = Level::Timestep(t);
            let (sigma, scale) = (self.schedule.sigma(level), self.schedule.scale(level));
            let x_ve: Vec<f64> = row.iter().map(|&v| v as f64 / scale).collect();
            let x0 = self.denoise_image(&x_ve, sigma, *prompt);
            out.extend(x_ve.iter().zip(&x0).map(|(x, d)| (x - d) / sigma));
        }
        Ok(tensor_from_f64(&out, dims, &device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_is_orthonormal() {
        let b = DctBasis::new([3, 5, 7]);
        let x: Vec<f64> = (0..105).map(|i| ((i * 37 % 11) as f64) - 5.0).collect();
        let c = b.forward(&x);
        let back = b.inverse(&c);
        let e: f64 = x.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(e < 1e-12, "{e}");
        let nx: f64 = x.iter().map(|v| v * v).sum();
        let nc: f64 = c.iter().map(|v| v * v).sum();
        assert!((nx - nc).abs() < 1e-9);
    }

    #[test]
    fn spectrum_normalisation() {
        let p = AnalyticPrior::new(AnalyticConfig { captions: vec!["a".into()], ..Default::default() }).unwrap();
        let mean_v: f64 = p.variances().iter().sum::<f64>() / p.variances().len() as f64;
        assert!((mean_v - 0.35f64.powi(2)).abs() < 1e-12);
    }
}
