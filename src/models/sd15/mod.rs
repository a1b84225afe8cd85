//! Stable Diffusion 1.5 loaded from an unchanged diffusers folder (`model_index.json`,
//! `tokenizer/`, `text_encoder/`, `unet/`, `vae/`, `scheduler/`), as a `Denoiser`.
//!
//! One file per part: `tokenizer` (CLIP BPE), `config` (the `config.json` files), `weights`
//! (mmap safetensors, shape checks, sha256), `clip`, `unet`, `vae`, plus shared `layers`.
//! Parameter names are the safetensors keys. Parity with diffusers 0.42.1 / transformers
//! 5.24 on the tiny fixtures (`tests/sd15_parity.rs`) is about 1e-6 in `max|a-b| / max|b|`.
//!
//! Accepted key variants: CLIP keys with or without `text_model.` (transformers 5 drops it),
//! old VAE attention names `query/key/value/proj_attn` (also as 1x1-conv shapes). Weights
//! may be F32, F16, BF16 (or F64); everything is converted to f32 at load.

pub mod clip;
pub mod config;
pub mod cpu_kernels;
pub mod layers;
pub mod precision;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, Result};
use burn::tensor::{backend::Backend, Tensor};

use crate::diffusion::{Denoiser, Schedule};
pub use clip::ClipTextModel;
pub use config::{ClipTextConfig, ModelIndex, SchedulerConfig, UnetConfig, VaeConfig};
pub use tokenizer::ClipTokenizer;
pub use unet::UNet2DConditionModel;
pub use vae::{AutoencoderKL, Posterior};
pub use weights::{sha256_cached, Loader, WeightFile};

/// The parts every SD1.5 folder has; other `model_index.json` entries (safety checker,
/// feature extractor, image encoder) are ignored.
pub const PARTS: [&str; 5] = ["tokenizer", "text_encoder", "unet", "vae", "scheduler"];

#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Refuse weight files that hold tensors the model does not use.
    pub strict: bool,
}

pub struct Sd15<B: Backend> {
    pub dir: PathBuf,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel<B>,
    pub unet: UNet2DConditionModel<B>,
    pub vae: AutoencoderKL<B>,
    pub scheduler: SchedulerConfig,
    schedule: Schedule,
    /// `(part, weight file)`, hashed lazily for run records.
    weight_files: Vec<(String, PathBuf)>,
    hashes: OnceLock<String>,
    /// Text-encoder output `[1, 77, D]` per prompt ("" is the unconditional prompt).
    embeddings: Mutex<HashMap<String, Tensor<B, 3>>>,
    sample_shape: [usize; 3],
}

/// The single weight file of a part folder: the diffusers/transformers name, else the only
/// `*.safetensors` there.
pub(crate) fn weight_file(part_dir: &Path, canonical: &str) -> Result<PathBuf> {
    let p = part_dir.join(canonical);
    if p.exists() {
        return Ok(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(part_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "{} is missing (no *.safetensors in {}): download the safetensors weights (.bin/.ckpt are not read)",
            p.display(),
            part_dir.display()
        ),
        _ => bail!("{}: several *.safetensors files ({found:?}) and no {canonical}: keep one", part_dir.display()),
    }
}

fn open_weights(
    part_dir: &Path,
    canonical: &str,
    canon: impl Fn(&str) -> String,
) -> Result<WeightFile> {
    WeightFile::open(&weight_file(part_dir, canonical)?, canon)
}

/// transformers 5 saves CLIPTextModel keys without the `text_model.` prefix; SD1.5 has it.
fn text_encoder_key(k: &str) -> String {
    if k.starts_with("text_model.") {
        k.to_string()
    } else {
        format!("text_model.{k}")
    }
}

/// Old diffusers VAE attention names (still in many SD1.5 files) -> current ones.
pub(crate) fn vae_key(k: &str) -> String {
    if !k.contains(".attentions.") {
        return k.to_string();
    }
    k.replace(".query.", ".to_q.")
        .replace(".key.", ".to_k.")
        .replace(".value.", ".to_v.")
        .replace(".proj_attn.", ".to_out.0.")
}

/// What a folder's configs say about sampling, read without the weights: the training
/// schedule, the latent shape the UNet samples by default, and the multiple its latent sides
/// must be. `plan` checks a grid against it before any cell runs; `load` uses the same.
pub struct SamplingShape {
    pub schedule: Schedule,
    /// `[channels, height, width]` of the UNet's `sample_size` (64x64 for SD1.5).
    pub sample_shape: [usize; 3],
    /// The UNet halves the latent once per down block but the last (8 for SD1.5).
    pub latent_multiple: usize,
}

/// Reads `scheduler/scheduler_config.json` and `unet/config.json` of `dir`.
pub fn sampling_shape(dir: &Path) -> Result<SamplingShape> {
    let scheduler: SchedulerConfig = config::read_config(&dir.join("scheduler/scheduler_config.json"))?;
    let unet: UnetConfig = config::read_config(&dir.join("unet/config.json"))?;
    sampling_shape_of(&scheduler, &unet)
}

/// `sampling_shape` from configs already read.
fn sampling_shape_of(scheduler: &SchedulerConfig, unet: &UnetConfig) -> Result<SamplingShape> {
    let schedule = schedule_from(scheduler)?;
    unet.check_supported()?;
    let s = match &unet.sample_size {
        Some(config::PerBlock::One(s)) => [*s, *s],
        Some(config::PerBlock::Each(v)) if v.len() == 2 => [v[0], v[1]],
        _ => [64, 64],
    };
    Ok(SamplingShape { schedule, sample_shape: [unet.in_channels, s[0], s[1]], latent_multiple: unet.latent_multiple() })
}

impl<B: Backend> Sd15<B> {
    pub fn load(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        Self::load_with(dir, device, LoadOptions::default())
    }

    pub fn load_with(dir: impl AsRef<Path>, device: &B::Device, opts: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            bail!("{}: no such folder: pass the diffusers SD1.5 folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)", dir.display());
        }
        for part in PARTS {
            if !dir.join(part).is_dir() {
                bail!(
                    "{}: part folder {part}/ is missing: copy the complete diffusers SD1.5 folder (it needs {})",
                    dir.display(),
                    PARTS.join("/, ") + "/"
                );
            }
        }
        let index_path = dir.join("model_index.json");
        if index_path.exists() {
            let index: ModelIndex = config::read_config(&index_path)?;
            for (part, class) in [
                ("unet", "UNet2DConditionModel"),
                ("vae", "AutoencoderKL"),
                ("text_encoder", "CLIPTextModel"),
            ] {
                if let Some(c) = index.part_class(part) {
                    if c != class {
                        bail!(
                            "{}: {part} is a {c}, only {class} is supported",
                            index_path.display()
                        );
                    }
                }
            }
        }

        let scheduler: SchedulerConfig =
            config::read_config(&dir.join("scheduler/scheduler_config.json"))?;
        let unet_cfg: UnetConfig = config::read_config(&dir.join("unet/config.json"))?;
        let SamplingShape { schedule, sample_shape, .. } = sampling_shape_of(&scheduler, &unet_cfg)?;
        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;

        let te_cfg: ClipTextConfig = config::read_config(&dir.join("text_encoder/config.json"))?;
        let te_file = open_weights(
            &dir.join("text_encoder"),
            "model.safetensors",
            text_encoder_key,
        )?;
        let unet_file = open_weights(
            &dir.join("unet"),
            "diffusion_pytorch_model.safetensors",
            str::to_string,
        )?;
        let vae_cfg: VaeConfig = config::read_config(&dir.join("vae/config.json"))?;
        let vae_file = open_weights(
            &dir.join("vae"),
            "diffusion_pytorch_model.safetensors",
            vae_key,
        )?;
        let weight_files = vec![
            ("text_encoder".to_string(), te_file.path.clone()),
            ("unet".to_string(), unet_file.path.clone()),
            ("vae".to_string(), vae_file.path.clone()),
        ];

        let mut ld = Loader::from_file("text_encoder", te_file, device);
        let text_encoder = ClipTextModel::load(&mut ld, &te_cfg)?;
        ld.finish(opts.strict)?;
        let mut ld = Loader::from_file("unet", unet_file, device);
        let unet = UNet2DConditionModel::load(&mut ld, &unet_cfg)?;
        ld.finish(opts.strict)?;
        let mut ld = Loader::from_file("vae", vae_file, device);
        let vae = AutoencoderKL::load(&mut ld, &vae_cfg)?;
        ld.finish(opts.strict)?;

        if tokenizer.max_len > te_cfg.max_position_embeddings {
            bail!(
                "tokenizer model_max_length {} exceeds the text encoder's {} positions",
                tokenizer.max_len,
                te_cfg.max_position_embeddings
            );
        }
        if let Some(&ctx) = match &unet_cfg.cross_attention_dim {
            config::PerBlock::One(c) => Some(c),
            config::PerBlock::Each(v) => v.first(),
        } {
            if ctx != te_cfg.hidden_size {
                bail!("unet cross_attention_dim {ctx} != text_encoder hidden_size {}: the parts come from different models", te_cfg.hidden_size);
            }
        }
        Ok(Self {
            dir,
            tokenizer,
            text_encoder,
            sample_shape,
            unet,
            vae,
            scheduler,
            schedule,
            weight_files,
            hashes: OnceLock::new(),
            embeddings: Mutex::new(HashMap::new()),
        })
    }

    /// Latent sides must be multiples of this: the UNet halves them once per down block but
    /// the last (8 for SD1.5).
    pub fn latent_multiple(&self) -> usize {
        self.unet.config.latent_multiple()
    }

    /// Latent size the sampler uses (default: the UNet's `sample_size`, 64x64 for SD1.5).
    pub fn set_latent_size(&mut self, h: usize, w: usize) {
        self.sample_shape = [self.sample_shape[0], h, w];
    }

    /// `part=sha256` for each weight file (hashed once, cached by path+size+mtime).
    pub fn weight_hashes(&self) -> Result<Vec<(String, String)>> {
        self.weight_files
            .iter()
            .map(|(part, p)| Ok((part.clone(), sha256_cached(p)?)))
            .collect()
    }

    /// Text-encoder `last_hidden_state` `[n, 77, D]` for the prompts, cached per prompt.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor<B, 3>> {
        let mut cache = self
            .embeddings
            .lock()
            .map_err(|_| anyhow!("prompt cache poisoned"))?;
        let mut missing: Vec<&str> = prompts
            .iter()
            .copied()
            .filter(|p| !cache.contains_key(*p))
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            let ids: Vec<Vec<u32>> = missing.iter().map(|p| self.tokenizer.encode(p)).collect();
            let out = self.text_encoder.forward(&ids)?.last_hidden_state;
            for (i, p) in missing.iter().enumerate() {
                cache.insert(p.to_string(), out.clone().narrow(0, i, 1));
            }
        }
        Ok(Tensor::cat(
            prompts.iter().map(|p| cache[*p].clone()).collect(),
            0,
        ))
    }

    /// Pipeline-space latents -> image (raw VAE output, about [-1, 1]).
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        self.vae.decode_latents(latents)
    }

    /// Image in [-1, 1] -> pipeline-space latents (posterior mean times the scaling factor).
    pub fn encode(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        self.vae.encode_latents(image)
    }
}

/// The training noise schedule of the scheduler config (SD1.5: scaled_linear).
fn schedule_from(s: &SchedulerConfig) -> Result<Schedule> {
    if s.prediction_type != "epsilon" {
        bail!(
            "scheduler/scheduler_config.json: prediction_type = {} is not supported (epsilon only, as SD1.5)",
            s.prediction_type
        );
    }
    if s.trained_betas.is_some() || s.beta_schedule != "scaled_linear" {
        bail!(
            "scheduler/scheduler_config.json: beta_schedule = {} is not supported (scaled_linear only, as SD1.5)",
            s.beta_schedule
        );
    }
    if s.num_train_timesteps < 2 || s.num_train_timesteps > crate::limits::MAX_TRAIN_TIMESTEPS {
        bail!(
            "scheduler/scheduler_config.json: num_train_timesteps must be in [2, {}] (SD1.5: 1000), got {}",
            crate::limits::MAX_TRAIN_TIMESTEPS,
            s.num_train_timesteps
        );
    }
    // scaled_linear interpolates sqrt(beta) between the two, so every beta lies between them.
    let beta_ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
    if !(beta_ok(s.beta_start) && beta_ok(s.beta_end) && s.beta_start <= s.beta_end) {
        bail!(
            "scheduler/scheduler_config.json: beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1 (SD1.5: 0.00085, 0.012), got {} and {}",
            s.beta_start,
            s.beta_end
        );
    }
    Ok(Schedule::scaled_linear(
        s.beta_start,
        s.beta_end,
        s.num_train_timesteps,
        s.set_alpha_to_one(),
    ))
}

impl<B: Backend> Denoiser<B> for Sd15<B> {
    fn describe(&self) -> String {
        let hashes = self.hashes.get_or_init(|| match self.weight_hashes() {
            Ok(h) => h
                .iter()
                .map(|(p, s)| format!("{p}={s}"))
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("sha256 unavailable ({e})"),
        });
        format!("sd15 {} ({hashes})", self.dir.display())
    }

    fn sample_shape(&self) -> [usize; 3] {
        self.sample_shape
    }

    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// One batched UNet call; unconditional rows use the cached empty-prompt embedding.
    fn eps(
        &self,
        x_vp: Tensor<B, 4>,
        timesteps: &[usize],
        prompts: &[Option<&str>],
    ) -> Result<Tensor<B, 4>> {
        let n = x_vp.dims()[0];
        if timesteps.len() != n || prompts.len() != n {
            bail!(
                "eps: {n} samples but {} timesteps and {} prompts",
                timesteps.len(),
                prompts.len()
            );
        }
        let rows: Vec<&str> = prompts.iter().map(|p| p.unwrap_or("")).collect();
        let context = self.encode_prompts(&rows)?;
        let ts: Vec<f64> = timesteps.iter().map(|&t| t as f64).collect();
        self.unet.forward(x_vp, &ts, context)
    }
}

/// Parameters of a UNet config, counted from tensor shapes (nothing allocated).
pub fn unet_param_count<B: Backend>(
    cfg: &UnetConfig,
    device: &B::Device,
) -> Result<(usize, usize)> {
    let mut ld = Loader::<B>::spec("unet", device);
    UNet2DConditionModel::load(&mut ld, cfg)?;
    Ok((ld.num_params(), ld.expected().len()))
}
