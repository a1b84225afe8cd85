//! Small conversions between burn tensors and host vectors.

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};

pub fn tensor_to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 tensor data")
}

pub fn tensor_from_vec<B: Backend, const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

pub fn tensor_from_f64<B: Backend, const D: usize>(
    v: &[f64],
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    tensor_from_vec(v.iter().map(|&x| x as f32).collect(), shape, device)
}

/// Fails with a message naming `what` if the tensor holds a NaN or an infinity.
pub fn ensure_finite<B: Backend, const D: usize>(t: &Tensor<B, D>, what: impl FnOnce() -> String) -> Result<()> {
    let bad = t.clone().is_finite().bool_not().int().sum().into_data().convert::<i64>();
    if bad.into_vec::<i64>().map(|v| v[0]).unwrap_or(1) != 0 {
        bail!("non-finite values (NaN or inf) in {}", what());
    }
    Ok(())
}

/// Mean squared value per sample: `[n, ...]` -> n values.
pub fn per_sample_mse<B: Backend>(diff: Tensor<B, 4>) -> Vec<f64> {
    let n = diff.dims()[0];
    let sq = diff.powi_scalar(2).reshape([n as i32, -1]).mean_dim(1);
    tensor_to_vec(sq).into_iter().map(|x| x as f64).collect()
}
