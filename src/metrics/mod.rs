//! Image-quality and distribution metrics with parity to the Python libraries researchers use.
//!
//! * [`psnr`], [`ssim`]: host computations in f64 following torchmetrics 1.9.0
//!   (`peak_signal_noise_ratio`, `structural_similarity_index_measure` defaults).
//! * [`kid`]: Kernel Inception Distance (unbiased MMD² with the cubic polynomial kernel) over
//!   random subsets, as torchmetrics' `KernelInceptionDistance`.
//! * [`lpips`]: LPIPS (AlexNet trunk, v0.1 linear heads) in burn, generic over the backend.
//! * [`inception`]: the FID-variant Inception-v3 (`pt_inception-2015-12-05`) used by
//!   torch-fidelity / torchmetrics, with both of their resize paths, in burn.
//!
//! Conventions and the parity fixtures are documented in `tools/fixtures/metrics/README.md`.
//! Every entry point validates its input and returns a [`MetricError`] instead of panicking.

pub mod images;
pub mod inception;
pub mod kid;
pub mod legacy_pth;
pub mod lpips;
pub mod psnr;
pub mod ssim;
pub mod weights;

pub use images::ImageBatch;
pub use lpips::{Lpips, LpipsValues};
pub use inception::{InceptionV3, ResizeMode};
pub use kid::{kid, kid_with_subsets, FeatureMatrix, KidConfig, KidResult};
pub use psnr::{psnr, psnr_mean_of_per_image, psnr_per_image};
pub use ssim::{ssim, ssim_per_image, ssim_per_image_cropped, SsimConfig};
pub use weights::TensorStore;

/// Errors of the metric functions: bad input is reported, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    /// Two inputs that must agree in shape do not.
    #[error("shape mismatch: {what}: {left:?} vs {right:?}")]
    ShapeMismatch { what: String, left: Vec<usize>, right: Vec<usize> },
    /// A buffer's length does not match the shape it was declared with.
    #[error("{what}: data length {got} does not match shape {shape:?} (expects {expected} values)")]
    DataLength { what: String, shape: Vec<usize>, expected: usize, got: usize },
    /// An empty image batch, feature set, or an image with a zero-sized dimension.
    #[error("empty input: {0}")]
    Empty(String),
    /// A NaN or infinite pixel / feature value.
    #[error("non-finite value ({value}) in {what} at flat index {index}")]
    NonFinite { what: String, index: usize, value: f32 },
    /// The image is too small for the metric's window.
    #[error("image {h}x{w} too small for {metric}: {reason}")]
    TooSmall { metric: &'static str, h: usize, w: usize, reason: String },
    /// Feature vectors of the wrong dimension.
    #[error("feature dimension mismatch: {what}: expected {expected}, got {got}")]
    FeatureDim { what: String, expected: usize, got: usize },
    /// A KID subset larger than one of the feature sets.
    #[error("KID subset_size {subset_size} is larger than the number of {which} samples ({n}); torchmetrics raises 'Argument `subset_size` should be smaller than the number of samples'")]
    SubsetTooLarge { subset_size: usize, which: &'static str, n: usize },
    /// A parameter out of its valid range.
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// A weight file is missing, unreadable or lacks a tensor.
    #[error("weights: {0}")]
    Weights(String),
}

/// Result type of this module.
pub type MetricResult<T> = Result<T, MetricError>;

/// Checks that every value is finite.
pub(crate) fn check_finite(what: &str, data: &[f32]) -> MetricResult<()> {
    if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(MetricError::NonFinite { what: what.to_string(), index, value });
    }
    Ok(())
}

/// Mean and population standard deviation (ddof = 0) of a non-empty slice.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}
