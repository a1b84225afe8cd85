//! The paper's image SIREN (ALGORITHM.md §8): pixel coordinates -> sinusoidal embedding ->
//! sine MLP -> latent/RGB channels. A batch of `n` independent SIRENs is one module whose
//! weights carry a leading batch dimension, so they train together in batched matmuls.

use anyhow::{bail, Result};
use burn::module::{Module, Param};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::sine::{sine, SineBackend};
use super::{Diffrep, NamedTensor};
use crate::noise::rng_for;
use crate::tensor_util::{tensor_from_vec, tensor_to_vec};

fn d_resolution() -> [usize; 2] {
    [64, 64]
}
pub(super) fn d_out() -> usize {
    4
}
pub(super) fn d_embedding() -> usize {
    128
}
pub(super) fn d_depth() -> usize {
    3
}
pub(super) fn d_width() -> usize {
    256
}
pub(super) fn d_omega() -> f64 {
    1.0
}
fn d_range() -> [f64; 2] {
    [-1.0, 1.0]
}

/// SIREN architecture; every value the paper lost is a field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SirenConfig {
    /// Render grid `[H, W]`.
    #[serde(default = "d_resolution")]
    pub resolution: [usize; 2],
    /// Output channels (4 for SD latents, 3 for RGB).
    #[serde(default = "d_out")]
    pub out_channels: usize,
    /// Size of the sinusoidal embedding of (x, y): 4 * frequencies (sin and cos per axis).
    #[serde(default = "d_embedding")]
    pub embedding_size: usize,
    /// Highest embedding frequency in cycles over the coordinate range; `None` = the grid's
    /// Nyquist frequency `(res - 1) / 2`.
    #[serde(default)]
    pub max_frequency: Option<f64>,
    /// Number of hidden sine layers.
    #[serde(default = "d_depth")]
    pub depth: usize,
    #[serde(default = "d_width")]
    pub width: usize,
    /// Activation `sin(omega * z)`.
    #[serde(default = "d_omega")]
    pub omega: f64,
    /// Coordinate range of the grid on both axes.
    #[serde(default = "d_range")]
    pub coord_range: [f64; 2],
}

impl Default for SirenConfig {
    fn default() -> Self {
        Self {
            resolution: d_resolution(),
            out_channels: d_out(),
            embedding_size: d_embedding(),
            max_frequency: None,
            depth: d_depth(),
            width: d_width(),
            omega: d_omega(),
            coord_range: d_range(),
        }
    }
}

impl SirenConfig {
    pub fn validate(&self) -> Result<()> {
        let [h, w] = self.resolution;
        if h == 0 || w == 0 || self.out_channels == 0 || self.width == 0 {
            bail!("siren: resolution, out_channels and width must be positive");
        }
        crate::limits::image_shape("siren render", [self.out_channels, h, w])?;
        crate::limits::at_most("siren.width", self.width, crate::limits::MAX_SIREN_WIDTH)?;
        crate::limits::at_most("siren.depth", self.depth, crate::limits::MAX_SIREN_DEPTH)?;
        crate::limits::at_most("siren.embedding_size", self.embedding_size, crate::limits::MAX_SIREN_WIDTH)?;
        if self.embedding_size == 0 || !self.embedding_size.is_multiple_of(4) {
            bail!("siren.embedding_size must be a positive multiple of 4, got {}", self.embedding_size);
        }
        if !(self.omega.is_finite() && self.omega > 0.0) {
            bail!("siren.omega must be positive, got {}", self.omega);
        }
        if let Some(f) = self.max_frequency {
            if !(f.is_finite() && f > 0.0) {
                bail!("siren.max_frequency must be positive, got {f}");
            }
        }
        // NaN bounds compare as unordered and are refused too.
        if self.coord_range[0].partial_cmp(&self.coord_range[1]) != Some(std::cmp::Ordering::Less) {
            bail!("siren.coord_range must be increasing, got {:?}", self.coord_range);
        }
        Ok(())
    }

    /// Coordinates of the render grid, row-major `(y, x)` pairs.
    pub fn grid(&self) -> Vec<[f64; 2]> {
        let [h, w] = self.resolution;
        let [lo, hi] = self.coord_range;
        let lin = |i: usize, n: usize| if n == 1 { 0.5 * (lo + hi) } else { lo + (hi - lo) * i as f64 / (n - 1) as f64 };
        (0..h).flat_map(|y| (0..w).map(move |x| [lin(y, h), lin(x, w)])).collect()
    }

    /// Embedding frequencies in cycles per coordinate range, geometric from 1/2 to the max.
    pub fn frequencies(&self) -> Vec<f64> {
        let nf = self.embedding_size / 4;
        let fmax = self
            .max_frequency
            .unwrap_or_else(|| ((self.resolution[0].max(self.resolution[1]) as f64 - 1.0) / 2.0).max(1.0));
        let fmin = 0.5f64.min(fmax);
        (0..nf)
            .map(|j| if nf == 1 { fmax } else { fmin * (fmax / fmin).powf(j as f64 / (nf - 1) as f64) })
            .collect()
    }

    /// `[sin, cos](2 pi f u / range)` for u = y, x and every frequency: `[H*W, E]`, row-major.
    pub fn embedding(&self, grid: &[[f64; 2]]) -> Vec<f32> {
        let freqs = self.frequencies();
        let span = self.coord_range[1] - self.coord_range[0];
        let mut out = Vec::with_capacity(grid.len() * self.embedding_size);
        for p in grid {
            for u in p {
                for f in &freqs {
                    let a = 2.0 * std::f64::consts::PI * f * u / span;
                    out.push(a.sin() as f32);
                    out.push(a.cos() as f32);
                }
            }
        }
        out
    }

    /// Layer sizes `(in, out)`, hidden layers then the output layer.
    pub fn layers(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        let mut d_in = self.embedding_size;
        for _ in 0..self.depth {
            v.push((d_in, self.width));
            d_in = self.width;
        }
        v.push((d_in, self.out_channels));
        v
    }

    pub fn params_per_sample(&self) -> usize {
        self.layers().iter().map(|(i, o)| i * o + o).sum()
    }
}

/// Weights `[n, in, out]` and biases `[n, 1, out]` per layer, last layer linear.
#[derive(Module, Debug)]
pub struct SirenParams<B: Backend> {
    pub weights: Vec<Param<Tensor<B, 3>>>,
    pub biases: Vec<Param<Tensor<B, 3>>>,
}

impl<B: Backend> SirenParams<B> {
    /// Host copies named `layers.{l}.weight` / `layers.{l}.bias`, as in the safetensors export.
    pub fn export(&self) -> Vec<NamedTensor> {
        let mut out = Vec::new();
        for (l, (w, b)) in self.weights.iter().zip(&self.biases).enumerate() {
            for (kind, t) in [("weight", w.val()), ("bias", b.val())] {
                out.push(NamedTensor { name: format!("layers.{l}.{kind}"), shape: t.dims().to_vec(), data: tensor_to_vec(t) });
            }
        }
        out
    }
}

/// A batch of image SIRENs on a fixed grid.
pub struct SirenDiffrep<B: SineBackend> {
    config: SirenConfig,
    /// `[H*W, E]` embedding of the grid, shared by all SIRENs.
    embedding: Tensor<B, 2>,
}

impl<B: SineBackend> SirenDiffrep<B> {
    pub fn new(config: SirenConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let grid = config.grid();
        let emb = config.embedding(&grid);
        let embedding = tensor_from_vec(emb, [grid.len(), config.embedding_size], device);
        Ok(Self { config, embedding })
    }

    pub fn config(&self) -> &SirenConfig {
        &self.config
    }

    /// The forward pass on any backend.
    pub fn forward(&self, params: &SirenParams<B>) -> Tensor<B, 4> {
        let n = params.weights[0].dims()[0];
        let [npix, e] = self.embedding.dims();
        let h = siren_mlp(params, self.embedding.clone().unsqueeze::<3>().expand([n, npix, e]), self.config.omega);
        let [hh, ww] = self.config.resolution;
        h.reshape([n, hh, ww, self.config.out_channels]).permute([0, 3, 1, 2])
    }

    /// SIREN initialisation per sample (see [`init_siren_params`]).
    pub fn init_params(&self, seeds: &[u64], device: &B::Device) -> Result<SirenParams<B>> {
        init_siren_params(&self.config, seeds, device)
    }
}

/// The sine MLP on embedded coordinates `h` (`[n, P, E]`): `[n, P, out_channels]`.
pub fn siren_mlp<B: SineBackend>(params: &SirenParams<B>, mut h: Tensor<B, 3>, omega: f64) -> Tensor<B, 3> {
    let last = params.weights.len() - 1;
    for (l, (w, b)) in params.weights.iter().zip(&params.biases).enumerate() {
        h = h.matmul(w.val()) + b.val();
        if l < last {
            h = sine(h, omega);
        }
    }
    h
}

/// SIREN initialisation per sample: hidden weights `U(+-sqrt(6/in)/omega)`, biases
/// `U(+-1/sqrt(in))`; the output layer starts at zero so that `r(theta_0) = 0`, the
/// separated-noise starting point of ALGORITHM.md §4. Only `config.layers()` and `omega` matter.
pub fn init_siren_params<B: Backend>(config: &SirenConfig, seeds: &[u64], device: &B::Device) -> Result<SirenParams<B>> {
    if seeds.is_empty() {
        bail!("siren: at least one sample is needed");
    }
    let layers = config.layers();
    let mut ws: Vec<Vec<f32>> = layers.iter().map(|_| Vec::new()).collect();
    let mut bs: Vec<Vec<f32>> = layers.iter().map(|_| Vec::new()).collect();
    for &seed in seeds {
        let mut rng = rng_for(seed, "siren-init");
        for (l, &(i, o)) in layers.iter().enumerate() {
            let output = l + 1 == layers.len();
            let wb = (6.0 / i as f64).sqrt() / config.omega;
            let bb = 1.0 / (i as f64).sqrt();
            for _ in 0..i * o {
                ws[l].push(if output { 0.0 } else { rng.random_range(-wb..wb) as f32 });
            }
            for _ in 0..o {
                bs[l].push(if output { 0.0 } else { rng.random_range(-bb..bb) as f32 });
            }
        }
    }
    let n = seeds.len();
    let weights = layers
        .iter()
        .zip(ws)
        .map(|(&(i, o), w)| Param::from_tensor(tensor_from_vec(w, [n, i, o], device)))
        .collect();
    let biases = layers
        .iter()
        .zip(bs)
        .map(|(&(_, o), b)| Param::from_tensor(tensor_from_vec(b, [n, 1, o], device)))
        .collect();
    Ok(SirenParams { weights, biases })
}

impl<B: AutodiffBackend + SineBackend> Diffrep<B> for SirenDiffrep<B> {
    type Params = SirenParams<B>;

    fn name(&self) -> &'static str {
        "siren"
    }

    fn render_shape(&self) -> [usize; 3] {
        let [h, w] = self.config.resolution;
        [self.config.out_channels, h, w]
    }

    fn init(&self, seeds: &[u64], device: &B::Device) -> Result<Self::Params> {
        self.init_params(seeds, device)
    }

    fn render(&self, params: &Self::Params) -> Tensor<B, 4> {
        self.forward(params)
    }

    fn export(&self, params: &Self::Params) -> Vec<NamedTensor> {
        params.export()
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "diffrep": "siren",
            "config": self.config,
            "frequencies": self.config.frequencies(),
            "params_per_sample": self.config.params_per_sample(),
        })
    }
}
