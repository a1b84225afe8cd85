//! The models `ddrep sample` runs (the embedded analytic prior, or a Stable Diffusion 1.5
//! folder) and the latent -> image path through the SD1.5 VAE that `sample` and `decode` use.

use std::path::Path;

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use serde_json::{json, Value};

use crate::diffusion::Denoiser;
use crate::models::sd15::precision::{CastSd15, Precision};
use crate::models::sd15::{config, AutoencoderKL, Loader, Sd15, VaeConfig, WeightFile};
use crate::models::AnalyticPrior;
use crate::tensor_util::{ensure_finite, tensor_to_vec};

/// What `--weights` must be, for error messages.
pub const SD15_FOLDER_HOWTO: &str = "a diffusers-format Stable Diffusion 1.5 folder (model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/, weights as *.safetensors), e.g. from `huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR`";

/// A loaded denoiser: both kinds sample the same way; SD1.5 samples are latents that the VAE
/// turns into images.
#[allow(clippy::large_enum_variant)] // one per run: boxing the analytic prior buys nothing
pub enum Model<B: Backend> {
    Analytic(AnalyticPrior),
    Sd15(Box<Sd15<B>>),
    /// SD1.5 in fp16/bf16 on its own backend (`--precision`), the sampler staying in f32.
    Sd15Cast(Box<dyn CastModel<B>>),
}

/// What the pipeline needs from an SD1.5 model that runs on another backend than the sampler.
pub trait CastModel<B: Backend>: Denoiser<B> {
    fn label(&self) -> String;
    fn record(&self) -> Result<Value>;
    /// Latents -> images, decoded in the model's precision, returned as f32.
    fn to_images(&self, samples: &[Vec<f32>], shape: [usize; 3]) -> Result<(Vec<Vec<f32>>, [usize; 3])>;
}

impl<L: Backend, B: Backend> CastModel<B> for CastSd15<L, B> {
    fn label(&self) -> String {
        format!("sd15 {} ({})", self.model.dir.display(), self.precision)
    }

    fn record(&self) -> Result<Value> {
        sd15_record(&self.model, self.precision)
    }

    fn to_images(&self, samples: &[Vec<f32>], shape: [usize; 3]) -> Result<(Vec<Vec<f32>>, [usize; 3])> {
        decode_latents(&self.model.vae, samples, shape, self.device())
    }
}

impl<B: Backend> Model<B> {
    pub fn denoiser(&self) -> &dyn Denoiser<B> {
        match self {
            Model::Analytic(m) => m,
            Model::Sd15(m) => m.as_ref(),
            Model::Sd15Cast(m) => m.as_ref(),
        }
    }

    /// Short name for the console.
    pub fn label(&self) -> String {
        match self {
            Model::Analytic(_) => "embedded analytic prior".into(),
            Model::Sd15(m) => format!("sd15 {}", m.dir.display()),
            Model::Sd15Cast(m) => m.label(),
        }
    }

    /// The model's settings for `record.json` (`model_config`).
    pub fn record(&self) -> Result<Value> {
        match self {
            Model::Analytic(m) => Ok(serde_json::to_value(m.config())?),
            Model::Sd15(m) => sd15_record(m, Precision::F32),
            Model::Sd15Cast(m) => m.record(),
        }
    }

    /// Sampled tensors (one `[C, H, W]` per sample) -> images in about `[-1, 1]`: the samples
    /// themselves for the analytic prior, the VAE decode of the latents for SD1.5.
    pub fn to_images(&self, samples: &[Vec<f32>], shape: [usize; 3], device: &B::Device) -> Result<(Vec<Vec<f32>>, [usize; 3])> {
        match self {
            Model::Analytic(_) => Ok((samples.to_vec(), shape)),
            Model::Sd15(m) => decode_latents(&m.vae, samples, shape, device),
            Model::Sd15Cast(m) => m.to_images(samples, shape),
        }
    }
}

/// An SD1.5 model's settings for `record.json`.
fn sd15_record<L: Backend>(m: &Sd15<L>, precision: Precision) -> Result<Value> {
    let [c, h, w] = m.sample_shape();
    let f = vae_factor(&m.vae.config);
    let hashes: serde_json::Map<String, Value> = m.weight_hashes()?.into_iter().map(|(p, s)| (p, Value::String(s))).collect();
    Ok(json!({
        "kind": "sd15",
        "dir": m.dir.display().to_string(),
        "precision": precision,
        "latent_shape": [c, h, w],
        "image_shape": [m.vae.config.out_channels, h * f, w * f],
        "weights_sha256": hashes,
        "vae_scaling_factor": m.vae.config.scaling_factor,
        "unet_block_out_channels": m.unet.config.block_out_channels,
        "scheduler": {
            "num_train_timesteps": m.scheduler.num_train_timesteps,
            "beta_start": m.scheduler.beta_start,
            "beta_end": m.scheduler.beta_end,
            "beta_schedule": m.scheduler.beta_schedule,
            "set_alpha_to_one": m.scheduler.set_alpha_to_one(),
        },
    }))
}

/// Spatial factor from latents to pixels: one 2x upsampler per decoder block but the last.
pub fn vae_factor(cfg: &VaeConfig) -> usize {
    1 << cfg.block_out_channels.len().saturating_sub(1)
}

/// Pipeline-space latents -> images (raw VAE output, about `[-1, 1]`), one sample at a time
/// so a full-size decode needs the memory of one image only.
pub fn decode_latents<B: Backend>(
    vae: &AutoencoderKL<B>,
    latents: &[Vec<f32>],
    shape: [usize; 3],
    device: &B::Device,
) -> Result<(Vec<Vec<f32>>, [usize; 3])> {
    let [c, h, w] = shape;
    if c != vae.config.latent_channels {
        bail!("latents have {c} channels but the VAE takes {}", vae.config.latent_channels);
    }
    let mut out = Vec::with_capacity(latents.len());
    let mut img_shape = [0; 3];
    for (i, l) in latents.iter().enumerate() {
        if l.len() != c * h * w {
            bail!("latent {i} has {} values, shape {shape:?} needs {}", l.len(), c * h * w);
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(l.clone(), [1, c, h, w]), device);
        let img = vae.decode_latents(x);
        ensure_finite(&img, || format!("the VAE decode of latent {i}"))?;
        let [_, ic, ih, iw] = img.dims();
        img_shape = [ic, ih, iw];
        out.push(tensor_to_vec(img));
    }
    Ok((out, img_shape))
}

/// [`decode_latents`] in vertical tiles of at most `max_w` latent columns, joined side by side:
/// a wide panorama decodes in the memory of one tile (the VAE's mid-block attention is
/// quadratic in the latent's area). The tiles are decoded independently, so a seam may show
/// at their borders.
pub fn decode_latents_tiled<B: Backend>(
    vae: &AutoencoderKL<B>,
    latents: &[Vec<f32>],
    shape: [usize; 3],
    max_w: usize,
    device: &B::Device,
) -> Result<(Vec<Vec<f32>>, [usize; 3])> {
    let [c, h, w] = shape;
    let max_w = max_w.max(1);
    if w <= max_w {
        return decode_latents(vae, latents, shape, device);
    }
    let tiles: Vec<(usize, usize)> = (0..w).step_by(max_w).map(|x0| (x0, (x0 + max_w).min(w))).collect();
    let mut out = Vec::with_capacity(latents.len());
    let mut img_shape = [0; 3];
    for (i, l) in latents.iter().enumerate() {
        if l.len() != c * h * w {
            bail!("latent {i} has {} values, shape {shape:?} needs {}", l.len(), c * h * w);
        }
        let mut parts = Vec::new();
        for &(x0, x1) in &tiles {
            let tw = x1 - x0;
            let tile: Vec<f32> = (0..c * h).flat_map(|row| l[row * w + x0..row * w + x1].iter().copied()).collect();
            let (mut d, s) = decode_latents(vae, &[tile], [c, h, tw], device)?;
            parts.push((d.remove(0), s));
        }
        let (ic, ih) = (parts[0].1[0], parts[0].1[1]);
        let iw: usize = parts.iter().map(|p| p.1[2]).sum();
        let mut img = vec![0.0f32; ic * ih * iw];
        let mut xoff = 0;
        for (d, [_, _, pw]) in &parts {
            for row in 0..ic * ih {
                img[row * iw + xoff..row * iw + xoff + pw].copy_from_slice(&d[row * pw..(row + 1) * pw]);
            }
            xoff += pw;
        }
        img_shape = [ic, ih, iw];
        out.push(img);
    }
    Ok((out, img_shape))
}

/// Loads a Stable Diffusion 1.5 folder; `latent_size` overrides the UNet's `sample_size`.
pub fn load_sd15<B: Backend>(dir: &Path, latent_size: Option<[usize; 2]>, device: &B::Device) -> Result<Sd15<B>> {
    check_folder(dir)?;
    let mut m = Sd15::<B>::load(dir, device)?;
    if let Some([h, w]) = latent_size {
        let k = m.latent_multiple();
        if h == 0 || w == 0 || h % k != 0 || w % k != 0 {
            bail!("--latent-size {h},{w}: both must be positive multiples of {k} for this UNet (images are {}x larger)", vae_factor(&m.vae.config));
        }
        m.set_latent_size(h, w);
    }
    // Hash the weights now, so a file that cannot be read fails before any sampling.
    m.weight_hashes()?;
    Ok(m)
}

/// The folder and its `model_index.json` exist (the rest is checked by the loader).
fn check_folder(dir: &Path) -> Result<()> {
    let index = dir.join("model_index.json");
    if !dir.is_dir() {
        bail!("{} is missing (no such folder {}): --weights must point to {SD15_FOLDER_HOWTO}", index.display(), dir.display());
    }
    if !index.is_file() {
        bail!("{} is missing: --weights must point to {SD15_FOLDER_HOWTO}", index.display());
    }
    Ok(())
}


/// Only the VAE of an SD1.5 folder (for `ddrep decode`): `vae/config.json` and its weights.
pub fn load_vae<B: Backend>(dir: &Path, device: &B::Device) -> Result<AutoencoderKL<B>> {
    if !dir.is_dir() {
        bail!("{}: no such folder: --weights must point to {SD15_FOLDER_HOWTO}", dir.display());
    }
    let vae_dir = dir.join("vae");
    if !vae_dir.is_dir() {
        bail!("{}: part folder vae/ is missing: copy the complete diffusers SD1.5 folder", dir.display());
    }
    let cfg: VaeConfig = config::read_config(&vae_dir.join("config.json"))?;
    let file = crate::models::sd15::weight_file(&vae_dir, "diffusion_pytorch_model.safetensors")?;
    let mut ld = Loader::from_file("vae", WeightFile::open(&file, crate::models::sd15::vae_key)?, device);
    let vae = AutoencoderKL::load(&mut ld, &cfg)?;
    ld.finish(false)?;
    Ok(vae)
}


/// Reads latents `[n, C, H, W]` (or one `[C, H, W]`) from a safetensors file: the tensor
/// `name`, else `latents`, else the file's only tensor.
pub fn read_latents(path: &Path, name: Option<&str>) -> Result<(Vec<Vec<f32>>, [usize; 3], String)> {
    if !path.is_file() {
        bail!("{}: no such file: --latents takes a safetensors file of latents (e.g. output.safetensors of `ddrep sample --model sd15`)", path.display());
    }
    let file = WeightFile::open_with_remedy(path, str::to_string, "--latents takes the output.safetensors of `ddrep sample --model sd15` (or of a grid cell); sample again if it was damaged")?;
    let names: Vec<String> = file.names().map(str::to_string).collect();
    let pick = match name {
        Some(n) if names.iter().any(|x| x == n) => n.to_string(),
        Some(n) => bail!("{}: no tensor '{n}' (it has: {}): pick one with --tensor", path.display(), names.join(", ")),
        None if names.iter().any(|x| x == "latents") => "latents".into(),
        None if names.len() == 1 => names[0].clone(),
        None => bail!("{}: {} tensors and none named 'latents' (it has: {}): pick one with --tensor", path.display(), names.len(), names.join(", ")),
    };
    let (v, shape) = file.tensor_f32(&pick)?;
    let (n, chw) = match shape.as_slice() {
        [n, c, h, w] => (*n, [*c, *h, *w]),
        [c, h, w] => (1, [*c, *h, *w]),
        s => bail!("{}: tensor '{pick}' has shape {s:?}; latents are [n, 4, h, w] or [4, h, w]", path.display()),
    };
    let per = chw.iter().product::<usize>();
    if n == 0 || per == 0 {
        bail!("{}: tensor '{pick}' is empty (shape {shape:?})", path.display());
    }
    if v.iter().any(|x| !x.is_finite()) {
        bail!("{}: tensor '{pick}' holds NaN or infinite values", path.display());
    }
    Ok(((0..n).map(|i| v[i * per..(i + 1) * per].to_vec()).collect(), chw, pick))
}
