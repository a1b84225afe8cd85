//! SJC's voxel NeRF (ALGORITHM.md §6, bottom; paper §4.3): a density grid and a feature grid
//! (4-channel SD latents, or RGB for the analytic prior) over the box `[-b, b]^3`, trilinear
//! lookups with `align_corners = false` (zero padding, as `grid_sample`), density
//! `softplus(g * exp(d_scale) + shift)`, ray marching at half a voxel, alpha compositing with
//! the transmittance, and a small background texture looked up by ray direction and blended
//! with weight `1 - sum(w)`. The density grid starts at ProlificDreamer's object-centric
//! `lambda (1 - ||x|| / r)`. Everything that depends on the cameras only (sample positions,
//! trilinear corners and weights) is computed once per batch of views on the host.
//!
//! Samples are laid out densely, `K` per ray (the longest chord through the box), padding
//! masked. As SJC (`ray_march_weight_thres`), samples whose compositing weight is below
//! `weight_threshold` (1e-4) contribute no colour (their weight still counts in the
//! background's `1 - sum(w)`, the opacity and the depth); the mask carries no gradient.

use anyhow::{bail, Result};
use burn::module::{Module, Param};
use burn::tensor::{activation::softplus, backend::AutodiffBackend, backend::Backend, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::cameras::{Camera, SphereViews};
use super::{Diffrep, MultiviewDiffrep, NamedTensor};
use crate::noise::{normal_vec, rng_for};
use crate::tensor_util::{tensor_from_vec, tensor_to_vec};

fn d_grid() -> usize {
    100
}
fn d_bound() -> f64 {
    0.75
}
fn d_channels() -> usize {
    4
}
fn d_shift() -> f64 {
    -1.0
}
fn d_lambda() -> f64 {
    10.0
}
fn d_blob_r() -> f64 {
    0.5
}
fn d_one() -> f64 {
    1.0
}
fn d_bg() -> usize {
    4
}
fn d_step() -> f64 {
    0.5
}
fn yes() -> bool {
    true
}
fn d_thres() -> f64 {
    1e-4
}
fn d_turntable() -> usize {
    16
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoxNerfConfig {
    /// Cells per axis (SJC: 100).
    #[serde(default = "d_grid")]
    pub grid: usize,
    /// Half side of the box `[-b, b]^3` (SJC: bbox_len 1.5).
    #[serde(default = "d_bound")]
    pub bound: f64,
    /// Feature channels: 4 for SD latents, 3 for RGB.
    #[serde(default = "d_channels")]
    pub channels: usize,
    /// `shift` in `softplus(g * exp(d_scale) + shift)`.
    #[serde(default = "d_shift")]
    pub density_shift: f64,
    /// `d_scale` in the same.
    #[serde(default)]
    pub density_log_scale: f64,
    /// ProlificDreamer's object-centric init `lambda (1 - ||x|| / r)` of the density grid
    /// (0 = SJC's zero init).
    #[serde(default = "d_lambda")]
    pub blob_lambda: f64,
    #[serde(default = "d_blob_r")]
    pub blob_radius: f64,
    /// Std of the N(0, s^2) feature init (SJC: 1).
    #[serde(default = "d_one")]
    pub feature_init_std: f64,
    /// Side of the background texture (indexed by ray azimuth and elevation); starts at 0.
    #[serde(default = "d_bg")]
    pub background: usize,
    /// Ray-marching step in voxels.
    #[serde(default = "d_step")]
    pub step_ratio: f64,
    #[serde(default)]
    pub views: SphereViews,
    /// View-dependent prompt suffixes ("front view", ...), as DreamFusion and SJC.
    #[serde(default = "yes")]
    pub view_prompts: bool,
    /// Samples of compositing weight below this contribute no colour (SJC's
    /// `ray_march_weight_thres`, 1e-4; 0 = every sample).
    #[serde(default = "d_thres")]
    pub weight_threshold: f64,
    /// Frames of the turntable the experiment harness writes (`turntable.png`, `.gif`).
    #[serde(default = "d_turntable")]
    pub turntable: usize,
}

impl Default for VoxNerfConfig {
    fn default() -> Self {
        Self {
            grid: d_grid(),
            bound: d_bound(),
            channels: d_channels(),
            density_shift: d_shift(),
            density_log_scale: 0.0,
            blob_lambda: d_lambda(),
            blob_radius: d_blob_r(),
            feature_init_std: d_one(),
            background: d_bg(),
            step_ratio: d_step(),
            views: SphereViews::default(),
            view_prompts: true,
            weight_threshold: d_thres(),
            turntable: d_turntable(),
        }
    }
}

impl VoxNerfConfig {
    /// The demo-size NeRF of the CPU benchmark and the analytic-prior tests: a 10^3 RGB grid,
    /// 4 views of 8x8 a batch, no view prompts.
    pub fn demo() -> Self {
        Self {
            grid: 10,
            bound: 0.5,
            channels: 3,
            feature_init_std: 0.0,
            view_prompts: false,
            views: SphereViews { views: 4, resolution: [8, 8], ..Default::default() },
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.grid == 0 {
            bail!("voxnerf.grid (cells per axis) must be at least 1, got 0");
        }
        crate::limits::at_most("voxnerf.grid (cells per axis)", self.grid, crate::limits::MAX_VOXEL_GRID)?;
        crate::limits::at_most("voxnerf.channels", self.channels, crate::limits::MAX_CHANNELS)?;
        crate::limits::at_most("voxnerf.background (texture side)", self.background, crate::limits::MAX_SIDE)?;
        crate::limits::at_most("voxnerf.turntable (frames)", self.turntable, crate::limits::MAX_TURNTABLE)?;
        if self.channels == 0 || self.background == 0 {
            bail!("voxnerf.channels and voxnerf.background must be at least 1");
        }
        if !(self.bound.is_finite() && self.bound > 0.0) {
            bail!("voxnerf.bound must be positive, got {}", self.bound);
        }
        if !(self.weight_threshold.is_finite() && (0.0..1.0).contains(&self.weight_threshold)) {
            bail!("voxnerf.weight_threshold must be in [0, 1), got {}", self.weight_threshold);
        }
        if self.turntable == 0 {
            bail!("voxnerf.turntable (frames) must be at least 1, got 0");
        }
        if !(self.step_ratio.is_finite() && self.step_ratio > 0.0) {
            bail!("voxnerf.step_ratio must be positive, got {}", self.step_ratio);
        }
        if !(self.blob_radius.is_finite() && self.blob_radius > 0.0 && self.blob_lambda.is_finite()) {
            bail!("voxnerf.blob_radius must be positive and blob_lambda finite");
        }
        let finite = self.feature_init_std.is_finite() && self.density_shift.is_finite() && self.density_log_scale.is_finite();
        if !(finite && self.feature_init_std >= 0.0) {
            bail!("voxnerf.feature_init_std, density_shift and density_log_scale must be finite (std >= 0)");
        }
        self.views.validate(Some(self.bound))
    }

    pub fn voxel(&self) -> f64 {
        2.0 * self.bound / self.grid as f64
    }

    pub fn step(&self) -> f64 {
        self.step_ratio * self.voxel()
    }

    /// Samples per ray: enough for the box's diagonal.
    pub fn samples_per_ray(&self) -> usize {
        (2.0 * 3f64.sqrt() * self.bound / self.step()).ceil() as usize
    }

    /// Centre of cell `i` along an axis (align_corners = false).
    pub fn cell_centre(&self, i: usize) -> f64 {
        -self.bound + (i as f64 + 0.5) * self.voxel()
    }
}

/// Per sample: density `[n, N^3]`, features `[n, N^3, C]`, background `[n, G^2, C]`. Cell
/// `(ix, iy, iz)` is at flat index `(iz * N + iy) * N + ix`.
#[derive(Module, Debug)]
pub struct VoxNerfParams<B: Backend> {
    pub density: Param<Tensor<B, 2>>,
    pub features: Param<Tensor<B, 3>>,
    pub background: Param<Tensor<B, 3>>,
}

/// A batch of NeRF views, prepared.
#[derive(Clone, Debug)]
pub struct NerfViews<B: Backend> {
    pub cameras: Vec<Camera>,
    /// Trilinear corners, `[n * M * 8]` flat indices into the `n * N^3` cells.
    corners: Tensor<B, 1, Int>,
    /// `[n * M, 8]` trilinear weights (0 for padding and out-of-range corners).
    weights: Tensor<B, 2>,
    /// `[n * V * R, K]`: 1 for samples inside the box on the ray, else 0.
    mask: Tensor<B, 2>,
    /// `[n * V * R, K]` ray parameter of every sample.
    t: Tensor<B, 2>,
    /// Background bilinear corners `[n * V * R * 4]` into `n * G^2` and weights `[n * V * R, 4]`.
    bg_corners: Tensor<B, 1, Int>,
    bg_weights: Tensor<B, 2>,
}

/// Output of [`VoxNerfDiffrep::render_full`].
pub struct NerfRender<B: Backend> {
    /// `[n * V, C, H, W]`.
    pub image: Tensor<B, 4>,
    /// `sum w`, `[n * V, H, W]`.
    pub opacity: Tensor<B, 3>,
    /// `sum w t / sum w` (0 where nothing is hit), `[n * V, H, W]`.
    pub depth: Tensor<B, 3>,
    /// Compositing weights `w` of every sample, `[n * V * H * W, K]` (0 for padding).
    pub weights: Tensor<B, 2>,
}

/// A batch of `n` voxel NeRFs.
pub struct VoxNerfDiffrep {
    config: VoxNerfConfig,
}

/// Ray-box intersection `[t0, t1]` with `t0 >= 0`, or `None`.
fn ray_box(o: [f64; 3], d: [f64; 3], b: f64) -> Option<(f64, f64)> {
    let (mut t0, mut t1) = (0.0f64, f64::INFINITY);
    for k in 0..3 {
        if d[k].abs() < 1e-12 {
            if o[k].abs() > b {
                return None;
            }
            continue;
        }
        let (a, c) = ((-b - o[k]) / d[k], (b - o[k]) / d[k]);
        t0 = t0.max(a.min(c));
        t1 = t1.min(a.max(c));
    }
    (t1 > t0).then_some((t0, t1))
}

impl VoxNerfDiffrep {
    pub fn new(config: VoxNerfConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    pub fn config(&self) -> &VoxNerfConfig {
        &self.config
    }

    /// Parameters from host arrays (one sample each): density `N^3`, features `N^3 x C`
    /// (cell-major), background `G^2 x C`.
    pub fn params_from_host<B: Backend>(&self, density: Vec<Vec<f32>>, features: Vec<Vec<f32>>, background: Vec<Vec<f32>>, device: &B::Device) -> Result<VoxNerfParams<B>> {
        let (n, c, g) = (density.len(), self.config.channels, self.config.background);
        let cells = self.config.grid.pow(3);
        if n == 0 || features.len() != n || background.len() != n {
            bail!("voxnerf: one density, feature and background array per sample");
        }
        if density.iter().any(|d| d.len() != cells) || features.iter().any(|f| f.len() != cells * c) || background.iter().any(|b| b.len() != g * g * c) {
            bail!("voxnerf: grid arrays of the wrong size");
        }
        Ok(VoxNerfParams {
            density: Param::from_tensor(tensor_from_vec(density.concat(), [n, cells], device)),
            features: Param::from_tensor(tensor_from_vec(features.concat(), [n, cells, c], device)),
            background: Param::from_tensor(tensor_from_vec(background.concat(), [n, g * g, c], device)),
        })
    }

    /// ProlificDreamer's object-centric density `lambda (1 - ||x|| / r)` at the cell centres.
    pub fn blob_density(&self) -> Vec<f32> {
        let n = self.config.grid;
        let mut out = Vec::with_capacity(n * n * n);
        for iz in 0..n {
            for iy in 0..n {
                for ix in 0..n {
                    let p = [self.config.cell_centre(ix), self.config.cell_centre(iy), self.config.cell_centre(iz)];
                    let r = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
                    out.push((self.config.blob_lambda * (1.0 - r / self.config.blob_radius)) as f32);
                }
            }
        }
        out
    }

    /// Prepares cameras (`n * V`, sample-major, `V` = the configured views) for rendering.
    pub fn prepare<B: Backend>(&self, cameras: Vec<Camera>, device: &B::Device) -> Result<NerfViews<B>> {
        self.prepare_with(cameras, self.config.views.views, device)
    }

    /// Prepares `n * per_sample` cameras, sample-major (e.g. a turntable of any length).
    pub fn prepare_with<B: Backend>(&self, cameras: Vec<Camera>, per_sample: usize, device: &B::Device) -> Result<NerfViews<B>> {
        let cfg = &self.config;
        let v = per_sample;
        if v == 0 || cameras.is_empty() || !cameras.len().is_multiple_of(v) {
            bail!("voxnerf: {} cameras is not a positive multiple of {v} views per sample", cameras.len());
        }
        let [h, w] = cfg.views.resolution;
        let (ng, k, step, b) = (cfg.grid, cfg.samples_per_ray(), cfg.step(), cfg.bound);
        let cells = ng * ng * ng;
        let rays = cameras.len() * h * w;
        let mut corners = Vec::with_capacity(rays * k * 8);
        let mut weights = Vec::with_capacity(rays * k * 8);
        let mut mask = Vec::with_capacity(rays * k);
        let mut ts = Vec::with_capacity(rays * k);
        let mut bgc = Vec::with_capacity(rays * 4);
        let mut bgw = Vec::with_capacity(rays * 4);
        let gb = cfg.background;
        for (ci, cam) in cameras.iter().enumerate() {
            if cam.resolution != [h, w] {
                bail!("voxnerf: a camera of {:?} pixels, the views are {:?}", cam.resolution, [h, w]);
            }
            let o = cam.position;
            if o.iter().all(|x| x.abs() < b) {
                bail!("voxnerf: camera {ci} at {o:?} is inside the grid bounds [-{b}, {b}]^3");
            }
            let s = ci / v;
            let cell0 = (s * cells) as i64;
            for d in cam.directions() {
                let hit = ray_box(o, d, b);
                for kk in 0..k {
                    let t = hit.map_or(0.0, |(t0, _)| t0 + (kk as f64 + 0.5) * step);
                    let inside = hit.is_some_and(|(_, t1)| t < t1);
                    mask.push(if inside { 1.0f32 } else { 0.0 });
                    ts.push(t as f32);
                    if !inside {
                        corners.extend([cell0; 8]);
                        weights.extend([0.0f32; 8]);
                        continue;
                    }
                    // Continuous cell coordinates, align_corners = false: centre of cell i at i.
                    let u = [0, 1, 2].map(|a| (o[a] + t * d[a] + b) / (2.0 * b) * ng as f64 - 0.5);
                    let base = u.map(|x| x.floor());
                    let frac = [0, 1, 2].map(|a| u[a] - base[a]);
                    for corner in 0..8 {
                        let off = [corner & 1, (corner >> 1) & 1, (corner >> 2) & 1];
                        let idx = [0, 1, 2].map(|a| base[a] as i64 + off[a] as i64);
                        let wt: f64 = (0..3).map(|a| if off[a] == 1 { frac[a] } else { 1.0 - frac[a] }).product();
                        if idx.iter().all(|&i| i >= 0 && i < ng as i64) {
                            corners.push(cell0 + (idx[2] * ng as i64 + idx[1]) * ng as i64 + idx[0]);
                            weights.push(wt as f32);
                        } else {
                            corners.push(cell0);
                            weights.push(0.0);
                        }
                    }
                }
                // Background: azimuth in turns (wrapping) x elevation in [0, 1], bilinear.
                let az = (d[0].atan2(d[2]) / (2.0 * std::f64::consts::PI)).rem_euclid(1.0);
                let el = d[1].clamp(-1.0, 1.0).asin() / std::f64::consts::PI + 0.5;
                let (ua, ue) = (az * gb as f64 - 0.5, (el * gb as f64 - 0.5).clamp(0.0, (gb - 1) as f64));
                let (fa, fe) = (ua.floor(), ue.floor());
                let (wa, we) = (ua - fa, ue - fe);
                for (da, de) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let ia = (fa as i64 + da).rem_euclid(gb as i64);
                    let ie = (fe as i64 + de).min(gb as i64 - 1);
                    bgc.push((s * gb * gb) as i64 + ie * gb as i64 + ia);
                    bgw.push(((if da == 1 { wa } else { 1.0 - wa }) * (if de == 1 { we } else { 1.0 - we })) as f32);
                }
            }
        }
        Ok(NerfViews {
            cameras,
            corners: Tensor::from_data(TensorData::new(corners, [rays * k * 8]), device),
            weights: tensor_from_vec(weights, [rays * k, 8], device),
            mask: tensor_from_vec(mask, [rays, k], device),
            t: tensor_from_vec(ts, [rays, k], device),
            bg_corners: Tensor::from_data(TensorData::new(bgc, [rays * 4]), device),
            bg_weights: tensor_from_vec(bgw, [rays, 4], device),
        })
    }

    /// Renders views with their opacity and depth.
    pub fn render_full<B: Backend>(&self, params: &VoxNerfParams<B>, views: &NerfViews<B>) -> NerfRender<B> {
        let cfg = &self.config;
        let c = cfg.channels;
        let [rays, k] = views.mask.dims();
        let nv = views.cameras.len();
        let [h, w] = cfg.views.resolution;
        let density = params.density.val();
        let [n, cells] = density.dims();
        let raw = density
            .reshape([n * cells])
            .select(0, views.corners.clone())
            .reshape([rays * k, 8])
            .mul(views.weights.clone())
            .sum_dim(1)
            .reshape([rays, k]);
        let sigma = softplus(raw.mul_scalar(cfg.density_log_scale.exp()).add_scalar(cfg.density_shift), 1.0) * views.mask.clone();
        let step = cfg.step();
        // T_k = exp(-step * sum_{j<k} sigma_j), alpha_k = 1 - exp(-step sigma_k), w = T alpha.
        let cum = sigma.clone().cumsum(1);
        let trans = (cum.clone() - sigma.clone()).mul_scalar(-step).exp();
        let alpha = sigma.mul_scalar(-step).exp().neg().add_scalar(1.0);
        let wts = trans * alpha; // [rays, k]
        let feats = params
            .features
            .val()
            .reshape([n * cells, c])
            .select(0, views.corners.clone())
            .reshape([rays * k, 8, c])
            .mul(views.weights.clone().reshape([rays * k, 8, 1]))
            .sum_dim(1)
            .reshape([rays, k, c]);
        let wc = if cfg.weight_threshold > 0.0 {
            let keep = wts.clone().detach().greater_elem(cfg.weight_threshold).float();
            wts.clone() * keep
        } else {
            wts.clone()
        };
        let color = (feats * wc.reshape([rays, k, 1])).sum_dim(1).reshape([rays, c]);
        let opacity = wts.clone().sum_dim(1); // [rays, 1]
        let g2 = params.background.dims()[1];
        let bg = params
            .background
            .val()
            .reshape([n * g2, c])
            .select(0, views.bg_corners.clone())
            .reshape([rays, 4, c])
            .mul(views.bg_weights.clone().reshape([rays, 4, 1]))
            .sum_dim(1)
            .reshape([rays, c]);
        let out = color + bg * opacity.clone().neg().add_scalar(1.0);
        let depth = (wts.clone() * views.t.clone()).sum_dim(1) / opacity.clone().clamp_min(1e-10);
        NerfRender {
            weights: wts,
            image: out.reshape([nv, h, w, c]).permute([0, 3, 1, 2]),
            opacity: opacity.reshape([nv, h, w]),
            depth: depth.reshape([nv, h, w]),
        }
    }

    /// Fresh parameters: blob density, N(0, std^2) features from the sample's `"voxnerf-init"`
    /// stream, zero background.
    pub fn init_params<B: Backend>(&self, seeds: &[u64], device: &B::Device) -> Result<VoxNerfParams<B>> {
        if seeds.is_empty() {
            bail!("voxnerf: at least one sample is needed");
        }
        let cells = self.config.grid.pow(3);
        let (c, g) = (self.config.channels, self.config.background);
        let blob = self.blob_density();
        let std = self.config.feature_init_std as f32;
        let feats = seeds.iter().map(|&s| normal_vec(&mut rng_for(s, "voxnerf-init"), cells * c).into_iter().map(|x| x * std).collect()).collect();
        self.params_from_host(vec![blob; seeds.len()], feats, vec![vec![0.0; g * g * c]; seeds.len()], device)
    }

    /// A turntable of `count` views per sample (equally spaced azimuths, middle elevation),
    /// prepared: render it with [`Self::render_full`] for `[n * count, C, H, W]`.
    pub fn turntable<B: Backend>(&self, count: usize, samples: usize, device: &B::Device) -> Result<NerfViews<B>> {
        let cams = self.config.views.turntable(count)?;
        self.prepare_with(std::iter::repeat_n(cams, samples).flatten().collect(), count, device)
    }
}

impl<B: AutodiffBackend> Diffrep<B> for VoxNerfDiffrep {
    type Params = VoxNerfParams<B>;

    fn name(&self) -> &'static str {
        "voxnerf"
    }

    /// One view (the front view at the middle elevation).
    fn render_shape(&self) -> [usize; 3] {
        let [h, w] = self.config.views.resolution;
        [self.config.channels, h, w]
    }

    fn init(&self, seeds: &[u64], device: &B::Device) -> Result<Self::Params> {
        self.init_params(seeds, device)
    }

    /// The front view of every sample, `[n, C, H, W]`.
    fn render(&self, params: &Self::Params) -> Tensor<B, 4> {
        let n = params.density.dims()[0];
        let device = params.density.val().device();
        let el = 0.5 * (self.config.views.elevation_deg[0] + self.config.views.elevation_deg[1]);
        let front = self.config.views.camera(0.0, el.to_radians()).expect("validated views");
        let views = self.prepare_with::<B>(vec![front; n], 1, &device).expect("validated views");
        self.render_full(params, &views).image
    }

    fn export(&self, params: &Self::Params) -> Vec<NamedTensor> {
        [("density", params.density.val().dims().to_vec(), tensor_to_vec(params.density.val())),
         ("features", params.features.val().dims().to_vec(), tensor_to_vec(params.features.val())),
         ("background", params.background.val().dims().to_vec(), tensor_to_vec(params.background.val()))]
            .into_iter()
            .map(|(name, shape, data)| NamedTensor { name: name.into(), shape, data })
            .collect()
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "diffrep": "voxnerf",
            "config": self.config,
            "samples_per_ray": self.config.samples_per_ray(),
            "params_per_sample": self.config.grid.pow(3) * (1 + self.config.channels) + self.config.background.pow(2) * self.config.channels,
        })
    }
}

impl<B: AutodiffBackend> MultiviewDiffrep<B> for VoxNerfDiffrep {
    type Views = NerfViews<B>;

    fn views_per_sample(&self) -> usize {
        self.config.views.views
    }

    fn view_shape(&self) -> [usize; 3] {
        Diffrep::<B>::render_shape(self)
    }

    fn sample_views(&self, rngs: &mut [ChaCha8Rng], device: &B::Device) -> Result<Self::Views> {
        let mut cams = Vec::new();
        for rng in rngs.iter_mut() {
            cams.extend(self.config.views.sample(rng)?);
        }
        self.prepare(cams, device)
    }

    fn render_views(&self, params: &Self::Params, views: &Self::Views) -> Tensor<B, 4> {
        self.render_full(params, views).image
    }

    fn cameras<'a>(&self, views: &'a Self::Views) -> &'a [Camera] {
        &views.cameras
    }

    fn view_suffixes(&self, views: &Self::Views) -> Vec<Option<String>> {
        views.cameras.iter().map(|c| self.config.view_prompts.then(|| format!("{} view", c.label()))).collect()
    }

    /// SJC's emptiness: per sample, the mean of `log(1 + scale w)` over its views' rays and
    /// samples, summed over samples.
    fn emptiness(&self, params: &Self::Params, views: &Self::Views, scale: f64) -> Option<Tensor<B, 1>> {
        let w = self.render_full(params, views).weights;
        let [rays, k] = w.dims();
        let n = params.density.dims()[0];
        Some(w.mul_scalar(scale).log1p().sum().div_scalar((rays / n.max(1) * k) as f64))
    }
}
