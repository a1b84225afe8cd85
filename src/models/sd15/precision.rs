//! SD1.5 in another float precision than the sampler: weights and activations of the text
//! encoder, UNet and VAE in fp16 or bf16 (CUDA), while the sampler, the diffrep and its Adam
//! fit stay in f32.
//!
//! The model lives on its own backend `L` (e.g. `Cuda<f16>`): burn converts every weight to
//! `L`'s float type when it is created, so the loader and the layers are the same code as in
//! f32. Latents cross between the two backends as host data at each call (a `[n, 4, 64, 64]`
//! latent is 128 KB per sample, negligible next to a UNet eval).

use std::marker::PhantomData;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{LoadOptions, Sd15};
use crate::diffusion::{Denoiser, Schedule};

/// Float precision of the SD1.5 weights and activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Precision::F32,
            "f16" | "fp16" | "float16" | "half" => Precision::F16,
            "bf16" | "bfloat16" => Precision::Bf16,
            other => bail!("unknown precision '{other}' (expected f32, f16 or bf16)"),
        })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// Refuses what this build and device cannot do, with the way out.
    pub fn check_device(self, device: &str) -> Result<()> {
        if self != Precision::F32 && device != "cuda" {
            bail!(
                "--precision {self} runs on the GPU only (--device cuda, a build with --features cuda); the CPU backend computes in f32"
            );
        }
        Ok(())
    }
}

/// Host values of any tensor as f32.
fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> TensorData {
    t.into_data().convert::<f32>()
}

/// An SD1.5 model on backend `L`, used as a [`Denoiser`] by samplers on backend `B`.
pub struct CastSd15<L: Backend, B: Backend> {
    pub model: Sd15<L>,
    pub precision: Precision,
    device: L::Device,
    _sampler: PhantomData<fn() -> B>,
}

impl<L: Backend, B: Backend> CastSd15<L, B> {
    pub fn load(dir: &Path, precision: Precision, device: &L::Device, opts: LoadOptions) -> Result<Self> {
        Ok(Self::new(Sd15::load_with(dir, device, opts)?, precision, device))
    }

    pub fn new(model: Sd15<L>, precision: Precision, device: &L::Device) -> Self {
        Self { model, precision, device: device.clone(), _sampler: PhantomData }
    }

    pub fn device(&self) -> &L::Device {
        &self.device
    }

    /// A sampler-side tensor moved onto the model's backend.
    pub fn to_model<const D: usize>(&self, t: Tensor<B, D>) -> Tensor<L, D> {
        Tensor::from_data(host_f32(t), &self.device)
    }

    /// Pipeline-space latents (on the sampler's backend) -> image, decoded in the model's
    /// precision and returned in f32 on `device`.
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = latents.device();
        Tensor::from_data(host_f32(self.model.decode(self.to_model(latents))), &device)
    }
}

impl<L: Backend, B: Backend> Denoiser<B> for CastSd15<L, B> {
    fn describe(&self) -> String {
        format!("{} [{}]", self.model.describe(), self.precision)
    }

    fn sample_shape(&self) -> [usize; 3] {
        self.model.sample_shape()
    }

    fn schedule(&self) -> &Schedule {
        self.model.schedule()
    }

    fn eps(&self, x_vp: Tensor<B, 4>, timesteps: &[usize], prompts: &[Option<&str>]) -> Result<Tensor<B, 4>> {
        let device = x_vp.device();
        let eps = self.model.eps(self.to_model(x_vp), timesteps, prompts)?;
        Ok(Tensor::from_data(host_f32(eps), &device))
    }
}
