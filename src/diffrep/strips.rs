//! Figures from multiview results: a panorama strip (the whole panorama of each sample, one
//! wide row each) and a NeRF turntable strip (one row of views per sample). Images are taken
//! as they are (`[-1, 1]` RGB; 4-channel latents show their first three channels): decoding SD
//! latents through the VAE first is the caller's business.

use std::path::Path;

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Tensor};

use super::voxnerf::{VoxNerfDiffrep, VoxNerfParams};
use crate::io::write_grid_png;
use crate::tensor_util::tensor_to_vec;

/// Splits `[n, C, H, W]` into host images.
fn split<B: Backend>(images: Tensor<B, 4>) -> (Vec<Vec<f32>>, [usize; 3]) {
    let [n, c, h, w] = images.dims();
    let flat = tensor_to_vec(images);
    (flat.chunks(c * h * w).take(n).map(|x| x.to_vec()).collect(), [c, h, w])
}

/// Writes `[n, C, H, W_full]` panoramas as one PNG, one sample per row.
pub fn write_panorama_strip<B: Backend>(path: &Path, panoramas: Tensor<B, 4>) -> Result<()> {
    let (imgs, shape) = split(panoramas);
    if imgs.is_empty() {
        bail!("no panoramas to write");
    }
    write_grid_png(path, &imgs, shape, 1, 1)
}

/// Writes `[n * V, C, H, W]` views (sample-major) as one PNG, a row of `V` per sample.
pub fn write_view_strip<B: Backend>(path: &Path, views: Tensor<B, 4>, per_sample: usize) -> Result<()> {
    let (imgs, shape) = split(views);
    if per_sample == 0 || imgs.is_empty() || imgs.len() % per_sample != 0 {
        bail!("{} views do not make rows of {per_sample}", imgs.len());
    }
    write_grid_png(path, &imgs, shape, per_sample, 1)
}

/// Renders a turntable of `count` views (equally spaced azimuths at the middle elevation) of
/// every NeRF and writes it as a strip, a row per sample. Returns the renders.
pub fn write_nerf_turntable<B: Backend>(path: &Path, rep: &VoxNerfDiffrep, params: &VoxNerfParams<B>, count: usize) -> Result<Tensor<B, 4>> {
    let n = params.density.dims()[0];
    let device = params.density.val().device();
    let views = rep.turntable::<B>(count, n, &device)?;
    let images = rep.render_full(params, &views).image;
    write_view_strip(path, images.clone(), count)?;
    Ok(images)
}
