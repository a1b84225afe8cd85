//! `ddrep`: sample differentiable representations (SIRENs, panoramas, voxel NeRFs) from a
//! pretrained diffusion model by pulling back its probability-flow ODE (DDRep, NeurIPS 2024).
//!
//! Notation follows `ALGORITHM.md`: VE variable `x~ = x0 + sigma eps`, denoiser `D(x~)`.

pub mod backend;
pub mod cublas;
#[cfg(feature = "cuda")]
pub mod gpu_kernels;
pub mod diffrep;
pub mod diffusion;
pub mod methods;
pub mod metrics;
pub mod models;
pub mod noise;
pub mod parity;
pub mod pipeline;
pub mod tensor_util;
pub mod bench;
pub mod cli;
pub mod demo;
pub mod experiment;
pub mod io;
pub mod limits;
pub mod report;
