//! Denoisers: the embedded analytic priors (and, later, Stable Diffusion 1.5).

pub mod analytic;
pub mod sd15;

pub use analytic::{AnalyticConfig, AnalyticKind, AnalyticPrior};
