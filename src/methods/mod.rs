//! Samplers, each a function of (denoiser, diffrep, config, noise): DDRep, SJC, SDS and the
//! plain image-space reference.

pub mod adamax;
pub mod ddrep;
pub mod reference;
pub mod sds;
pub mod sjc;
pub mod run;
pub mod solver;
pub mod multiview;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

pub use ddrep::{ddrep, DdrepConfig, RepaintX0};
pub use reference::{reference, ReferenceConfig};
pub use sds::{sds, SdsConfig};
pub use sjc::{sjc, EmptinessConfig, SjcConfig};
pub use run::{run_method, DiffrepSpec, MethodSpec, MultiviewResult, RunResult};
pub use solver::SolverConfig;
pub use multiview::{ddrep_views, sjc_views, MultiviewOutput};

/// One logged step of a sampler.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepDiagnostic {
    /// Index of the move or iteration.
    pub step: usize,
    /// "reverse", "forward" (RePaint) or "iteration" (SJC/SDS).
    pub kind: String,
    /// Training timestep of the noisier level (per sample for SJC/SDS: the first row's).
    pub t: usize,
    pub sigma: f64,
    /// Per sample: RMS of `r(theta) - target` after the fit (DDRep), or RMS of the ascent
    /// direction (SJC/SDS).
    pub residual: Vec<f64>,
    /// Denoiser evaluations so far.
    pub nfe: usize,
    /// Multiview diffreps: per sample, the RMS disagreement between overlapping views of the
    /// update `target - render` before this step's fit (panoramas); `None` where not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Vec<f64>>,
}

/// What a sampler returns.
pub struct MethodOutput<B: Backend, P> {
    /// Diffrep parameters (`None` for the image-space reference).
    pub params: Option<P>,
    /// The result: the diffrep's render, or the reference's final sample, `[n, C, H, W]`.
    pub image: Tensor<B, 4>,
    pub diagnostics: Vec<StepDiagnostic>,
    pub nfe: usize,
}
