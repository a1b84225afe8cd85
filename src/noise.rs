//! Where sampler randomness comes from. Every sampler step asks a `NoiseSource` for its
//! noise, so a trajectory can be replayed from recorded tensors (e.g. against diffusers).

use std::collections::VecDeque;

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use sha2::{Digest, Sha256};

use crate::tensor_util::tensor_from_vec;

pub trait NoiseSource<B: Backend> {
    /// A standard normal tensor of `shape = [n, C, H, W]`.
    fn normal(&mut self, shape: [usize; 4], device: &B::Device) -> Result<Tensor<B, 4>>;
}

/// A ChaCha8 stream for a seed and a purpose (`"noise"`, `"init"`, `"sjc"`...), so that the
/// streams of different purposes never overlap.
pub fn rng_for(seed: u64, purpose: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"ddrep/");
    h.update(purpose.as_bytes());
    h.update(b"/");
    h.update(seed.to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// Standard normal samples from a generator, as f32.
pub fn normal_vec(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.sample::<f32, _>(StandardNormal)).collect()
}

/// One independent stream per sample: row `i` of every tensor comes from `seeds[i]`, so a
/// sample is the same whether it runs alone or in a batch.
pub struct SeededNoise {
    rngs: Vec<ChaCha8Rng>,
}

impl SeededNoise {
    pub fn new(seeds: &[u64]) -> Self {
        Self { rngs: seeds.iter().map(|&s| rng_for(s, "noise")).collect() }
    }
}

impl<B: Backend> NoiseSource<B> for SeededNoise {
    fn normal(&mut self, shape: [usize; 4], device: &B::Device) -> Result<Tensor<B, 4>> {
        if shape[0] != self.rngs.len() {
            bail!("noise for {} samples requested from {} seeded streams", shape[0], self.rngs.len());
        }
        let per = shape[1] * shape[2] * shape[3];
        let mut v = Vec::with_capacity(per * shape[0]);
        for rng in self.rngs.iter_mut() {
            v.extend(normal_vec(rng, per));
        }
        Ok(tensor_from_vec(v, shape, device))
    }
}

/// Replays recorded noise tensors in order (e.g. the `variance_noise` diffusers was given).
pub struct ReplayNoise<B: Backend> {
    queue: VecDeque<Tensor<B, 4>>,
}

impl<B: Backend> ReplayNoise<B> {
    pub fn new(tensors: Vec<Tensor<B, 4>>) -> Self {
        Self { queue: tensors.into() }
    }
}

impl<B: Backend> NoiseSource<B> for ReplayNoise<B> {
    fn normal(&mut self, shape: [usize; 4], _device: &B::Device) -> Result<Tensor<B, 4>> {
        let Some(t) = self.queue.pop_front() else {
            bail!("replayed noise ran out: a {shape:?} tensor was requested");
        };
        if t.dims() != shape {
            bail!("replayed noise has shape {:?}, the sampler asked for {shape:?}", t.dims());
        }
        Ok(t)
    }
}
