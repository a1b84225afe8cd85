//! `UNet2DConditionModel` (diffusers) as SD1.5's config uses it: sinusoidal time embedding,
//! ResNet blocks, `Transformer2DModel` cross-attention, mid block, skip connections.
//! Keys: `time_embedding.*`, `conv_in`, `down_blocks.*`, `mid_block.*`, `up_blocks.*`,
//! `conv_norm_out`, `conv_out`.

use anyhow::{bail, Result};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::config::UnetConfig;
use super::layers::{
    add, add_bias_residual_per_channel, multi_head_attention, upsample_nearest, Conv2d, AttentionKernels, GroupNorm, LayerNorm, Linear,
    ResnetBlock, ResnetCfg,
};
use super::weights::Loader;

/// diffusers' `Attention` without biases on q/k/v; `to_out.0` has one.
struct Attention<B: Backend> {
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    to_out: Linear<B>,
    heads: usize,
    kernels: AttentionKernels,
}

impl<B: Backend> Attention<B> {
    fn load(ld: &mut Loader<B>, p: &str, c: usize, ctx: usize, heads: usize) -> Self {
        Self {
            to_q: Linear::load(ld, &format!("{p}.to_q"), c, c, false),
            to_k: Linear::load(ld, &format!("{p}.to_k"), ctx, c, false),
            to_v: Linear::load(ld, &format!("{p}.to_v"), ctx, c, false),
            to_out: Linear::load(ld, &format!("{p}.to_out.0"), c, c, true),
            heads,
            kernels: ld.attention_kernels(),
        }
    }

    /// `residual + attention(x, ctx)`, the output projection's bias and the residual added
    /// together (`Linear::forward_residual`).
    fn forward_residual(&self, x: Tensor<B, 3>, ctx: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let a = multi_head_attention(
            self.to_q.forward(x),
            self.to_k.forward(ctx.clone()),
            self.to_v.forward(ctx),
            self.heads,
            None,
            self.kernels,
        );
        self.to_out.forward_residual(a, residual)
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward (pre-LN).
struct TransformerBlock<B: Backend> {
    norm1: LayerNorm<B>,
    attn1: Attention<B>,
    norm2: LayerNorm<B>,
    attn2: Attention<B>,
    norm3: LayerNorm<B>,
    ff_proj: Linear<B>,
    ff_out: Linear<B>,
}

impl<B: Backend> TransformerBlock<B> {
    fn load(ld: &mut Loader<B>, p: &str, c: usize, ctx: usize, heads: usize) -> Self {
        let inner = 4 * c;
        Self {
            norm1: LayerNorm::load(ld, &format!("{p}.norm1"), c, 1e-5),
            attn1: Attention::load(ld, &format!("{p}.attn1"), c, c, heads),
            norm2: LayerNorm::load(ld, &format!("{p}.norm2"), c, 1e-5),
            attn2: Attention::load(ld, &format!("{p}.attn2"), c, ctx, heads),
            norm3: LayerNorm::load(ld, &format!("{p}.norm3"), c, 1e-5),
            ff_proj: Linear::load(ld, &format!("{p}.ff.net.0.proj"), c, 2 * inner, true),
            ff_out: Linear::load(ld, &format!("{p}.ff.net.2"), inner, c, true),
        }
    }

    fn forward(&self, x: Tensor<B, 3>, ctx: &Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.norm1.forward(x.clone());
        let x = self.attn1.forward_residual(h.clone(), h, x);
        let x = self.attn2.forward_residual(self.norm2.forward(x.clone()), ctx.clone(), x);
        let h = self.ff_proj.forward_geglu(self.norm3.forward(x.clone()));
        self.ff_out.forward_residual(h, x)
    }
}

/// 1x1 conv (SD1.5) or linear (`use_linear_projection`, SD2) in/out projection.
enum Proj<B: Backend> {
    Conv(Conv2d<B>),
    Linear(Linear<B>),
}

/// `Transformer2DModel`: GroupNorm (eps 1e-6), proj_in, transformer blocks, proj_out, residual.
struct Transformer2D<B: Backend> {
    norm: GroupNorm<B>,
    proj_in: Proj<B>,
    blocks: Vec<TransformerBlock<B>>,
    proj_out: Proj<B>,
    /// A conv `proj_out`'s bias on backend tensors, added with the residual in one pass.
    out_bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Transformer2D<B> {
    fn load(
        ld: &mut Loader<B>,
        p: &str,
        c: usize,
        ctx: usize,
        heads: usize,
        layers: usize,
        cfg: &UnetConfig,
    ) -> Self {
        let proj = |ld: &mut Loader<B>, name: &str| {
            if cfg.use_linear_projection {
                Proj::Linear(Linear::load(ld, &format!("{p}.{name}"), c, c, true))
            } else {
                Proj::Conv(Conv2d::load(ld, &format!("{p}.{name}"), c, c, 1, 1, 0))
            }
        };
        let norm = GroupNorm::load(ld, &format!("{p}.norm"), cfg.norm_num_groups, c, 1e-6);
        let proj_in = proj(ld, "proj_in");
        let blocks = (0..layers)
            .map(|i| {
                TransformerBlock::load(ld, &format!("{p}.transformer_blocks.{i}"), c, ctx, heads)
            })
            .collect();
        let mut proj_out = proj(ld, "proj_out");
        let out_bias = match &mut proj_out {
            Proj::Conv(conv) => conv.take_bias(),
            Proj::Linear(_) => None,
        };
        Self {
            norm,
            proj_in,
            blocks,
            proj_out,
            out_bias,
        }
    }

    fn forward(&self, x: Tensor<B, 4>, ctx: &Tensor<B, 3>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let to_seq = |t: Tensor<B, 4>| t.reshape([n, c, h * w]).swap_dims(1, 2);
        let to_img = |t: Tensor<B, 3>| t.swap_dims(1, 2).reshape([n, c, h, w]);
        let y = self.norm.forward(x.clone());
        let mut s = match &self.proj_in {
            Proj::Conv(conv) => conv.forward_to_seq(y),
            Proj::Linear(lin) => lin.forward(to_seq(y)),
        };
        for b in &self.blocks {
            s = b.forward(s, ctx);
        }
        let y = match &self.proj_out {
            Proj::Conv(conv) => conv.forward_from_seq(s, [h, w]),
            Proj::Linear(lin) => to_img(lin.forward(s)),
        };
        match &self.out_bias {
            Some(b) => add_bias_residual_per_channel(y, b, x),
            None => add(y, x),
        }
    }
}

/// A down or up block: resnets each followed by an optional transformer, then resampling.
struct Block<B: Backend> {
    resnets: Vec<ResnetBlock<B>>,
    attentions: Vec<Transformer2D<B>>,
    resample: Option<Conv2d<B>>,
}

pub struct UNet2DConditionModel<B: Backend> {
    pub config: UnetConfig,
    time_linear_1: Linear<B>,
    time_linear_2: Linear<B>,
    conv_in: Conv2d<B>,
    down_blocks: Vec<Block<B>>,
    mid_resnets: Vec<ResnetBlock<B>>,
    mid_attentions: Vec<Transformer2D<B>>,
    up_blocks: Vec<Block<B>>,
    conv_norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

impl<B: Backend> UNet2DConditionModel<B> {
    pub fn load(ld: &mut Loader<B>, cfg: &UnetConfig) -> Result<Self> {
        cfg.check_supported()?;
        let ch = &cfg.block_out_channels;
        let nb = ch.len();
        let temb = 4 * ch[0];
        let rc = ResnetCfg {
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            temb: Some(temb),
            out_scale: cfg.resnet_out_scale_factor,
        };
        let mut heads = Vec::new();
        let mut ctx = Vec::new();
        let mut tl = Vec::new();
        let mut lpb = Vec::new();
        for i in 0..nb {
            heads.push(cfg.heads(i)?);
            ctx.push(cfg.cross_attention_dim.get("cross_attention_dim", i, nb)?);
            tl.push(cfg.transformer_layers_per_block.get("transformer_layers_per_block", i, nb)?);
            lpb.push(cfg.layers_per_block.get("layers_per_block", i, nb)?);
            if !ch[i].is_multiple_of(heads[i]) || !ch[i].is_multiple_of(cfg.norm_num_groups) {
                bail!("unet/config.json: block_out_channels[{i}] = {} is not divisible by its heads {} and norm_num_groups {}", ch[i], heads[i], cfg.norm_num_groups);
            }
        }

        let time_linear_1 = Linear::load(ld, "time_embedding.linear_1", ch[0], temb, true);
        let time_linear_2 = Linear::load(ld, "time_embedding.linear_2", temb, temb, true);
        let conv_in = Conv2d::same(ld, "conv_in", cfg.in_channels, ch[0], cfg.conv_in_kernel);

        let mut down_blocks = Vec::new();
        for i in 0..nb {
            let p = format!("down_blocks.{i}");
            let cross = cfg.down_block_types[i] == "CrossAttnDownBlock2D";
            let inp = if i == 0 { ch[0] } else { ch[i - 1] };
            let (mut resnets, mut attentions) = (Vec::new(), Vec::new());
            for j in 0..lpb[i] {
                resnets.push(ResnetBlock::load(
                    ld,
                    &format!("{p}.resnets.{j}"),
                    if j == 0 { inp } else { ch[i] },
                    ch[i],
                    &rc,
                ));
                if cross {
                    attentions.push(Transformer2D::load(
                        ld,
                        &format!("{p}.attentions.{j}"),
                        ch[i],
                        ctx[i],
                        heads[i],
                        tl[i],
                        cfg,
                    ));
                }
            }
            let resample = (i + 1 < nb).then(|| {
                Conv2d::load(
                    ld,
                    &format!("{p}.downsamplers.0.conv"),
                    ch[i],
                    ch[i],
                    3,
                    2,
                    cfg.downsample_padding,
                )
            });
            down_blocks.push(Block {
                resnets,
                attentions,
                resample,
            });
        }

        let c = ch[nb - 1];
        let mid_rc = ResnetCfg {
            out_scale: cfg.mid_block_scale_factor,
            ..rc
        };
        let mid_resnets = vec![
            ResnetBlock::load(ld, "mid_block.resnets.0", c, c, &mid_rc),
            ResnetBlock::load(ld, "mid_block.resnets.1", c, c, &mid_rc),
        ];
        let mid_attentions = vec![Transformer2D::load(
            ld,
            "mid_block.attentions.0",
            c,
            ctx[nb - 1],
            heads[nb - 1],
            tl[nb - 1],
            cfg,
        )];

        // Up blocks mirror the down blocks: channels, heads and layer counts reversed.
        let mut up_blocks = Vec::new();
        for i in 0..nb {
            let r = nb - 1 - i;
            let p = format!("up_blocks.{i}");
            let cross = cfg.up_block_types[i] == "CrossAttnUpBlock2D";
            let out = ch[r];
            let prev = if i == 0 { ch[nb - 1] } else { ch[r + 1] };
            let skip_in = ch[r.saturating_sub(1)];
            let (mut resnets, mut attentions) = (Vec::new(), Vec::new());
            let n = lpb[r] + 1;
            for j in 0..n {
                let res_skip = if j + 1 == n { skip_in } else { out };
                let res_in = if j == 0 { prev } else { out };
                resnets.push(ResnetBlock::load(
                    ld,
                    &format!("{p}.resnets.{j}"),
                    res_in + res_skip,
                    out,
                    &rc,
                ));
                if cross {
                    attentions.push(Transformer2D::load(
                        ld,
                        &format!("{p}.attentions.{j}"),
                        out,
                        ctx[r],
                        heads[r],
                        tl[r],
                        cfg,
                    ));
                }
            }
            let resample = (i + 1 < nb)
                .then(|| Conv2d::same(ld, &format!("{p}.upsamplers.0.conv"), out, out, 3));
            up_blocks.push(Block {
                resnets,
                attentions,
                resample,
            });
        }

        let conv_norm_out = GroupNorm::load(
            ld,
            "conv_norm_out",
            cfg.norm_num_groups,
            ch[0],
            cfg.norm_eps,
        );
        let conv_out = Conv2d::same(ld, "conv_out", ch[0], cfg.out_channels, cfg.conv_out_kernel);
        Ok(Self {
            config: cfg.clone(),
            time_linear_1,
            time_linear_2,
            conv_in,
            down_blocks,
            mid_resnets,
            mid_attentions,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// Sinusoidal timestep features `[n, C0]` as diffusers' `get_timestep_embedding`
    /// (flip_sin_to_cos gives `[cos, sin]`). Computed in f32 like torch: at t = 999 an f64
    /// argument would differ from torch's by ~1e-4 absolute.
    pub fn time_proj(&self, timesteps: &[f64], device: &B::Device) -> Tensor<B, 2> {
        let dim = self.config.block_out_channels[0];
        let half = dim / 2;
        let shift = self.config.freq_shift as f32;
        let mut v = vec![0f32; timesteps.len() * dim];
        for (r, &t) in timesteps.iter().enumerate() {
            for i in 0..half {
                let exponent = -(10000f32.ln()) * i as f32 / (half as f32 - shift);
                let arg = (t as f32) * exponent.exp();
                let (s, c) = ((arg as f64).sin() as f32, (arg as f64).cos() as f32);
                let (first, second) = if self.config.flip_sin_to_cos {
                    (c, s)
                } else {
                    (s, c)
                };
                v[r * dim + i] = first;
                v[r * dim + half + i] = second;
            }
        }
        Tensor::from_data(TensorData::new(v, [timesteps.len(), dim]), device)
    }

    /// Noise prediction for `sample` `[n, C, H, W]` at per-row `timesteps`, conditioned on
    /// `context` `[n, L, cross_attention_dim]`.
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: &[f64],
        context: Tensor<B, 3>,
    ) -> Result<Tensor<B, 4>> {
        self.forward_traced(sample, timesteps, context, &mut |_, _| {})
    }

    /// `forward`, handing each block's output to `trace` under its diffusers module name
    /// (`time_proj` and `time_embedding` as `[n, C, 1, 1]`). Used by the parity tests.
    pub fn forward_traced(
        &self,
        sample: Tensor<B, 4>,
        timesteps: &[f64],
        context: Tensor<B, 3>,
        trace: &mut dyn FnMut(&str, &Tensor<B, 4>),
    ) -> Result<Tensor<B, 4>> {
        let [n, c, h, w] = sample.dims();
        if timesteps.len() != n || context.dims()[0] != n || c != self.config.in_channels {
            bail!(
                "unet input: {n} samples with {c} channels, {} timesteps, {} context rows (need {} channels and one timestep and context per sample)",
                timesteps.len(),
                context.dims()[0],
                self.config.in_channels
            );
        }
        let device = sample.device();
        let tp = self.time_proj(timesteps, &device);
        trace("time_proj", &tp.clone().unsqueeze_dims(&[2, 3]));
        let emb = self
            .time_linear_2
            .forward(silu(self.time_linear_1.forward(tp)));
        trace("time_embedding", &emb.clone().unsqueeze_dims(&[2, 3]));
        // Every resnet applies SiLU to the embedding before its own projection.
        let temb = silu(emb);

        let sample = if self.config.center_input_sample {
            sample.mul_scalar(2.0).sub_scalar(1.0)
        } else {
            sample
        };
        let mut x = self.conv_in.forward(sample);
        trace("conv_in", &x);
        let mut skips = vec![x.clone()];
        for (i, b) in self.down_blocks.iter().enumerate() {
            for (j, r) in b.resnets.iter().enumerate() {
                x = r.forward(x, Some(&temb));
                if let Some(a) = b.attentions.get(j) {
                    x = a.forward(x, &context);
                }
                skips.push(x.clone());
            }
            if let Some(conv) = &b.resample {
                x = conv.forward(x);
                skips.push(x.clone());
            }
            trace(&format!("down_blocks.{i}"), &x);
        }

        x = self.mid_resnets[0].forward(x, Some(&temb));
        x = self.mid_attentions[0].forward(x, &context);
        x = self.mid_resnets[1].forward(x, Some(&temb));
        trace("mid_block", &x);

        for (i, b) in self.up_blocks.iter().enumerate() {
            for (j, r) in b.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                x = r.forward(Tensor::cat(vec![x, skip], 1), Some(&temb));
                if let Some(a) = b.attentions.get(j) {
                    x = a.forward(x, &context);
                }
            }
            if let Some(conv) = &b.resample {
                // Upsample to the next skip's size, so odd latent sizes work as in diffusers.
                let [_, _, sh, sw] = skips.last().expect("skip for next block").dims();
                x = conv.forward(upsample_nearest(x, [sh, sw]));
            }
            trace(&format!("up_blocks.{i}"), &x);
        }
        let x = self.conv_norm_out.forward(x);
        trace("conv_norm_out", &x);
        let _ = (h, w);
        Ok(self.conv_out.forward(silu(x)))
    }
}
