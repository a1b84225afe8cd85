//! Backend choices: the CPU (ndarray) backend by default, CUDA with the `cuda` feature.

/// The CPU tensor backend.
pub type Cpu = burn::backend::NdArray<f32>;
/// The CPU backend with autodiff, for diffrep fits.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;

#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;
/// SD1.5 in half precision on the GPU (`--precision f16`): weights and activations in fp16.
#[cfg(feature = "cuda")]
pub type CudaF16 = burn::backend::Cuda<half::f16, i32>;
/// SD1.5 in bfloat16 on the GPU (`--precision bf16`).
#[cfg(feature = "cuda")]
pub type CudaBf16 = burn::backend::Cuda<half::bf16, i32>;
