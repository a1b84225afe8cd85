//! Differentiable representations: parameters (a burn `Module`) and a render function.

pub mod linear;
pub mod sine;
pub mod siren;

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::tensor::{backend::AutodiffBackend, Tensor};

pub use linear::{IdentityDiffrep, LinearDiffrep};
pub use siren::{SirenConfig, SirenDiffrep, SirenParams};

/// A named host copy of one parameter tensor, for export.
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A diffrep `r(theta)`: a batch of `n` independent parameter sets rendered to `[n, C, H, W]`.
pub trait Diffrep<B: AutodiffBackend> {
    type Params: AutodiffModule<B> + Clone;

    /// Short name used in records ("siren", "linear", ...).
    fn name(&self) -> &'static str;
    /// `[C, H, W]` of one render.
    fn render_shape(&self) -> [usize; 3];
    /// Fresh parameters, one set per seed (each from its own seeded stream).
    fn init(&self, seeds: &[u64], device: &B::Device) -> Result<Self::Params>;
    /// `r(theta)`: `[n, C, H, W]`, differentiable in the parameters.
    fn render(&self, params: &Self::Params) -> Tensor<B, 4>;
    /// Exact least-squares fit `argmin ||r(theta) - target||^2` where the render is linear.
    fn exact_fit(&self, _params: &Self::Params, _target: Tensor<B::InnerBackend, 4>) -> Option<Self::Params> {
        None
    }
    /// Host copies of the parameters, named as in the exported safetensors file.
    fn export(&self, params: &Self::Params) -> Vec<NamedTensor>;
    /// A description of the architecture for run records.
    fn describe(&self) -> serde_json::Value;
}
