//! The SIREN panorama (paper §4.2, ALGORITHM.md §8): the image SIREN on cylinder coordinates
//! `(y, x)`, `y` in `[-1, 1]` the height and `x` in `[0, 1)` the azimuth. The `x` embedding uses
//! whole numbers of cycles per turn, so the representation is exactly periodic in azimuth.
//! A view is a pinhole camera at the cylinder's axis; its pixels look up the SIREN at the
//! cylinder coordinates of their rays (the view grid `B x H x W x 2` of the paper).

use std::f64::consts::PI;

use anyhow::{bail, Result};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::cameras::{Camera, CylinderViews};
use super::sine::SineBackend;
// The MLP's defaults are the image SIREN's.
use super::siren::{d_depth, d_embedding, d_omega, d_out, d_width, init_siren_params, siren_mlp, SirenConfig, SirenParams};
use super::{Diffrep, MultiviewDiffrep, NamedTensor};
use crate::tensor_util::tensor_from_vec;

/// Panorama SIREN; the MLP is the image SIREN's, the views a [`CylinderViews`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanoramaConfig {
    #[serde(default = "d_out")]
    pub out_channels: usize,
    /// Embedding size: 4 x frequencies (sin and cos, for y and for x).
    #[serde(default = "d_embedding")]
    pub embedding_size: usize,
    #[serde(default = "d_depth")]
    pub depth: usize,
    #[serde(default = "d_width")]
    pub width: usize,
    #[serde(default = "d_omega")]
    pub omega: f64,
    /// Highest `y` frequency in cycles over `[-1, 1]`; `None` = `(H - 1) / 2`.
    #[serde(default)]
    pub max_frequency_y: Option<f64>,
    /// Highest `x` frequency in whole cycles per turn; `None` = half the panorama width.
    #[serde(default)]
    pub max_frequency_x: Option<usize>,
    #[serde(default)]
    pub views: CylinderViews,
}

impl Default for PanoramaConfig {
    fn default() -> Self {
        Self {
            out_channels: d_out(),
            embedding_size: d_embedding(),
            depth: d_depth(),
            width: d_width(),
            omega: d_omega(),
            max_frequency_y: None,
            max_frequency_x: None,
            views: CylinderViews::default(),
        }
    }
}

impl PanoramaConfig {
    /// The demo-size panorama of the CPU benchmark and the analytic-prior tests: 6 views of
    /// 8x12 with a 24 mm lens (74 degrees, so neighbours overlap), a 48-wide 2-layer SIREN.
    pub fn demo() -> Self {
        Self {
            out_channels: 3,
            embedding_size: 32,
            depth: 2,
            width: 48,
            views: CylinderViews { views: 6, focal_mm: 24.0, resolution: [8, 12], ..Default::default() },
            ..Default::default()
        }
    }

    /// The image-SIREN config with the same MLP (for its validation, layers and init).
    pub fn siren(&self) -> SirenConfig {
        SirenConfig {
            resolution: self.views.resolution,
            out_channels: self.out_channels,
            embedding_size: self.embedding_size,
            max_frequency: self.max_frequency_y,
            depth: self.depth,
            width: self.width,
            omega: self.omega,
            coord_range: [-1.0, 1.0],
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.views.validate()?;
        self.siren().validate()?;
        if self.max_frequency_x == Some(0) {
            bail!("panorama.max_frequency_x must be at least 1");
        }
        Ok(())
    }

    /// Width of the whole panorama image: the views' pixel pitch at their centre, once around.
    pub fn panorama_width(&self) -> Result<usize> {
        let (fx, _) = self.views.fov()?;
        Ok(((PI * self.views.resolution[1] as f64 / (fx / 2.0).tan()).round() as usize).max(1))
    }

    /// `y` frequencies (cycles over `[-1, 1]`), geometric as the image SIREN's.
    pub fn frequencies_y(&self) -> Vec<f64> {
        self.siren().frequencies()
    }

    /// `x` frequencies: whole cycles per turn, roughly geometric from 1 to the maximum,
    /// strictly increasing.
    pub fn frequencies_x(&self) -> Result<Vec<usize>> {
        let nf = self.embedding_size / 4;
        let kmax = match self.max_frequency_x {
            Some(k) => k,
            None => (self.panorama_width()? / 2).max(1),
        }
        .max(nf);
        let mut out: Vec<usize> = Vec::with_capacity(nf);
        for j in 0..nf {
            let g = if nf == 1 { kmax as f64 } else { (kmax as f64).powf(j as f64 / (nf - 1) as f64) };
            let k = (g.round() as usize).max(out.last().map_or(1, |l| l + 1));
            out.push(k);
        }
        Ok(out)
    }
}

/// Cylinder coordinates `(y, x)` of a ray direction: `y = -h / tan(fov_y / 2)` for the height
/// `h` of the ray on the unit cylinder (so a level view spans `y` in `[-1, 1]`, top row first),
/// `x` the azimuth in turns, increasing to the right of a view, wrapped into `[0, 1)`.
pub fn cylinder_coords(d: [f64; 3], fov_y: f64) -> [f64; 2] {
    let rho = (d[0] * d[0] + d[2] * d[2]).sqrt();
    let h = d[1] / rho;
    let x = (-d[0].atan2(d[2]) / (2.0 * PI)).rem_euclid(1.0);
    [-h / (fov_y / 2.0).tan(), if x >= 1.0 { 0.0 } else { x }]
}

/// A batch of panorama views.
#[derive(Clone, Debug)]
pub struct PanoramaViews<B: Backend> {
    pub cameras: Vec<Camera>,
    /// `(y, x)` of every pixel, row-major over (sample, view, row, column).
    pub coords: Vec<[f64; 2]>,
    /// `[n, V * H * W, E]`.
    embedding: Tensor<B, 3>,
}

/// A batch of `n` panorama SIRENs.
pub struct PanoramaDiffrep<B: SineBackend> {
    config: PanoramaConfig,
    freqs_y: Vec<f64>,
    freqs_x: Vec<usize>,
    width_full: usize,
    /// `[H * W_full, E]`: the whole panorama grid.
    full_embedding: Tensor<B, 2>,
}

impl<B: SineBackend> PanoramaDiffrep<B> {
    pub fn new(config: PanoramaConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let freqs_y = config.frequencies_y();
        let freqs_x = config.frequencies_x()?;
        let width_full = config.panorama_width()?;
        let mut rep = Self { config, freqs_y, freqs_x, width_full, full_embedding: Tensor::zeros([1, 1], device) };
        let grid = rep.panorama_grid();
        rep.full_embedding = tensor_from_vec(rep.embedding(&grid), [grid.len(), rep.config.embedding_size], device);
        Ok(rep)
    }

    pub fn config(&self) -> &PanoramaConfig {
        &self.config
    }

    /// `[H, W_full]` of the whole panorama image.
    pub fn panorama_resolution(&self) -> [usize; 2] {
        [self.config.views.resolution[0], self.width_full]
    }

    /// Pixel centres of the whole panorama, row-major `(y, x)`.
    pub fn panorama_grid(&self) -> Vec<[f64; 2]> {
        let [h, w] = self.panorama_resolution();
        (0..h)
            .flat_map(|i| (0..w).map(move |j| [2.0 * (i as f64 + 0.5) / h as f64 - 1.0, (j as f64 + 0.5) / w as f64]))
            .collect()
    }

    /// The sinusoidal embedding of `(y, x)` points, `[P, E]` row-major: for `y`,
    /// `[sin, cos](pi f y)` per frequency `f` (cycles over the span 2), then for `x`,
    /// `[sin, cos](2 pi k x)` per whole frequency `k`, with `x` first wrapped into `[0, 1)`.
    pub fn embedding(&self, pts: &[[f64; 2]]) -> Vec<f32> {
        let mut out = Vec::with_capacity(pts.len() * self.config.embedding_size);
        for &[y, x] in pts {
            for f in &self.freqs_y {
                let a = PI * f * y;
                out.push(a.sin() as f32);
                out.push(a.cos() as f32);
            }
            let xw = x.rem_euclid(1.0);
            for &k in &self.freqs_x {
                let a = 2.0 * PI * k as f64 * xw;
                out.push(a.sin() as f32);
                out.push(a.cos() as f32);
            }
        }
        out
    }

    /// The SIRENs at arbitrary `(y, x)` points, the same points for every sample: `[n, P, C]`.
    pub fn render_points(&self, params: &SirenParams<B>, pts: &[[f64; 2]]) -> Tensor<B, 3> {
        let device = params.weights[0].val().device();
        let n = params.weights[0].dims()[0];
        let e = self.config.embedding_size;
        let emb: Tensor<B, 2> = tensor_from_vec(self.embedding(pts), [pts.len(), e], &device);
        siren_mlp(params, emb.unsqueeze::<3>().expand([n, pts.len(), e]), self.config.omega)
    }

    /// The whole panorama, `[n, C, H, W_full]`.
    pub fn render_panorama(&self, params: &SirenParams<B>) -> Tensor<B, 4> {
        let n = params.weights[0].dims()[0];
        let [p, e] = self.full_embedding.dims();
        let h = siren_mlp(params, self.full_embedding.clone().unsqueeze::<3>().expand([n, p, e]), self.config.omega);
        let [hh, ww] = self.panorama_resolution();
        h.reshape([n, hh, ww, self.config.out_channels]).permute([0, 3, 1, 2])
    }

    /// Prepares given cameras (`n * V` of them, sample-major) for rendering.
    pub fn prepare(&self, cameras: Vec<Camera>, device: &B::Device) -> Result<PanoramaViews<B>> {
        let v = self.config.views.views;
        if cameras.is_empty() || !cameras.len().is_multiple_of(v) {
            bail!("panorama: {} cameras is not a positive multiple of {v} views per sample", cameras.len());
        }
        let n = cameras.len() / v;
        let (_, fov_y) = self.config.views.fov()?;
        let [h, w] = self.config.views.resolution;
        let mut coords = Vec::with_capacity(cameras.len() * h * w);
        for c in &cameras {
            if c.resolution != [h, w] {
                bail!("panorama: a camera of {:?} pixels, the views are {:?}", c.resolution, [h, w]);
            }
            coords.extend(c.directions().into_iter().map(|d| cylinder_coords(d, fov_y)));
        }
        let e = self.config.embedding_size;
        let embedding = tensor_from_vec(self.embedding(&coords), [n, v * h * w, e], device);
        Ok(PanoramaViews { cameras, coords, embedding })
    }

    /// Disagreement of overlapping views (see [`MultiviewDiffrep::overlap_disagreement`]):
    /// each view's pixels are binned into the cells of the whole panorama grid (a view's
    /// values in one cell averaged), and in every cell that two or more views reach, the
    /// spread of the views' values about their mean is taken; returned per sample is the RMS
    /// over such cells and channels. Consistent views give the within-cell spread of the
    /// panorama itself (small at matched resolution), not zero.
    pub fn disagreement(&self, coords: &[[f64; 2]], images: &[f32]) -> Option<Vec<f64>> {
        let v = self.config.views.views;
        let c = self.config.out_channels;
        let [h, w] = self.config.views.resolution;
        let [ph, pw] = self.panorama_resolution();
        let per_view = h * w;
        let n = coords.len() / (v * per_view);
        if images.len() != n * v * c * per_view || n == 0 {
            return None;
        }
        let cells = ph * pw;
        let mut out = Vec::with_capacity(n);
        for s in 0..n {
            // sums[(cell * v + view) * (c + 1) + ch], the last slot a count.
            let mut sums = vec![0.0f64; cells * v * (c + 1)];
            for view in 0..v {
                let row0 = (s * v + view) * per_view;
                for p in 0..per_view {
                    let [y, x] = coords[row0 + p];
                    let ci = (((y + 1.0) / 2.0 * ph as f64).floor().max(0.0) as usize).min(ph - 1);
                    let cj = ((x * pw as f64).floor() as usize) % pw;
                    let base = ((ci * pw + cj) * v + view) * (c + 1);
                    for ch in 0..c {
                        sums[base + ch] += images[((s * v + view) * c + ch) * per_view + p] as f64;
                    }
                    sums[base + c] += 1.0;
                }
            }
            let (mut acc, mut count) = (0.0, 0usize);
            for cell in 0..cells {
                let seen: Vec<usize> = (0..v).filter(|&k| sums[(cell * v + k) * (c + 1) + c] > 0.0).collect();
                if seen.len() < 2 {
                    continue;
                }
                for ch in 0..c {
                    let means: Vec<f64> = seen
                        .iter()
                        .map(|&k| {
                            let b = (cell * v + k) * (c + 1);
                            sums[b + ch] / sums[b + c]
                        })
                        .collect();
                    let m = means.iter().sum::<f64>() / means.len() as f64;
                    acc += means.iter().map(|x| (x - m).powi(2)).sum::<f64>() / means.len() as f64;
                    count += 1;
                }
            }
            if count == 0 {
                return None;
            }
            out.push((acc / count as f64).sqrt());
        }
        Some(out)
    }
}

impl<B: AutodiffBackend + SineBackend> Diffrep<B> for PanoramaDiffrep<B> {
    type Params = SirenParams<B>;

    fn name(&self) -> &'static str {
        "panorama"
    }

    /// The whole panorama.
    fn render_shape(&self) -> [usize; 3] {
        let [h, w] = self.panorama_resolution();
        [self.config.out_channels, h, w]
    }

    fn init(&self, seeds: &[u64], device: &B::Device) -> Result<Self::Params> {
        init_siren_params(&self.config.siren(), seeds, device)
    }

    fn render(&self, params: &Self::Params) -> Tensor<B, 4> {
        self.render_panorama(params)
    }

    fn export(&self, params: &Self::Params) -> Vec<NamedTensor> {
        params.export()
    }

    fn describe(&self) -> serde_json::Value {
        let (fx, fy) = self.config.views.fov().unwrap_or((f64::NAN, f64::NAN));
        serde_json::json!({
            "diffrep": "panorama",
            "config": self.config,
            "fov_deg": [fx.to_degrees(), fy.to_degrees()],
            "panorama_resolution": self.panorama_resolution(),
            "coverage": self.config.views.coverage().ok(),
            "frequencies_y": self.freqs_y,
            "frequencies_x": self.freqs_x,
            "params_per_sample": self.config.siren().params_per_sample(),
        })
    }
}

impl<B: AutodiffBackend + SineBackend> MultiviewDiffrep<B> for PanoramaDiffrep<B> {
    type Views = PanoramaViews<B>;

    fn views_per_sample(&self) -> usize {
        self.config.views.views
    }

    fn view_shape(&self) -> [usize; 3] {
        let [h, w] = self.config.views.resolution;
        [self.config.out_channels, h, w]
    }

    fn sample_views(&self, rngs: &mut [ChaCha8Rng], device: &B::Device) -> Result<Self::Views> {
        let mut cams = Vec::new();
        for rng in rngs.iter_mut() {
            cams.extend(self.config.views.sample(rng)?);
        }
        self.prepare(cams, device)
    }

    fn render_views(&self, params: &Self::Params, views: &Self::Views) -> Tensor<B, 4> {
        let h = siren_mlp(params, views.embedding.clone(), self.config.omega);
        let n = h.dims()[0];
        let [c, hh, ww] = MultiviewDiffrep::<B>::view_shape(self);
        h.reshape([n * self.config.views.views, hh, ww, c]).permute([0, 3, 1, 2])
    }

    fn cameras<'a>(&self, views: &'a Self::Views) -> &'a [Camera] {
        &views.cameras
    }

    fn view_suffixes(&self, views: &Self::Views) -> Vec<Option<String>> {
        vec![None; views.cameras.len()]
    }

    fn overlap_disagreement(&self, views: &Self::Views, images: &[f32]) -> Option<Vec<f64>> {
        self.disagreement(&views.coords, images)
    }
}
