//! Layers shared by the CLIP text model, the UNet and the VAE, as plain tensors plus
//! forward functions (inference only: no burn `Module` derive, nothing to train).
//! Each `load` takes the parameter prefix, so names map one-to-one to safetensors keys.

use burn::tensor::activation::{sigmoid, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::{attention, conv2d, interpolate};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Bool, Tensor};

use super::weights::Loader;

pub struct Linear<B: Backend> {
    /// `[in, out]` (PyTorch's weight transposed once at load).
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    pub fn load(ld: &mut Loader<B>, prefix: &str, inp: usize, out: usize, bias: bool) -> Self {
        let w = ld.linear_weight(&format!("{prefix}.weight"), out, inp);
        let b = bias.then(|| ld.tensor(&format!("{prefix}.bias"), [out]));
        Self { w, b }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        burn::tensor::module::linear(x, self.w.clone(), self.b.clone())
    }
}

pub struct Conv2d<B: Backend> {
    w: Tensor<B, 4>,
    b: Tensor<B, 1>,
    stride: usize,
    padding: usize,
    /// Use im2col + matmul where it beats the backend's direct convolution (see `forward`).
    gemm: bool,
}

/// Largest H*W for which stride-1 convs go through im2col + matmul on the CPU backend.
const GEMM_MAX_PIXELS: usize = 32 * 32;

impl<B: Backend> Conv2d<B> {
    pub fn load(
        ld: &mut Loader<B>,
        prefix: &str,
        inp: usize,
        out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        Self {
            w: ld.tensor(&format!("{prefix}.weight"), [out, inp, k, k]),
            b: ld.tensor(&format!("{prefix}.bias"), [out]),
            stride,
            padding,
            // burn-ndarray's direct conv is 2-4x slower than its gemm at SD's low-resolution,
            // high-channel levels (1280 ch at 8x8 to 32x32); GPU backends keep their kernels.
            gemm: B::name(ld.device()).contains("ndarray"),
        }
    }

    /// A "same" convolution: odd kernel `k`, stride 1, padding `k / 2`.
    pub fn same(ld: &mut Loader<B>, prefix: &str, inp: usize, out: usize, k: usize) -> Self {
        Self::load(ld, prefix, inp, out, k, 1, k / 2)
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let [o, _, k, _] = self.w.dims();
        if self.gemm && self.stride == 1 && 2 * self.padding + 1 == k && (k == 1 || h * w <= GEMM_MAX_PIXELS) {
            // im2col: the k*k shifted copies of the padded input, ordered (c, ky, kx) like
            // the weight's flattening, then one matmul.
            let cols = if k == 1 {
                x.reshape([n, c, h * w])
            } else {
                let p = self.padding;
                let xp = x.pad((p, p, p, p), 0.0);
                let mut shifted = Vec::with_capacity(k * k);
                for ky in 0..k {
                    for kx in 0..k {
                        shifted.push(xp.clone().slice([0..n, 0..c, ky..ky + h, kx..kx + w]).reshape([n, c, 1, h * w]));
                    }
                }
                Tensor::cat(shifted, 2).reshape([n, c * k * k, h * w])
            };
            let y = self.w.clone().reshape([1, o, c * k * k]).matmul(cols) + self.b.clone().reshape([1, o, 1]);
            return y.reshape([n, o, h, w]);
        }
        let opts = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        conv2d(x, self.w.clone(), Some(self.b.clone()), opts)
    }
}

pub struct GroupNorm<B: Backend> {
    groups: usize,
    eps: f64,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
}

impl<B: Backend> GroupNorm<B> {
    pub fn load(ld: &mut Loader<B>, prefix: &str, groups: usize, channels: usize, eps: f64) -> Self {
        Self {
            groups,
            eps,
            w: ld.tensor(&format!("{prefix}.weight"), [channels]),
            b: ld.tensor(&format!("{prefix}.bias"), [channels]),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let g = self.groups;
        let x = x.reshape([n, g, (c / g) * h * w]);
        // Two-pass (biased) variance, like PyTorch's group_norm.
        let xc = x.clone() - x.mean_dim(2);
        let var = xc.clone().powi_scalar(2).mean_dim(2);
        let y = (xc / var.add_scalar(self.eps).sqrt()).reshape([n, c, h, w]);
        y * self.w.clone().reshape([1, c, 1, 1]) + self.b.clone().reshape([1, c, 1, 1])
    }
}

pub struct LayerNorm<B: Backend> {
    eps: f64,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(ld: &mut Loader<B>, prefix: &str, dim: usize, eps: f64) -> Self {
        Self { eps, w: ld.tensor(&format!("{prefix}.weight"), [dim]), b: ld.tensor(&format!("{prefix}.bias"), [dim]) }
    }

    /// Normalises over the last axis of `[n, L, C]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let xc = x.clone() - x.mean_dim(2);
        let var = xc.clone().powi_scalar(2).mean_dim(2);
        let y = xc / var.add_scalar(self.eps).sqrt();
        y * self.w.clone().unsqueeze::<3>() + self.b.clone().unsqueeze::<3>()
    }
}

/// Multi-head scaled dot-product attention on `[n, L, C]` projections, scale `head_dim^-0.5`.
/// Heads are split as `view(n, L, heads, hd).transpose(1, 2)`, as diffusers and transformers do.
pub fn multi_head_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 3> {
    let [n, lq, c] = q.dims();
    let lk = k.dims()[1];
    let hd = c / heads;
    let split = |t: Tensor<B, 3>, l: usize| t.reshape([n, l, heads, hd]).swap_dims(1, 2);
    let out = match mask {
        // burn's fused attention (flash attention on CUDA) where no mask is needed.
        None => attention(split(q, lq), split(k, lk), split(v, lk), None),
        Some(mask) => {
            let scores = split(q, lq).matmul(split(k, lk).swap_dims(2, 3)).div_scalar((hd as f64).sqrt());
            let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
            softmax(scores, 3).matmul(split(v, lk))
        }
    };
    out.swap_dims(1, 2).reshape([n, lq, c])
}

/// `x * sigmoid(1.702 x)`: CLIP's activation.
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * sigmoid(x.mul_scalar(1.702))
}

/// Nearest-neighbour upsampling to `size`; exact 2x is done by repetition (no index maths).
pub fn upsample_nearest<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    if size == [2 * h, 2 * w] {
        x.reshape([n, c, h, 1, w, 1]).expand([n, c, h, 2, w, 2]).reshape([n, c, 2 * h, 2 * w])
    } else {
        interpolate(x, size, InterpolateOptions::new(InterpolateMode::Nearest))
    }
}

/// ResNet block shared by the UNet (with a time embedding) and the VAE (without):
/// `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))`.
pub struct ResnetBlock<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    time_emb_proj: Option<Linear<B>>,
    norm2: GroupNorm<B>,
    conv2: Conv2d<B>,
    conv_shortcut: Option<Conv2d<B>>,
    out_scale: f64,
}

#[derive(Clone, Copy, Debug)]
pub struct ResnetCfg {
    pub groups: usize,
    pub eps: f64,
    /// Time embedding width, `None` for the VAE.
    pub temb: Option<usize>,
    pub out_scale: f64,
}

impl<B: Backend> ResnetBlock<B> {
    pub fn load(ld: &mut Loader<B>, p: &str, inp: usize, out: usize, cfg: &ResnetCfg) -> Self {
        Self {
            norm1: GroupNorm::load(ld, &format!("{p}.norm1"), cfg.groups, inp, cfg.eps),
            conv1: Conv2d::same(ld, &format!("{p}.conv1"), inp, out, 3),
            time_emb_proj: cfg.temb.map(|t| Linear::load(ld, &format!("{p}.time_emb_proj"), t, out, true)),
            norm2: GroupNorm::load(ld, &format!("{p}.norm2"), cfg.groups, out, cfg.eps),
            conv2: Conv2d::same(ld, &format!("{p}.conv2"), out, out, 3),
            conv_shortcut: (inp != out).then(|| Conv2d::load(ld, &format!("{p}.conv_shortcut"), inp, out, 1, 1, 0)),
            out_scale: cfg.out_scale,
        }
    }

    /// `temb` is the already SiLU-activated time embedding `[n, T]` (UNet only).
    pub fn forward(&self, x: Tensor<B, 4>, temb_act: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_act) {
            let t = proj.forward(t.clone());
            let [n, c] = t.dims();
            h = h + t.reshape([n, c, 1, 1]);
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        let y = skip + h;
        if self.out_scale == 1.0 {
            y
        } else {
            y.div_scalar(self.out_scale)
        }
    }
}
