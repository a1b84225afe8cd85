//! Differentiable representations: parameters (a burn `Module`) and a render function.

pub mod cameras;
pub mod linear;
pub mod panorama;
pub mod sine;
pub mod siren;
pub mod strips;
pub mod voxnerf;

use anyhow::Result;
use rand_chacha::ChaCha8Rng;
use burn::module::AutodiffModule;
use burn::tensor::{backend::AutodiffBackend, Tensor};

pub use cameras::{Camera, CylinderViews, SphereViews};
pub use linear::{IdentityDiffrep, LinearDiffrep};
pub use panorama::{PanoramaConfig, PanoramaDiffrep};
pub use siren::{SirenConfig, SirenDiffrep, SirenParams};
pub use voxnerf::{VoxNerfConfig, VoxNerfDiffrep, VoxNerfParams};

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

/// A diffrep seen through several views (paper §3.2): panoramas and NeRFs. The plain
/// [`Diffrep`] interface stays as it is (its `render` is one canonical image per sample: the
/// whole panorama, a NeRF's front view); samplers that know about views use this one.
///
/// A batch of views holds `views_per_sample()` views for each of the `n` samples, rows
/// sample-major: row `i * V + v` is view `v` of sample `i`. Each view carries its own
/// separated noise in DDRep, and the least-squares loss averages over a sample's views (Eq. 8).
pub trait MultiviewDiffrep<B: AutodiffBackend>: Diffrep<B> {
    /// A batch of views prepared for rendering (cameras plus whatever can be precomputed).
    type Views: Clone;

    /// Views rendered per sample in one batch.
    fn views_per_sample(&self) -> usize;
    /// `[C, H, W]` of one view.
    fn view_shape(&self) -> [usize; 3];
    /// Draws one batch of views per sample, sample `i` from `rngs[i]`.
    fn sample_views(&self, rngs: &mut [ChaCha8Rng], device: &B::Device) -> Result<Self::Views>;
    /// `[n * V, C, H, W]`, differentiable in the parameters.
    fn render_views(&self, params: &Self::Params, views: &Self::Views) -> Tensor<B, 4>;
    /// The cameras of a batch, row-major as the renders.
    fn cameras<'a>(&self, views: &'a Self::Views) -> &'a [cameras::Camera];
    /// Per row, the suffix for a view-dependent prompt (`"front view"`), if this diffrep
    /// conditions the denoiser on the view.
    fn view_suffixes(&self, views: &Self::Views) -> Vec<Option<String>>;
    /// Per sample: the RMS disagreement between views where they see the same point, of
    /// images `[n * V, C, H, W]` given as host data, where the diffrep can tell which pixels
    /// coincide (panoramas); `None` where it cannot (NeRFs: occlusion).
    fn overlap_disagreement(&self, _views: &Self::Views, _images: &[f32]) -> Option<Vec<f64>> {
        None
    }
    /// SJC's emptiness regulariser `sum_i mean log(1 + scale w)` over the compositing weights
    /// `w` of sample `i`'s views, where the diffrep has such weights (NeRFs); `None` else.
    fn emptiness(&self, _params: &Self::Params, _views: &Self::Views, _scale: f64) -> Option<Tensor<B, 1>> {
        None
    }
}
