//! The `config.json` files of a diffusers SD1.5 folder. Defaults are the library defaults
//! (transformers `CLIPTextConfig`, diffusers `UNet2DConditionModel`, `AutoencoderKL`,
//! `PNDMScheduler`), because real SD1.5 files list only some keys. Unknown keys are ignored:
//! diffusers and transformers add new ones with every release.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Reads and parses one config file, with a one-line error naming it.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    if !path.exists() {
        bail!("{} is missing: copy it from the model download (every part folder needs its config)", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not a valid config ({e}): restore it from the model download", path.display()))
}

/// A value that configs give either once for all blocks or per block.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for block `i` of `n`; `key` names the UNet config entry in the error.
    pub fn get(&self, key: &str, i: usize, n: usize) -> Result<T> {
        match self {
            PerBlock::One(v) => Ok(v.clone()),
            PerBlock::Each(v) if v.len() == n => Ok(v[i].clone()),
            PerBlock::Each(v) => bail!(
                "unet/config.json: {key} lists {} value{} for {n} blocks (one per block_out_channels entry, or one number for all)",
                v.len(),
                if v.len() == 1 { "" } else { "s" }
            ),
        }
    }

    /// Every block's value (checks the list's length).
    fn all(&self, key: &str, n: usize) -> Result<Vec<T>> {
        (0..n).map(|i| self.get(key, i, n)).collect()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub eos_token_id: i64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

impl ClipTextConfig {
    /// Fails on options this implementation does not support, naming the key.
    pub fn check_supported(&self) -> Result<()> {
        if self.hidden_act != "quick_gelu" && self.hidden_act != "gelu" {
            bail!("text_encoder/config.json: hidden_act = {} is not supported (quick_gelu or gelu)", self.hidden_act);
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "text_encoder/config.json: hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        crate::limits::at_most("text_encoder/config.json: num_hidden_layers", self.num_hidden_layers, crate::limits::MAX_MODEL_LAYERS)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct UnetConfig {
    pub sample_size: Option<PerBlock<usize>>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    pub transformer_layers_per_block: PerBlock<usize>,
    /// SD1.5 stores the number of heads here (diffusers issue 2011).
    pub attention_head_dim: PerBlock<usize>,
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub resnet_time_scale_shift: String,
    pub resnet_out_scale_factor: f64,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_cond_proj_dim: Option<usize>,
    pub timestep_post_act: Option<String>,
    pub encoder_hid_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub mid_block_only_cross_attention: Option<bool>,
}

impl Default for UnetConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: s(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            resnet_time_scale_shift: "default".into(),
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_cond_proj_dim: None,
            timestep_post_act: None,
            encoder_hid_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            mid_block_only_cross_attention: None,
        }
    }
}

impl UnetConfig {
    /// Latent sides must be multiples of this: the UNet halves them once per down block but
    /// the last (8 for SD1.5).
    pub fn latent_multiple(&self) -> usize {
        1usize.checked_shl(self.block_out_channels.len().saturating_sub(1) as u32).filter(|&m| m > 0).unwrap_or(usize::MAX)
    }

    /// Fails on options this implementation does not support, naming the key.
    pub fn check_supported(&self) -> Result<()> {
        let unsupported =
            |key: &str, val: String| anyhow!("unet/config.json: {key} = {val} is not supported (SD1.5 layout only)");
        let n = self.block_out_channels.len();
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(anyhow!(
                "unet/config.json: down_block_types, up_block_types and block_out_channels must have the same length"
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Err(unsupported("down_block_types", t.clone()));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Err(unsupported("up_block_types", t.clone()));
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return Err(unsupported("mid_block_type", format!("{:?}", self.mid_block_type)));
        }
        for i in 0..n {
            if self.only_cross_attention.get("only_cross_attention", i, n)? {
                return Err(unsupported("only_cross_attention", "true".into()));
            }
        }
        let checks: [(&str, bool, String); 9] = [
            ("act_fn", self.act_fn != "silu", self.act_fn.clone()),
            ("dual_cross_attention", self.dual_cross_attention, "true".into()),
            ("class_embed_type", self.class_embed_type.is_some(), format!("{:?}", self.class_embed_type)),
            ("addition_embed_type", self.addition_embed_type.is_some(), format!("{:?}", self.addition_embed_type)),
            (
                "resnet_time_scale_shift",
                self.resnet_time_scale_shift != "default",
                self.resnet_time_scale_shift.clone(),
            ),
            ("time_embedding_type", self.time_embedding_type != "positional", self.time_embedding_type.clone()),
            ("time_embedding_dim", self.time_embedding_dim.is_some(), format!("{:?}", self.time_embedding_dim)),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some(), format!("{:?}", self.time_cond_proj_dim)),
            ("encoder_hid_dim", self.encoder_hid_dim.is_some(), format!("{:?}", self.encoder_hid_dim)),
        ];
        for (key, bad, val) in checks {
            if bad {
                return Err(unsupported(key, val));
            }
        }
        if self.timestep_post_act.is_some() {
            return Err(unsupported("timestep_post_act", format!("{:?}", self.timestep_post_act)));
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return Err(unsupported("conv_in_kernel/conv_out_kernel", "an even size".into()));
        }
        // diffusers pads the downsampling convs' right and bottom by one for 0 and by `p` on
        // every side otherwise; only SD1.5's 1 halves every side exactly as this UNet does.
        if self.downsample_padding != 1 {
            return Err(unsupported("downsample_padding", format!("{} (SD1.5: 1)", self.downsample_padding)));
        }
        for (key, per_block) in [("layers_per_block", &self.layers_per_block), ("transformer_layers_per_block", &self.transformer_layers_per_block)] {
            for (i, layers) in per_block.all(key, n)?.into_iter().enumerate() {
                crate::limits::at_most(&format!("unet/config.json: {key} (block {i})"), layers, crate::limits::MAX_MODEL_LAYERS)?;
            }
        }
        self.cross_attention_dim.all("cross_attention_dim", n)?;
        // Shapes the layers need (else a norm or head split would fail inside the forward).
        if n == 0 {
            bail!("unet/config.json: block_out_channels is empty");
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if self.norm_num_groups == 0 || c % self.norm_num_groups != 0 {
                bail!("unet/config.json: block_out_channels[{i}] = {c} is not a multiple of norm_num_groups = {}", self.norm_num_groups);
            }
            let heads = self.heads(i)?;
            if heads == 0 || c % heads != 0 {
                bail!("unet/config.json: block_out_channels[{i}] = {c} cannot be split into {heads} attention heads (attention_head_dim / num_attention_heads)");
            }
        }
        Ok(())
    }

    /// Attention heads of each down block (diffusers: `num_attention_heads or attention_head_dim`).
    pub fn heads(&self, i: usize) -> Result<usize> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.get("num_attention_heads", i, n),
            None => self.attention_head_dim.get("attention_head_dim", i, n),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    pub fn check_supported(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            bail!("vae/config.json: down_block_types, up_block_types and block_out_channels must have the same length");
        }
        if self.down_block_types.iter().any(|t| t != "DownEncoderBlock2D")
            || self.up_block_types.iter().any(|t| t != "UpDecoderBlock2D")
        {
            bail!("vae/config.json: only DownEncoderBlock2D / UpDecoderBlock2D blocks are supported");
        }
        if self.act_fn != "silu" {
            bail!("vae/config.json: act_fn = {} is not supported (silu only)", self.act_fn);
        }
        crate::limits::at_most("vae/config.json: layers_per_block", self.layers_per_block, crate::limits::MAX_MODEL_LAYERS)?;
        if n == 0 {
            bail!("vae/config.json: block_out_channels is empty");
        }
        // Latents are divided by it on the way into the decoder.
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            bail!("vae/config.json: scaling_factor must be a positive number (SD1.5: 0.18215), got {}", self.scaling_factor);
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            bail!("vae/config.json: shift_factor must be a finite number or null");
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if self.norm_num_groups == 0 || c % self.norm_num_groups != 0 {
                bail!("vae/config.json: block_out_channels[{i}] = {c} is not a multiple of norm_num_groups = {}", self.norm_num_groups);
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    /// PNDM (SD1.5's scheduler) defaults to false; DDIM's class default is true.
    pub set_alpha_to_one: Option<bool>,
    pub steps_offset: usize,
    pub prediction_type: String,
    pub timestep_spacing: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            class_name: "PNDMScheduler".into(),
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            set_alpha_to_one: None,
            steps_offset: 0,
            prediction_type: "epsilon".into(),
            timestep_spacing: "leading".into(),
        }
    }
}

impl SchedulerConfig {
    pub fn set_alpha_to_one(&self) -> bool {
        self.set_alpha_to_one.unwrap_or(self.class_name == "DDIMScheduler")
    }
}

/// `model_index.json`: which parts the pipeline has. Entries are `[library, class]`, or
/// `[null, null]` for absent optional parts (safety checker, feature extractor, ...).
#[derive(Clone, Debug, Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    #[serde(flatten)]
    pub parts: std::collections::BTreeMap<String, serde_json::Value>,
}

impl ModelIndex {
    /// The class of a part, `None` when absent or null.
    pub fn part_class(&self, part: &str) -> Option<&str> {
        self.parts.get(part)?.as_array()?.get(1)?.as_str()
    }
}
