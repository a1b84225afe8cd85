//! Backend choices: the CPU (ndarray) backend by default, CUDA with the `cuda` feature.

/// The CPU tensor backend.
pub type Cpu = burn::backend::NdArray<f32>;
/// The CPU backend with autodiff, for diffrep fits.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;

#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;
