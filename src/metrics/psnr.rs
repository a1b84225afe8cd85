//! PSNR as torchmetrics 1.9.0 `peak_signal_noise_ratio` computes it, in f64.
//!
//! * [`psnr`] = `peak_signal_noise_ratio(preds, target, data_range)` with `dim=None`: **one** MSE
//!   pooled over the whole batch, `10 log10(data_range² / mse)`.
//! * [`psnr_per_image`] = `reduction='none', dim=(1,2,3)`: one value per image.
//! * [`psnr_mean_of_per_image`] = `dim=(1,2,3)` with the default mean reduction.
//!
//! Identical inputs give MSE 0 and PSNR `+inf` (torchmetrics returns inf, no epsilon). A float
//! `data_range` does not clamp the inputs. PSNR works for every image size.

use super::images::{same_shape, ImageBatch};
use super::{MetricError, MetricResult};

fn check_range(data_range: f64) -> MetricResult<()> {
    if !(data_range.is_finite() && data_range > 0.0) {
        return Err(MetricError::InvalidParam(format!("data_range must be finite and > 0, got {data_range}")));
    }
    Ok(())
}

fn sse(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| {
        let d = x as f64 - y as f64;
        d * d
    }).sum()
}

fn psnr_from_mse(mse: f64, data_range: f64) -> f64 {
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (data_range * data_range / mse).log10()
    }
}

/// PSNR of the whole batch (one pooled MSE), torchmetrics' default (`dim=None`).
pub fn psnr(preds: &ImageBatch<'_>, target: &ImageBatch<'_>, data_range: f64) -> MetricResult<f64> {
    check_range(data_range)?;
    same_shape(preds, target)?;
    let n = preds.data().len() as f64;
    Ok(psnr_from_mse(sse(preds.data(), target.data()) / n, data_range))
}

/// PSNR of each image (`reduction='none', dim=(1,2,3)`); `+inf` for an identical pair.
pub fn psnr_per_image(preds: &ImageBatch<'_>, target: &ImageBatch<'_>, data_range: f64) -> MetricResult<Vec<f64>> {
    check_range(data_range)?;
    same_shape(preds, target)?;
    Ok((0..preds.len())
        .map(|i| {
            let (a, b) = (preds.image(i), target.image(i));
            psnr_from_mse(sse(a, b) / a.len() as f64, data_range)
        })
        .collect())
}

/// Mean of the per-image PSNRs (`dim=(1,2,3)`, mean reduction); `+inf` if any pair is identical.
pub fn psnr_mean_of_per_image(preds: &ImageBatch<'_>, target: &ImageBatch<'_>, data_range: f64) -> MetricResult<f64> {
    let v = psnr_per_image(preds, target, data_range)?;
    Ok(v.iter().sum::<f64>() / v.len() as f64)
}
