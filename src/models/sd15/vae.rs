//! `AutoencoderKL` (diffusers), keys `encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`.
//! All VAE GroupNorms use eps 1e-6. The encoder downsamples with a (0,1,0,1) pad and a
//! stride-2 conv without padding; the decoder upsamples with nearest x2 then a conv.

use anyhow::Result;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::config::VaeConfig;
use super::layers::{
    multi_head_attention, upsample_nearest, Conv2d, AttentionKernels, GroupNorm, Linear, ResnetBlock, ResnetCfg,
};
use super::weights::Loader;

const EPS: f64 = 1e-6;

/// Single-head self-attention over H*W with a residual (the mid block's `attentions.0`).
struct VaeAttention<B: Backend> {
    group_norm: GroupNorm<B>,
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    to_out: Linear<B>,
    kernels: AttentionKernels,
}

impl<B: Backend> VaeAttention<B> {
    fn load(ld: &mut Loader<B>, p: &str, c: usize, groups: usize) -> Self {
        let lin = |ld: &mut Loader<B>, n: &str| Linear::load(ld, &format!("{p}.{n}"), c, c, true);
        Self {
            group_norm: GroupNorm::load(ld, &format!("{p}.group_norm"), groups, c, EPS),
            to_q: lin(ld, "to_q"),
            to_k: lin(ld, "to_k"),
            to_v: lin(ld, "to_v"),
            to_out: lin(ld, "to_out.0"),
            kernels: ld.attention_kernels(),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let t = self
            .group_norm
            .forward(x.clone())
            .reshape([n, c, h * w])
            .swap_dims(1, 2);
        let a = multi_head_attention(
            self.to_q.forward(t.clone()),
            self.to_k.forward(t.clone()),
            self.to_v.forward(t),
            1,
            None,
            self.kernels,
        );
        let out = self.to_out.forward(a).swap_dims(1, 2).reshape([n, c, h, w]);
        out + x
    }
}

/// `UNetMidBlock2D`: resnet, optional attention, resnet.
struct MidBlock<B: Backend> {
    resnets: Vec<ResnetBlock<B>>,
    attention: Option<VaeAttention<B>>,
}

impl<B: Backend> MidBlock<B> {
    fn load(ld: &mut Loader<B>, p: &str, c: usize, cfg: &VaeConfig, rc: &ResnetCfg) -> Self {
        let r0 = ResnetBlock::load(ld, &format!("{p}.resnets.0"), c, c, rc);
        let attention = cfg
            .mid_block_add_attention
            .then(|| VaeAttention::load(ld, &format!("{p}.attentions.0"), c, cfg.norm_num_groups));
        let r1 = ResnetBlock::load(ld, &format!("{p}.resnets.1"), c, c, rc);
        Self {
            resnets: vec![r0, r1],
            attention,
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.resnets[0].forward(x, None);
        if let Some(a) = &self.attention {
            x = a.forward(x);
        }
        self.resnets[1].forward(x, None)
    }
}

/// A down or up block: resnets, then an optional resampling conv.
struct Block<B: Backend> {
    resnets: Vec<ResnetBlock<B>>,
    resample: Option<Conv2d<B>>,
}

pub struct Encoder<B: Backend> {
    conv_in: Conv2d<B>,
    down_blocks: Vec<Block<B>>,
    mid_block: MidBlock<B>,
    conv_norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

pub struct Decoder<B: Backend> {
    conv_in: Conv2d<B>,
    mid_block: MidBlock<B>,
    up_blocks: Vec<Block<B>>,
    conv_norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

pub struct AutoencoderKL<B: Backend> {
    pub config: VaeConfig,
    pub encoder: Encoder<B>,
    pub decoder: Decoder<B>,
    quant_conv: Option<Conv2d<B>>,
    post_quant_conv: Option<Conv2d<B>>,
}

/// The posterior `N(mean, std^2)` of the encoder, in unscaled latent units.
pub struct Posterior<B: Backend> {
    pub mean: Tensor<B, 4>,
    /// Clamped to [-30, 20], as diffusers' `DiagonalGaussianDistribution`.
    pub logvar: Tensor<B, 4>,
    pub std: Tensor<B, 4>,
}

impl<B: Backend> AutoencoderKL<B> {
    pub fn load(ld: &mut Loader<B>, config: &VaeConfig) -> Result<Self> {
        config.check_supported()?;
        let ch = &config.block_out_channels;
        let (g, lat, lpb) = (
            config.norm_num_groups,
            config.latent_channels,
            config.layers_per_block,
        );
        let rc = ResnetCfg {
            groups: g,
            eps: EPS,
            temb: None,
            out_scale: 1.0,
        };
        let last = *ch.last().unwrap();

        let conv_in = Conv2d::same(ld, "encoder.conv_in", config.in_channels, ch[0], 3);
        let mut down_blocks = Vec::new();
        for (i, &out) in ch.iter().enumerate() {
            let inp = if i == 0 { ch[0] } else { ch[i - 1] };
            let p = format!("encoder.down_blocks.{i}");
            let resnets = (0..lpb)
                .map(|j| {
                    ResnetBlock::load(
                        ld,
                        &format!("{p}.resnets.{j}"),
                        if j == 0 { inp } else { out },
                        out,
                        &rc,
                    )
                })
                .collect();
            let resample = (i + 1 < ch.len())
                .then(|| Conv2d::load(ld, &format!("{p}.downsamplers.0.conv"), out, out, 3, 2, 0));
            down_blocks.push(Block { resnets, resample });
        }
        let encoder = Encoder {
            conv_in,
            down_blocks,
            mid_block: MidBlock::load(ld, "encoder.mid_block", last, config, &rc),
            conv_norm_out: GroupNorm::load(ld, "encoder.conv_norm_out", g, last, EPS),
            conv_out: Conv2d::same(ld, "encoder.conv_out", last, 2 * lat, 3),
        };
        let quant_conv = config
            .use_quant_conv
            .then(|| Conv2d::load(ld, "quant_conv", 2 * lat, 2 * lat, 1, 1, 0));
        let post_quant_conv = config
            .use_post_quant_conv
            .then(|| Conv2d::load(ld, "post_quant_conv", lat, lat, 1, 1, 0));

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let conv_in = Conv2d::same(ld, "decoder.conv_in", lat, rev[0], 3);
        let mid_block = MidBlock::load(ld, "decoder.mid_block", rev[0], config, &rc);
        let mut up_blocks = Vec::new();
        for (i, &out) in rev.iter().enumerate() {
            let inp = if i == 0 { rev[0] } else { rev[i - 1] };
            let p = format!("decoder.up_blocks.{i}");
            let resnets = (0..=lpb)
                .map(|j| {
                    ResnetBlock::load(
                        ld,
                        &format!("{p}.resnets.{j}"),
                        if j == 0 { inp } else { out },
                        out,
                        &rc,
                    )
                })
                .collect();
            let resample = (i + 1 < rev.len())
                .then(|| Conv2d::same(ld, &format!("{p}.upsamplers.0.conv"), out, out, 3));
            up_blocks.push(Block { resnets, resample });
        }
        let decoder = Decoder {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(ld, "decoder.conv_norm_out", g, ch[0], EPS),
            conv_out: Conv2d::same(ld, "decoder.conv_out", ch[0], config.out_channels, 3),
        };
        Ok(Self {
            config: config.clone(),
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
        })
    }

    /// Image `[n, 3, H, W]` in [-1, 1] -> posterior over unscaled latents `[n, 4, H/8, W/8]`.
    pub fn encode(&self, x: Tensor<B, 4>) -> Posterior<B> {
        let e = &self.encoder;
        let mut x = e.conv_in.forward(x);
        for b in &e.down_blocks {
            for r in &b.resnets {
                x = r.forward(x, None);
            }
            if let Some(conv) = &b.resample {
                x = conv.forward(x.pad((0, 1, 0, 1), 0.0));
            }
        }
        x = e
            .conv_out
            .forward(e.conv_norm_out.forward_silu(e.mid_block.forward(x)));
        if let Some(q) = &self.quant_conv {
            x = q.forward(x);
        }
        let [n, c2, h, w] = x.dims();
        let c = c2 / 2;
        let mean = x.clone().narrow(1, 0, c);
        let logvar = x.narrow(1, c, c).clamp(-30.0, 20.0);
        let std = logvar.clone().mul_scalar(0.5).exp();
        debug_assert_eq!(mean.dims(), [n, c, h, w]);
        Posterior { mean, logvar, std }
    }

    /// Unscaled latents -> image (raw decoder output, not clamped).
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let d = &self.decoder;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z),
            None => z,
        };
        let mut x = d.mid_block.forward(d.conv_in.forward(z));
        for b in &d.up_blocks {
            for r in &b.resnets {
                x = r.forward(x, None);
            }
            if let Some(conv) = &b.resample {
                let [_, _, h, w] = x.dims();
                x = conv.forward(upsample_nearest(x, [2 * h, 2 * w]));
            }
        }
        d.conv_out.forward(d.conv_norm_out.forward_silu(x))
    }

    /// Pipeline-space latents (as the UNet sees them) -> image: `decode(z / scale + shift)`.
    pub fn decode_latents(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = latents
            .div_scalar(self.config.scaling_factor)
            .add_scalar(self.config.shift_factor.unwrap_or(0.0));
        self.decode(z)
    }

    /// Image -> pipeline-space latents from the posterior mean: `(mean - shift) * scale`.
    pub fn encode_latents(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        let mean = self.encode(image).mean;
        mean.sub_scalar(self.config.shift_factor.unwrap_or(0.0))
            .mul_scalar(self.config.scaling_factor)
    }
}
