//! SSIM as torchmetrics 1.9.0 `structural_similarity_index_measure` computes it with its defaults
//! (`gaussian_kernel=True, sigma=1.5, k1=0.01, k2=0.03, reduction='elementwise_mean'`), in f64.
//!
//! Convention (checked against `tests/fixtures/metrics/psnr_ssim.json`):
//! * the gaussian kernel has `int(3.5*sigma + 0.5)*2 + 1` taps (11 for sigma 1.5; torchmetrics
//!   ignores its `kernel_size` argument when `gaussian_kernel=True`), 1-D taps
//!   `exp(-(d/sigma)²/2)`, normalised, 2-D kernel = outer product;
//! * both images are padded by `pad = taps/2` (5) with torch `reflect` padding (mirror without
//!   repeating the edge pixel), then a valid depthwise convolution gives an `H x W` map of
//!   `((2 mu_xy + c1)(2 s_xy + c2)) / ((mu_x² + mu_y² + c1)(s_x + s_y + c2))`, with the variances
//!   `s_x = max(E[x²] - mu_x², 0)` clamped at 0 (the covariance is not), `c1 = (k1 R)²`,
//!   `c2 = (k2 R)²`, `R = data_range`;
//! * **no border crop**: an image's SSIM is the mean over all `C*H*W` map values; the batch value
//!   is the mean over images.
//!
//! torchmetrics raises `RuntimeError: ... Padding size should be less than the corresponding
//! input dimension` for H or W `<= pad` (5 px and below); here that is [`MetricError::TooSmall`].
//! [`ssim_per_image_cropped`] averages only the valid interior (crop `pad` px on each side), which
//! equals scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
//! use_sample_covariance=False, data_range=1)` to about 1e-5; it needs H, W >= 11.
//!
//! torchmetrics computes in the input dtype (f32); f64 here differs by ~1e-6 except where f32
//! cancellation in `E[xy] - mu_x mu_y` dominates (two equal constant images: f32 0.99914, f64 1.0).

use super::images::{same_shape, ImageBatch};
use super::{MetricError, MetricResult};

/// SSIM parameters; `Default` is torchmetrics' default with `data_range = 1.0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SsimConfig {
    pub sigma: f64,
    pub k1: f64,
    pub k2: f64,
    pub data_range: f64,
}

impl Default for SsimConfig {
    fn default() -> Self {
        Self { sigma: 1.5, k1: 0.01, k2: 0.03, data_range: 1.0 }
    }
}

impl SsimConfig {
    /// Number of gaussian taps torchmetrics uses: `int(3.5*sigma + 0.5)*2 + 1`.
    pub fn kernel_size(&self) -> usize {
        ((3.5 * self.sigma + 0.5).floor() as usize) * 2 + 1
    }
    /// Normalised 1-D gaussian taps.
    pub fn taps(&self) -> Vec<f64> {
        let k = self.kernel_size();
        let half = (k / 2) as f64;
        let t: Vec<f64> = (0..k).map(|i| {
            let d = (i as f64 - half) / self.sigma;
            (-0.5 * d * d).exp()
        }).collect();
        let s: f64 = t.iter().sum();
        t.into_iter().map(|v| v / s).collect()
    }
    fn validate(&self) -> MetricResult<()> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !(ok(self.sigma) && ok(self.k1) && ok(self.k2) && ok(self.data_range)) {
            return Err(MetricError::InvalidParam(format!(
                "SSIM sigma, k1, k2 and data_range must be finite and > 0: {self:?}"
            )));
        }
        Ok(())
    }
}

/// torch `reflect` index for `i` in `[-pad, n + pad)`, valid when `pad < n`.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let j = if i < 0 { -i } else if i >= n { 2 * (n - 1) - i } else { i };
    j as usize
}

/// The `H x W` SSIM map of one channel.
fn ssim_map_channel(x: &[f32], y: &[f32], h: usize, w: usize, cfg: &SsimConfig, taps: &[f64]) -> Vec<f64> {
    let pad = taps.len() / 2;
    let hp = h + 2 * pad;
    // Horizontal pass over the padded rows: [hp, w] for the 5 moment images.
    let mut horiz = vec![[0.0f64; 5]; hp * w];
    for r in 0..hp {
        let sr = reflect(r as isize - pad as isize, h);
        let row_x = &x[sr * w..(sr + 1) * w];
        let row_y = &y[sr * w..(sr + 1) * w];
        for c in 0..w {
            let mut acc = [0.0f64; 5];
            for (t, &k) in taps.iter().enumerate() {
                let sc = reflect(c as isize + t as isize - pad as isize, w);
                let (a, b) = (row_x[sc] as f64, row_y[sc] as f64);
                acc[0] += k * a;
                acc[1] += k * b;
                acc[2] += k * a * a;
                acc[3] += k * b * b;
                acc[4] += k * a * b;
            }
            horiz[r * w + c] = acc;
        }
    }
    let c1 = (cfg.k1 * cfg.data_range).powi(2);
    let c2 = (cfg.k2 * cfg.data_range).powi(2);
    let mut out = vec![0.0f64; h * w];
    for r in 0..h {
        for c in 0..w {
            let mut m = [0.0f64; 5];
            for (t, &k) in taps.iter().enumerate() {
                let v = &horiz[(r + t) * w + c];
                for q in 0..5 {
                    m[q] += k * v[q];
                }
            }
            let (mx, my) = (m[0], m[1]);
            let (mx2, my2, mxy) = (mx * mx, my * my, mx * my);
            let sx = (m[2] - mx2).max(0.0);
            let sy = (m[3] - my2).max(0.0);
            let sxy = m[4] - mxy;
            out[r * w + c] = ((2.0 * mxy + c1) * (2.0 * sxy + c2)) / ((mx2 + my2 + c1) * (sx + sy + c2));
        }
    }
    out
}

fn check_inputs(preds: &ImageBatch<'_>, target: &ImageBatch<'_>, cfg: &SsimConfig, min_side: usize, why: &str) -> MetricResult<()> {
    cfg.validate()?;
    same_shape(preds, target)?;
    let [_, _, h, w] = preds.shape();
    if h < min_side || w < min_side {
        return Err(MetricError::TooSmall { metric: "SSIM", h, w, reason: why.to_string() });
    }
    Ok(())
}

/// Per-image SSIM means over the map restricted to rows/cols `[crop, side - crop)`.
fn per_image(preds: &ImageBatch<'_>, target: &ImageBatch<'_>, cfg: &SsimConfig, crop: usize) -> Vec<f64> {
    let [n, c, h, w] = preds.shape();
    let taps = cfg.taps();
    (0..n)
        .map(|i| {
            let (p, t) = (preds.image(i), target.image(i));
            let mut sum = 0.0;
            let mut count = 0usize;
            for ch in 0..c {
                let sl = ch * h * w..(ch + 1) * h * w;
                let map = ssim_map_channel(&p[sl.clone()], &t[sl], h, w, cfg, &taps);
                for r in crop..h - crop {
                    for col in crop..w - crop {
                        sum += map[r * w + col];
                        count += 1;
                    }
                }
            }
            sum / count as f64
        })
        .collect()
}

/// SSIM of each image (torchmetrics `reduction='none'`): the uncropped map mean over C*H*W.
/// Errors with [`MetricError::TooSmall`] when H or W <= pad (5 for sigma 1.5), as torchmetrics
/// raises a reflect-padding `RuntimeError` there.
pub fn ssim_per_image(preds: &ImageBatch<'_>, target: &ImageBatch<'_>, cfg: &SsimConfig) -> MetricResult<Vec<f64>> {
    let pad = cfg.kernel_size() / 2;
    check_inputs(preds, target, cfg, pad + 1, &format!(
        "torchmetrics SSIM reflect-pads by {pad} px, which needs H and W >= {} (torchmetrics raises \
         RuntimeError 'Padding size should be less than the corresponding input dimension')", pad + 1))?;
    Ok(per_image(preds, target, cfg, 0))
}

/// SSIM of the batch: mean of [`ssim_per_image`] (torchmetrics `reduction='elementwise_mean'`).
pub fn ssim(preds: &ImageBatch<'_>, target: &ImageBatch<'_>, cfg: &SsimConfig) -> MetricResult<f64> {
    let v = ssim_per_image(preds, target, cfg)?;
    Ok(v.iter().sum::<f64>() / v.len() as f64)
}

/// SSIM of each image averaged over the valid interior only (map cropped by `pad` px on each
/// side): scikit-image's `structural_similarity` convention. Needs H, W >= `2*pad + 1` (11),
/// as scikit-image raises `win_size exceeds image extent` below that.
pub fn ssim_per_image_cropped(preds: &ImageBatch<'_>, target: &ImageBatch<'_>, cfg: &SsimConfig) -> MetricResult<Vec<f64>> {
    let k = cfg.kernel_size();
    check_inputs(preds, target, cfg, k, &format!(
        "the cropped (scikit-image) SSIM needs H and W >= the {k}-tap window \
         (scikit-image raises 'win_size exceeds image extent')"))?;
    Ok(per_image(preds, target, cfg, k / 2))
}
