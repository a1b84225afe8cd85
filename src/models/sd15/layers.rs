//! Layers shared by the CLIP text model, the UNet and the VAE, as plain tensors plus
//! forward functions (inference only: no burn `Module` derive, nothing to train).
//! Each `load` takes the parameter prefix, so names map one-to-one to safetensors keys.

use burn::tensor::activation::{gelu, sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, interpolate};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Bool, DType, Element, FloatDType, Tensor};
#[cfg(test)]
use burn::tensor::TensorData;

use super::cpu_kernels;
use crate::tensor_util::tensor_from_vec;
use super::weights::Loader;

/// A layer's weight and bias: backend tensors, or (on the f32 CPU backend) plain buffers that
/// `cpu_kernels` read directly.
enum Params<B: Backend, const D: usize> {
    Backend {
        w: Tensor<B, D>,
        b: Option<Tensor<B, 1>>,
    },
    Host {
        w: Vec<f32>,
        b: Option<Vec<f32>>,
    },
}

impl<B: Backend, const D: usize> Params<B, D> {
    /// The bias of backend parameters, taken out (the layer then runs without one) for the
    /// caller to add later, in a pass it has anyway; `None` for host parameters (the CPU
    /// kernels add their bias inside the GEMM, for free) and for a layer without a bias.
    fn take_backend_bias(&mut self) -> Option<Tensor<B, 1>> {
        match self {
            Params::Backend { b, .. } => b.take(),
            Params::Host { .. } => None,
        }
    }

    fn new(w: Tensor<B, D>, b: Option<Tensor<B, 1>>, device: &B::Device) -> Self {
        if cpu_kernels::host_backend::<B>(device) {
            Params::Host {
                w: cpu_kernels::to_vec(w),
                b: b.map(cpu_kernels::to_vec),
            }
        } else {
            Params::Backend { w, b }
        }
    }
}

pub struct Linear<B: Backend> {
    /// `[in, out]` (PyTorch's weight transposed once at load).
    p: Params<B, 2>,
    inp: usize,
    out: usize,
    /// The matmul routine on burn-cuda ([`GPU_MATMUL_ENV`]).
    kernel: GpuMatmul,
}

impl<B: Backend> Linear<B> {
    pub fn load(ld: &mut Loader<B>, prefix: &str, inp: usize, out: usize, bias: bool) -> Self {
        let w = ld.linear_weight(&format!("{prefix}.weight"), out, inp);
        let b = bias.then(|| ld.tensor(&format!("{prefix}.bias"), [out]));
        Self {
            p: Params::new(w, b, ld.device()),
            inp,
            out,
            kernel: ld.gpu_matmul(),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.p {
            Params::Backend { w, b } if self.kernel == GpuMatmul::Auto => burn::tensor::module::linear(x, w.clone(), b.clone()),
            Params::Backend { w, b } => {
                let y = matmul(x, w.clone().unsqueeze(), self.kernel);
                match b {
                    Some(b) => y + b.clone().unsqueeze(),
                    None => y,
                }
            }
            Params::Host { w, b } => {
                let mut shape = x.dims();
                let rows: usize = shape[..D - 1].iter().product();
                let device = x.device();
                let y = cpu_kernels::linear(
                    &cpu_kernels::to_vec(x),
                    rows,
                    self.inp,
                    w,
                    self.out,
                    b.as_deref(),
                );
                shape[D - 1] = self.out;
                tensor_from_vec(y, shape, &device)
            }
        }
    }

    /// Adds `extra` to a backend layer's bias (another layer's bias folded into this one).
    fn fold_bias(&mut self, extra: Tensor<B, 1>) {
        if let Params::Backend { b, .. } = &mut self.p {
            *b = Some(match b.take() {
                Some(b) => b + extra,
                None => extra,
            });
        }
    }

    /// `residual + self.forward(x)`: on burn-cuda the bias and the residual are added in one
    /// pass after the matmul (`crate::backend::add_bias_residual`), one launch fewer per
    /// transformer sublayer; elsewhere exactly the layer and then the add.
    pub fn forward_residual<const D: usize>(&self, x: Tensor<B, D>, residual: Tensor<B, D>) -> Tensor<B, D> {
        match &self.p {
            #[cfg(feature = "cuda")]
            Params::Backend { w, b: Some(b) } => crate::backend::add_bias_residual(matmul(x, w.clone().unsqueeze(), self.kernel), b, residual),
            _ => residual + self.forward(x),
        }
    }

    /// `geglu(self.forward(x))`: on burn-cuda the bias is added inside the GEGLU kernel
    /// ([`geglu_with_bias`]), one launch fewer per feed-forward.
    pub fn forward_geglu(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.p {
            #[cfg(feature = "cuda")]
            Params::Backend { w, b: Some(b) } => geglu_with_bias(matmul(x, w.clone().unsqueeze(), self.kernel), b),
            _ => geglu(self.forward(x)),
        }
    }
}

pub struct Conv2d<B: Backend> {
    /// `[out, in, k, k]` and `[out]`.
    p: Params<B, 4>,
    dims: [usize; 3],
    stride: usize,
    padding: usize,
    /// Backend path: im2col + matmul for stride-1 "same" convs up to this many pixels (1x1 at any size);
    /// 0: never.
    gemm_max_pixels: usize,
    /// Backend path on burn-cuda: one of the implicit-GEMM kernels ([`GPU_CONV_ENV`]), or
    /// burn's conv2d.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    kernel: GpuConv,
}

/// Largest H*W for which stride-1 convs go through im2col + matmul on a non-f32 CPU backend.
const GEMM_MAX_PIXELS: usize = 32 * 32;

/// Environment switch for the convolutions of GPU (cubecl) backends: `implicit-gemm` (default:
/// burn-cubecl's implicit-GEMM tensor-core kernel, `simple_sync` with cyclic reading and cmma
/// tiles, chosen without autotune; on burn-cuda, else burn's conv2d), its siblings among
/// cubek-convolution's kernels, which burn reaches only through autotune (`implicit-gemm-mma`:
/// PTX `mma` tiles with strided reading; `-async`, `-async-mma`: asynchronous loads;
/// `-tma`, `-tma-mma`: the tensor-memory accelerator, Hopper on), `native` (burn's conv2d:
/// burn-cubecl's direct kernel in `cuda` builds, autotuned in `cuda-autotune` builds) or
/// `im2col` (every stride-1 "same" conv as im2col + one matmul on the tensor cores, f32
/// accumulation; more memory) or `cublas` (cuBLAS GEMMs, `crate::cublas::conv2d`: 1x1 convs as
/// one GEMM over the pixels as they lie, the others as ddrep's im2col kernel in chunks of at
/// most 256 MB and one GEMM each, f32 accumulation, NHWC output; where cuBLAS does not run,
/// said once, the default kernel; not yet run on a GPU). The default is the fastest measured: an SD1.5 UNet eval in f16
/// on the lent H200 (2026-11-26, `cuda` build) took 0.087 s with `implicit-gemm`, 0.137 s with
/// `im2col` and 0.330 s with `native`; the siblings 0.081-0.089 s, within noise (the two
/// `-mma` ones refused by NVRTC at [2, 1280, 8, 8]). A sibling that
/// cubek refuses is said once on stderr and then the default kernel runs for the rest of the
/// process. Read once per model part by the `Loader`; an unknown value is an error from
/// `Loader::finish` (and when the CLI starts).
pub const GPU_CONV_ENV: &str = "DDREP_GPU_CONV";

/// How GPU backends run convolutions; see [`GPU_CONV_ENV`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuConv {
    #[default]
    ImplicitGemm,
    ImplicitGemmMma,
    ImplicitGemmAsync,
    ImplicitGemmAsyncMma,
    ImplicitGemmTma,
    ImplicitGemmTmaMma,
    Native,
    Im2col,
    Cublas,
}

impl GpuConv {
    /// Whether this is one of the implicit-GEMM kernels (called by ddrep, not by burn's conv2d).
    pub fn is_implicit_gemm(self) -> bool {
        !matches!(self, GpuConv::Native | GpuConv::Im2col | GpuConv::Cublas)
    }

    /// The value of [`GPU_CONV_ENV`] that selects this.
    pub fn name(self) -> &'static str {
        choice_name(&GPU_CONV_NAMES, self)
    }
}

/// The names of [`GpuConv`]'s values, as [`GPU_CONV_ENV`] takes them.
const GPU_CONV_NAMES: [(&str, GpuConv); 9] = [
    ("implicit-gemm", GpuConv::ImplicitGemm),
    ("implicit-gemm-mma", GpuConv::ImplicitGemmMma),
    ("implicit-gemm-async", GpuConv::ImplicitGemmAsync),
    ("implicit-gemm-async-mma", GpuConv::ImplicitGemmAsyncMma),
    ("implicit-gemm-tma", GpuConv::ImplicitGemmTma),
    ("implicit-gemm-tma-mma", GpuConv::ImplicitGemmTmaMma),
    ("native", GpuConv::Native),
    ("im2col", GpuConv::Im2col),
    ("cublas", GpuConv::Cublas),
];

/// The value of [`GPU_CONV_ENV`], or an error naming the variable and the known values.
pub fn gpu_conv() -> Result<GpuConv, String> {
    env_choice(GPU_CONV_ENV, &GPU_CONV_NAMES)
}

/// Environment switch for the matmuls of the SD1.5 models' linear layers and blocked attention
/// on burn-cuda: `auto` (default: burn's matmul, which without autotune is cubek-matmul's
/// `Auto`, the simple cyclic cmma kernel) or one of cubek-matmul's other routines, which burn
/// reaches only through autotune: `simple-mma` (PTX `mma` tiles), `multi-rows`,
/// `mma-multi-rows` (the simple kernel with several rows of tiles per cube; in an earlier
/// autotune run on the H200 it beat `auto` 1.3-2x on every shape with 4096 rows or more),
/// `double`, `double-mma`
/// (double buffering), `ordered-double` (ordered double buffering, 8 rows), `specialized-tma-mma`
/// (warp-specialised loads through the tensor-memory accelerator), or `cublas` (cuBLAS's
/// strided-batched GEMM, `crate::cublas::matmul`, f32 accumulation as PyTorch's; reads
/// transposed and head-split views as they lie; where it does not run, said once, burn's
/// matmul; not yet run on a GPU). On the H200 (2026-11-26)
/// `simple-mma` was within noise of `auto`, `specialized-tma-mma` was refused, and the three
/// double-buffered routines gave non-finite UNet outputs (wrong results, which `ddrep bench`
/// and the samplers stop on; not refusals), so they stay opt-in for experiments.
/// A refused routine is said once on stderr, and burn's matmul runs for the rest of the process.
/// Read once per model part by the `Loader`, like [`GPU_CONV_ENV`].
pub const GPU_MATMUL_ENV: &str = "DDREP_GPU_MATMUL";

/// Which matmul routine GPU backends run; see [`GPU_MATMUL_ENV`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuMatmul {
    #[default]
    Auto,
    SimpleMma,
    MultiRows,
    MmaMultiRows,
    Double,
    DoubleMma,
    OrderedDouble,
    SpecializedTmaMma,
    Cublas,
}

/// The names of [`GpuMatmul`]'s values, as [`GPU_MATMUL_ENV`] takes them.
const GPU_MATMUL_NAMES: [(&str, GpuMatmul); 9] = [
    ("auto", GpuMatmul::Auto),
    ("simple-mma", GpuMatmul::SimpleMma),
    ("multi-rows", GpuMatmul::MultiRows),
    ("mma-multi-rows", GpuMatmul::MmaMultiRows),
    ("double", GpuMatmul::Double),
    ("double-mma", GpuMatmul::DoubleMma),
    ("ordered-double", GpuMatmul::OrderedDouble),
    ("specialized-tma-mma", GpuMatmul::SpecializedTmaMma),
    ("cublas", GpuMatmul::Cublas),
];

impl GpuMatmul {
    /// The value of [`GPU_MATMUL_ENV`] that selects this.
    pub fn name(self) -> &'static str {
        choice_name(&GPU_MATMUL_NAMES, self)
    }
}

/// The value of [`GPU_MATMUL_ENV`], or an error naming the variable and the known values.
pub fn gpu_matmul() -> Result<GpuMatmul, String> {
    env_choice(GPU_MATMUL_ENV, &GPU_MATMUL_NAMES)
}

/// `a @ b` (batch dims broadcast, as burn's matmul), by the routine `kernel` names on burn-cuda
/// and by burn's matmul everywhere else.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, kernel: GpuMatmul) -> Tensor<B, D> {
    matmul_scaled(a, b, None, kernel)
}

/// `(a * alpha) @ b` ([`matmul`] without `alpha`): with `kernel` `Cublas` on burn-cuda the
/// scale is cuBLAS's own (no pass over `a`); otherwise, and where cuBLAS does not run, `a` is
/// scaled first.
fn matmul_scaled<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, alpha: Option<f64>, kernel: GpuMatmul) -> Tensor<B, D> {
    #[cfg(feature = "cuda")]
    let (a, b) = match kernel {
        GpuMatmul::Cublas => match crate::backend::cuda_cublas_matmul(a, b, alpha.unwrap_or(1.0) as f32) {
            Ok(y) => return y,
            Err(inputs) => inputs,
        },
        _ => (a, b),
    };
    let a = match alpha {
        Some(alpha) => a.mul_scalar(alpha),
        None => a,
    };
    // cubek's routines (`cuda_matmul` hands `Cublas` straight back: burn's matmul).
    #[cfg(feature = "cuda")]
    if kernel != GpuMatmul::Auto {
        return match crate::backend::cuda_matmul(a, b, kernel) {
            Ok(y) => y,
            Err((a, b)) => a.matmul(b),
        };
    }
    let _ = kernel;
    a.matmul(b)
}

/// The name of `t` among an [`env_choice`] switch's `choices`.
fn choice_name<T: PartialEq>(choices: &[(&'static str, T)], t: T) -> &'static str {
    choices.iter().find(|(_, c)| *c == t).map_or("?", |(n, _)| n)
}

/// A switch read from the environment: unset or empty gives `T`'s default, a listed name its
/// value, anything else a one-line error listing the names (the default's marked).
fn env_choice<T: Copy + Default + PartialEq>(var: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let v = std::env::var(var).unwrap_or_default();
    if v.is_empty() {
        return Ok(T::default());
    }
    if let Some((_, t)) = choices.iter().find(|(name, _)| *name == v) {
        return Ok(*t);
    }
    let names: Vec<String> = choices.iter().map(|(n, t)| if *t == T::default() { format!("`{n}` (the default)") } else { format!("`{n}`") }).collect();
    let (last, rest) = names.split_last().expect("at least one choice");
    Err(format!("{var}={v:?}: expected {} or {last}", rest.join(", ")))
}

/// Environment switch for the unmasked attention of GPU (cubecl) backends: `blocked` (default:
/// [`blocked_attention`], from matmuls) or `flash` (cubek's tensor-core flash-attention
/// routine, `BlackboxAccelerated`, called without a causal mask; head dims padded to a multiple
/// of 16; on CUDA backends without fusion, else blocked). Read once per model part by the
/// `Loader`, like [`GPU_CONV_ENV`].
pub const GPU_ATTENTION_ENV: &str = "DDREP_GPU_ATTENTION";

/// The GPU routines of [`multi_head_attention`]: the attention itself and the blocked path's
/// matmuls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttentionKernels {
    pub attention: GpuAttention,
    pub matmul: GpuMatmul,
}

/// How GPU backends run unmasked attention; see [`GPU_ATTENTION_ENV`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuAttention {
    #[default]
    Blocked,
    Flash,
}

/// The value of [`GPU_ATTENTION_ENV`], or an error naming the variable for anything but
/// `blocked`, `flash` or unset.
pub fn gpu_attention() -> Result<GpuAttention, String> {
    env_choice(GPU_ATTENTION_ENV, &GPU_ATTENTION_NAMES)
}

/// The names of [`GpuAttention`]'s values, as [`GPU_ATTENTION_ENV`] takes them.
const GPU_ATTENTION_NAMES: [(&str, GpuAttention); 2] = [("blocked", GpuAttention::Blocked), ("flash", GpuAttention::Flash)];

/// Environment switch for the norms, attention softmax, GEGLU and the adds (channels-last
/// tensors; a bias with a residual) of the SD1.5 models on burn-cuda: `ddrep` (default: ddrep's own kernels, `crate::gpu_kernels`, one
/// or two launches each) or `burn` (burn's element-wise ops and reductions, ~15 launches a group norm: the
/// path every other backend takes). Read once per process where it is used; an unknown value
/// is an error when the CLI starts and from `Loader::finish`, like [`GPU_CONV_ENV`].
pub const GPU_OPS_ENV: &str = "DDREP_GPU_OPS";

/// Who runs the norms, softmax, GEGLU and channels-last adds on GPU backends; see
/// [`GPU_OPS_ENV`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuOps {
    #[default]
    Ddrep,
    Burn,
}

/// The value of [`GPU_OPS_ENV`], or an error naming the variable for anything but `ddrep`,
/// `burn` or unset.
pub fn gpu_ops() -> Result<GpuOps, String> {
    env_choice(GPU_OPS_ENV, &GPU_OPS_NAMES)
}

/// The names of [`GpuOps`]'s values, as [`GPU_OPS_ENV`] takes them.
const GPU_OPS_NAMES: [(&str, GpuOps); 2] = [("ddrep", GpuOps::Ddrep), ("burn", GpuOps::Burn)];

/// The GPU kernel switches as this process reads them (defaults included), `VAR=value` each,
/// for reports such as `ddrep bench unet`'s; an unknown value shows as `?` (loading a model
/// refuses it).
pub fn gpu_switches() -> String {
    let conv = gpu_conv().map_or("?", GpuConv::name);
    let matmul = gpu_matmul().map_or("?", GpuMatmul::name);
    let attention = gpu_attention().map_or("?", |a| choice_name(&GPU_ATTENTION_NAMES, a));
    let ops = gpu_ops().map_or("?", |o| choice_name(&GPU_OPS_NAMES, o));
    format!("{GPU_CONV_ENV}={conv} {GPU_MATMUL_ENV}={matmul} {GPU_ATTENTION_ENV}={attention} {GPU_OPS_ENV}={ops}")
}

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
        let w = ld.tensor(&format!("{prefix}.weight"), [out, inp, k, k]);
        let b = ld.tensor(&format!("{prefix}.bias"), [out]);
        let kernel = ld.gpu_conv();
        // cubek's implicit-GEMM kernels and the cuBLAS convs read weights channels-last and
        // copy any other layout at every call; on burn-cuda the weight is stored that way
        // once, here.
        #[cfg(feature = "cuda")]
        let w = if (kernel.is_implicit_gemm() || kernel == GpuConv::Cublas) && k > 1 { crate::backend::channels_last(w) } else { w };
        Self {
            p: Params::new(w, Some(b), ld.device()),
            dims: [out, inp, k],
            stride,
            padding,
            // burn-ndarray's direct conv is 2-4x slower than its gemm at SD's low-resolution,
            // high-channel levels (1280 ch at 8x8 to 32x32), so it takes im2col up to
            // GEMM_MAX_PIXELS; other backends keep their kernels unless DDREP_GPU_CONV=im2col
            // (read by the Loader, which reports an unknown value).
            gemm_max_pixels: if B::name(ld.device()).contains("ndarray") {
                GEMM_MAX_PIXELS
            } else if kernel == GpuConv::Im2col {
                usize::MAX
            } else {
                0
            },
            kernel,
        }
    }

    /// A 1x1 convolution of an image `[n, c, h, w]`, returned as a sequence `[n, h*w, out]`.
    pub fn forward_to_seq(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [n, c, h, w] = x.dims();
        let o = self.dims[0];
        assert_eq!(self.dims[2], 1, "forward_to_seq is for 1x1 convolutions");
        match &self.p {
            Params::Host { w: wt, b } => {
                let device = x.device();
                let y = cpu_kernels::pointwise_to_seq(
                    &cpu_kernels::to_vec(x),
                    n,
                    c,
                    h * w,
                    wt,
                    o,
                    b.as_deref().expect("conv bias"),
                );
                tensor_from_vec(y, [n, h * w, o], &device)
            }
            // Channels-last first: free for the NHWC memory of burn-cuda's implicit-GEMM conv
            // outputs (a reshape of their NCHW view would copy them).
            Params::Backend { .. } => self.forward(x).permute([0, 2, 3, 1]).reshape([n, h * w, o]),
        }
    }

    /// A 1x1 convolution of a sequence `[n, h*w, c]`, returned as an image `[n, out, h, w]`.
    pub fn forward_from_seq(&self, s: Tensor<B, 3>, hw: [usize; 2]) -> Tensor<B, 4> {
        let [n, l, c] = s.dims();
        let o = self.dims[0];
        assert_eq!(self.dims[2], 1, "forward_from_seq is for 1x1 convolutions");
        match &self.p {
            Params::Host { w: wt, b } => {
                let device = s.device();
                let y = cpu_kernels::seq_to_pointwise(
                    &cpu_kernels::to_vec(s),
                    n,
                    l,
                    c,
                    wt,
                    o,
                    b.as_deref().expect("conv bias"),
                );
                tensor_from_vec(y, [n, o, hw[0], hw[1]], &device)
            }
            // A view, no copy: the sequence's memory is channels-last, which burn-cuda's
            // implicit-GEMM conv reads as it is.
            Params::Backend { .. } => self.forward(s.reshape([n, hw[0], hw[1], c]).permute([0, 3, 1, 2])),
        }
    }

    /// The bias of a conv on backend tensors, taken out for the caller to add in a pass it has
    /// anyway (the resnets' time embedding and residual, the transformers' residual): on the
    /// cuBLAS convs the bias is a pass of its own. `None` on the CPU kernels, which keep it.
    pub fn take_bias(&mut self) -> Option<Tensor<B, 1>> {
        self.p.take_backend_bias()
    }

    /// A "same" convolution: odd kernel `k`, stride 1, padding `k / 2`.
    pub fn same(ld: &mut Loader<B>, prefix: &str, inp: usize, out: usize, k: usize) -> Self {
        Self::load(ld, prefix, inp, out, k, 1, k / 2)
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let (w, b) = match &self.p {
            // Without a bias once `take_bias` has taken it.
            Params::Backend { w, b } => (w, b.as_ref()),
            Params::Host { w, b } => {
                let [n, c, h, wd] = x.dims();
                let [o, _, k] = self.dims;
                let s = cpu_kernels::ConvShape {
                    n,
                    c,
                    h,
                    w: wd,
                    o,
                    k,
                    stride: self.stride,
                    padding: self.padding,
                };
                let (oh, ow) = s.out_hw();
                let device = x.device();
                let y = cpu_kernels::conv2d(
                    &cpu_kernels::to_vec(x),
                    s,
                    w,
                    b.as_deref().expect("conv bias"),
                );
                return tensor_from_vec(y, [n, o, oh, ow], &device);
            }
        };
        let [n, c, h, wd] = x.dims();
        let [o, _, k] = self.dims;
        if self.gemm_max_pixels > 0
            && self.stride == 1
            && 2 * self.padding + 1 == k
            && (k == 1 || h * wd <= self.gemm_max_pixels)
        {
            // im2col: the k*k shifted copies of the padded input, ordered (c, ky, kx) like
            // the weight's flattening, then one matmul.
            let cols = if k == 1 {
                x.reshape([n, c, h * wd])
            } else {
                let p = self.padding;
                let xp = x.pad((p, p, p, p), 0.0);
                let mut shifted = Vec::with_capacity(k * k);
                for ky in 0..k {
                    for kx in 0..k {
                        shifted.push(
                            xp.clone()
                                .slice([0..n, 0..c, ky..ky + h, kx..kx + wd])
                                .reshape([n, c, 1, h * wd]),
                        );
                    }
                }
                Tensor::cat(shifted, 2).reshape([n, c * k * k, h * wd])
            };
            let y = w.clone().reshape([1, o, c * k * k]).matmul(cols);
            let y = match b {
                Some(b) => y + b.clone().reshape([1, o, 1]),
                None => y,
            };
            return y.reshape([n, o, h, wd]);
        }
        let opts = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        // cuBLAS, and where it does not run, the default implicit-GEMM kernel.
        #[cfg(feature = "cuda")]
        let (x, kernel) = if self.kernel == GpuConv::Cublas {
            match crate::backend::cuda_cublas_conv2d(x, w, b, self.stride, self.padding) {
                Ok(y) => return y,
                Err(x) => (x, GpuConv::ImplicitGemm),
            }
        } else {
            (x, self.kernel)
        };
        #[cfg(feature = "cuda")]
        let x = if kernel.is_implicit_gemm() {
            match crate::backend::cuda_conv2d_implicit_gemm(x, w, b, opts.clone(), kernel) {
                Ok(y) => return y,
                Err(x) => x,
            }
        } else {
            x
        };
        conv2d(x, w.clone(), b.cloned(), opts)
    }
}

pub struct GroupNorm<B: Backend> {
    groups: usize,
    eps: f64,
    p: Params<B, 1>,
}

impl<B: Backend> GroupNorm<B> {
    pub fn load(
        ld: &mut Loader<B>,
        prefix: &str,
        groups: usize,
        channels: usize,
        eps: f64,
    ) -> Self {
        let w = ld.tensor(&format!("{prefix}.weight"), [channels]);
        let b = ld.tensor(&format!("{prefix}.bias"), [channels]);
        Self {
            groups,
            eps,
            p: Params::new(w, Some(b), ld.device()),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_act(x, false)
    }

    /// `silu(norm(x))`, fused on the CPU.
    pub fn forward_silu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_act(x, true)
    }

    fn forward_act(&self, x: Tensor<B, 4>, act: bool) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let (gamma, beta) = match &self.p {
            Params::Backend { w, b } => (w, b.as_ref().expect("norm bias")),
            Params::Host { w: gamma, b } => {
                let device = x.device();
                let mut v = cpu_kernels::to_vec(x);
                cpu_kernels::group_norm(
                    &mut v,
                    n,
                    c,
                    h * w,
                    self.groups,
                    gamma,
                    b.as_deref().expect("norm bias"),
                    self.eps,
                    act,
                );
                return tensor_from_vec(v, [n, c, h, w], &device);
            }
        };
        #[cfg(feature = "cuda")]
        let x = match crate::backend::cuda_group_norm(x, gamma, beta, self.groups, self.eps, act) {
            Ok(y) => return y,
            Err(x) => x,
        };
        let g = self.groups;
        let y = normalise_last(x.reshape([n, g, (c / g) * h * w]), self.eps).reshape([n, c, h, w]);
        let y = y * gamma.clone().reshape([1, c, 1, 1]) + beta.clone().reshape([1, c, 1, 1]);
        if act {
            silu(y)
        } else {
            y
        }
    }
}

pub struct LayerNorm<B: Backend> {
    eps: f64,
    p: Params<B, 1>,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(ld: &mut Loader<B>, prefix: &str, dim: usize, eps: f64) -> Self {
        let w = ld.tensor(&format!("{prefix}.weight"), [dim]);
        let b = ld.tensor(&format!("{prefix}.bias"), [dim]);
        Self {
            eps,
            p: Params::new(w, Some(b), ld.device()),
        }
    }

    /// Normalises over the last axis of `[n, L, C]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (w, b) = match &self.p {
            Params::Backend { w, b } => (w, b.as_ref().expect("norm bias")),
            Params::Host { w, b } => {
                let (dims, device) = (x.dims(), x.device());
                let mut v = cpu_kernels::to_vec(x);
                cpu_kernels::layer_norm(
                    &mut v,
                    dims[2],
                    w,
                    b.as_deref().expect("norm bias"),
                    self.eps,
                );
                return tensor_from_vec(v, dims, &device);
            }
        };
        #[cfg(feature = "cuda")]
        let x = match crate::backend::cuda_layer_norm(x, w, b, self.eps) {
            Ok(y) => return y,
            Err(x) => x,
        };
        normalise_last(x, self.eps) * w.clone().unsqueeze::<3>() + b.clone().unsqueeze::<3>()
    }
}

/// `(x - mean) / sqrt(var + eps)` over the last axis, two-pass (biased) variance like
/// PyTorch's norms. In half precision the statistics are computed in f32, as PyTorch's
/// kernels accumulate: in f16 the squares of deviations above 256 overflow, and sums over
/// a group's thousands of elements lose the mean's low bits.
fn normalise_last<B: Backend>(x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    match half_dtype::<B>() {
        Some(half) => normalise_f(x.cast(FloatDType::F32), eps).cast(half),
        None => normalise_f(x, eps),
    }
}

/// The half-precision float type of `B`, if its floats are f16 or bf16.
fn half_dtype<B: Backend>() -> Option<FloatDType> {
    match <B::FloatElem as Element>::dtype() {
        DType::F16 => Some(FloatDType::F16),
        DType::BF16 => Some(FloatDType::BF16),
        _ => None,
    }
}

fn normalise_f<B: Backend>(x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let xc = x.clone() - reduce_last(x, RowReduce::Mean);
    let var = reduce_last(xc.clone().powi_scalar(2), RowReduce::Mean);
    xc / var.add_scalar(eps).sqrt()
}

/// Rows at least this many chunks long are reduced in stages by [`reduce_last`].
const SPLIT_MIN_CHUNKS: usize = 8;
/// Each stage's chunk length in [`reduce_last`].
const CHUNK: usize = 256;

/// A reduction over a row, as [`reduce_last`] runs it.
#[derive(Clone, Copy)]
enum RowReduce {
    Mean,
    Sum,
    Max,
}

impl RowReduce {
    /// `t` reduced along `dim` (kept, length 1).
    fn along<B: Backend, const D: usize>(self, t: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
        match self {
            RowReduce::Mean => t.mean_dim(dim),
            RowReduce::Sum => t.sum_dim(dim),
            RowReduce::Max => t.max_dim(dim),
        }
    }
}

/// Reduces the last axis of `x` to length 1 (`mean_dim`, `sum_dim` or `max_dim`). A long row
/// is reduced in stages: while its length is a multiple of [`CHUNK`] and at least
/// [`SPLIT_MIN_CHUNKS`] chunks, each chunk is reduced to one value (equal chunks, so means of
/// means are the mean), then the rest at once. Why: burn-cubecl without autotune reduces every
/// output row in one GPU thread (cubek-reduce's `Unit` routine), so a group norm's statistics,
/// 2 x 32 rows of up to 30 x 4096 elements in SD1.5's UNet (and 32 rows of 4 x 512 x 512 in
/// its VAE decoder), would run on 64 threads walking each row alone; in chunks they run on
/// thousands. (From the kernels' source; not yet timed on a GPU.)
fn reduce_last<B: Backend, const D: usize>(x: Tensor<B, D>, op: RowReduce) -> Tensor<B, D> {
    let splits = |len: usize| len.is_multiple_of(CHUNK) && len / CHUNK >= SPLIT_MIN_CHUNKS;
    let dims = x.dims();
    let (rows, mut len) = (dims[..D - 1].iter().product::<usize>(), dims[D - 1]);
    if !splits(len) {
        return op.along(x, D - 1);
    }
    let mut t = x.reshape([rows, 1, len]);
    while splits(len) {
        len /= CHUNK;
        t = op.along(t.reshape([rows, len, CHUNK]), 2).reshape([rows, 1, len]);
    }
    let mut out = dims;
    out[D - 1] = 1;
    op.along(t, 2).reshape(out)
}

/// Multi-head scaled dot-product attention on `[n, L, C]` projections, scale `head_dim^-0.5`.
/// Heads are split as `view(n, L, heads, hd).transpose(1, 2)`, as diffusers and transformers do.
/// `kernels` picks the GPU routines ([`GPU_ATTENTION_ENV`], [`GPU_MATMUL_ENV`]).
pub fn multi_head_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    mask: Option<Tensor<B, 4, Bool>>,
    kernels: AttentionKernels,
) -> Tensor<B, 3> {
    let [n, lq, c] = q.dims();
    let lk = k.dims()[1];
    let hd = c / heads;
    let split = |t: Tensor<B, 3>, l: usize| t.reshape([n, l, heads, hd]).swap_dims(1, 2);
    let out = match mask {
        None if cpu_kernels::host_backend::<B>(&q.device()) => {
            let device = q.device();
            let (q, k, v) = (
                cpu_kernels::to_vec(q),
                cpu_kernels::to_vec(k),
                cpu_kernels::to_vec(v),
            );
            let out = cpu_kernels::attention(&q, &k, &v, n, lq, lk, c, heads);
            return tensor_from_vec(out, [n, lq, c], &device);
        }
        #[cfg(feature = "cuda")]
        None if kernels.attention == GpuAttention::Flash => {
            match crate::backend::cuda_flash_attention(split(q, lq), split(k, lk), split(v, lk)) {
                Ok(out) => out,
                Err((q, k, v)) => blocked_attention(q, k, v, None, kernels.matmul),
            }
        }
        mask => blocked_attention(split(q, lq), split(k, lk), split(v, lk), mask, kernels.matmul),
    };
    out.swap_dims(1, 2).reshape([n, lq, c])
}

/// Runs `routine`, an unmasked attention that scales by `1 / sqrt` of the head dim it is
/// given, on `[n, heads, L, d]` inputs whose head dim is zero-padded to a multiple of
/// `multiple` (a tensor-core routine's tile). Zero columns leave `q k^T` as it is and add zero
/// output columns, which are cut off again; `q` is scaled by `sqrt(padded / d)` against the
/// routine's `1 / sqrt(padded)`. An `Err` from the routine is passed through.
#[cfg(any(test, feature = "cuda"))]
pub(crate) fn attention_with_padded_head_dim<B: Backend, E>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    multiple: usize,
    routine: impl FnOnce(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) -> Result<Tensor<B, 4>, E>,
) -> Result<Tensor<B, 4>, E> {
    let d = q.dims()[3];
    let padded = d.div_ceil(multiple) * multiple;
    if padded == d {
        return routine(q, k, v);
    }
    let pad = |t: Tensor<B, 4>| t.pad((0, padded - d, 0, 0), 0.0);
    let out = routine(pad(q.mul_scalar((padded as f64 / d as f64).sqrt())), pad(k), pad(v))?;
    Ok(out.narrow(3, 0, d))
}

/// Scores in one block stay below this many elements (512 MB in f32).
const ATTENTION_BLOCK_ELEMS: usize = 1 << 27;

/// `softmax(q k^T / sqrt(d) [masked]) v` on `[n, heads, L, d]` from matmuls, in blocks of
/// queries so that a 64x64 latent's 4096 x 4096 scores per head are never one tensor. Not
/// burn's fused `attention`: in burn 0.20.1 its CUDA kernel (cubek flash attention) always
/// applies a causal mask (`causal: true` in burn-cubecl's `flash_attention`), wrong for every
/// attention in SD1.5.
fn blocked_attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: Option<Tensor<B, 4, Bool>>, kernel: GpuMatmul) -> Tensor<B, 4> {
    blocked_attention_within(q, k, v, mask, ATTENTION_BLOCK_ELEMS, kernel)
}

fn blocked_attention_within<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    max_elems: usize,
    kernel: GpuMatmul,
) -> Tensor<B, 4> {
    let [n, heads, lq, hd] = q.dims();
    let lk = k.dims()[2];
    let kt = k.swap_dims(2, 3);
    // The scale goes on the queries ([L, d]) rather than on the scores ([L, L]), and the
    // softmax's division on the output ([L, d]) rather than on the probabilities, as flash
    // attention does: two fewer passes over the scores, which dominate the memory traffic of
    // a 64x64 latent's self-attention on a GPU.
    let scale = (hd as f64).sqrt().recip();
    // cuBLAS takes the scale as its GEMM's alpha; the others scale the queries once.
    let (q, alpha) = if kernel == GpuMatmul::Cublas { (q, Some(scale)) } else { (q.mul_scalar(scale), None) };
    let block = (max_elems / (n * heads * lk).max(1)).clamp(1, lq.max(1));
    let half = half_dtype::<B>();
    // Under cuBLAS the blocks of `P V` are written into one `[n, L, heads, d]` memory viewed
    // `[n, heads, L, d]`: no concatenation of blocks, and the caller's merge of the heads
    // (`swap_dims(1, 2)`) finds it contiguous, so neither copy runs.
    #[cfg(feature = "cuda")]
    let mut merged = if kernel == GpuMatmul::Cublas { crate::backend::heads_merged_output::<B>([n, heads, lq, hd], &q.device()) } else { None };
    #[cfg(not(feature = "cuda"))]
    let mut merged: Option<Tensor<B, 4>> = None;
    let mut outs = Vec::with_capacity(lq.div_ceil(block));
    let mut start = 0;
    while start < lq {
        let len = block.min(lq - start);
        let mut scores = matmul_scaled(q.clone().narrow(2, start, len), kt.clone(), alpha, kernel);
        if let Some(m) = &mask {
            // A mask of one query row broadcasts; a full mask is cut like the queries.
            let m = if m.dims()[2] == lq && lq > 1 { m.clone().narrow(2, start, len) } else { m.clone() };
            scores = scores.mask_fill(m, f32::NEG_INFINITY);
        }
        // On burn-cuda, one softmax kernel (f32 inside, probabilities rounded once) instead of
        // the seven launches below.
        #[cfg(feature = "cuda")]
        let softmax = crate::backend::cuda_softmax(scores);
        #[cfg(not(feature = "cuda"))]
        let softmax: Result<Tensor<B, 4>, Tensor<B, 4>> = Err(scores);
        let out = match softmax {
            Ok(p) => {
                #[cfg(feature = "cuda")]
                let p = match &merged {
                    Some(m) => match crate::backend::cuda_cublas_matmul_into(p, v.clone(), m, start, 1.0) {
                        Ok(()) => {
                            start += len;
                            continue;
                        }
                        Err((p, _)) => p,
                    },
                    None => p,
                };
                matmul(p, v.clone(), kernel)
            }
            Err(scores) => {
                // exp(s - max) in (0, 1] stays in the working precision. In half precision its
                // row sums (up to L = 4096 terms, which an f16 accumulator would stall on) and
                // the division run in f32, as PyTorch's attention accumulates.
                let exps = (scores.clone() - reduce_last(scores, RowReduce::Max)).exp();
                let to_f32 = |t: Tensor<B, 4>| if half.is_some() { t.cast(FloatDType::F32) } else { t };
                let out = to_f32(matmul(exps.clone(), v.clone(), kernel)) / reduce_last(to_f32(exps), RowReduce::Sum);
                match half {
                    Some(h) => out.cast(h),
                    None => out,
                }
            }
        };
        match merged.take() {
            Some(m) => merged = Some(m.slice_assign([0..n, 0..heads, start..start + len, 0..hd], out)),
            None => outs.push(out),
        }
        start += len;
    }
    if let Some(m) = merged {
        return m;
    }
    if outs.len() == 1 {
        outs.pop().unwrap()
    } else {
        Tensor::cat(outs, 2)
    }
}

/// GEGLU on `[n, L, 2 * inner]`: the first half is the value, the second the gate (exact erf
/// GELU).
pub fn geglu<B: Backend>(h: Tensor<B, 3>) -> Tensor<B, 3> {
    let [n, l, two_inner] = h.dims();
    let inner = two_inner / 2;
    if cpu_kernels::host_backend::<B>(&h.device()) {
        let device = h.device();
        let y = cpu_kernels::geglu(&cpu_kernels::to_vec(h), n * l, inner);
        return tensor_from_vec(y, [n, l, inner], &device);
    }
    #[cfg(feature = "cuda")]
    let h = match crate::backend::cuda_geglu(h, None) {
        Ok(y) => return y,
        Err(h) => h,
    };
    h.clone().narrow(2, 0, inner) * gelu(h.narrow(2, inner, inner))
}

/// [`geglu`] of `h + bias` (`bias` `[2 * inner]`), the bias added inside the GEGLU kernel on
/// burn-cuda; elsewhere, and where that kernel does not run, the add and then [`geglu`].
#[cfg(feature = "cuda")]
fn geglu_with_bias<B: Backend>(h: Tensor<B, 3>, bias: &Tensor<B, 1>) -> Tensor<B, 3> {
    match crate::backend::cuda_geglu(h, Some(bias)) {
        Ok(y) => y,
        Err(h) => geglu(h + bias.clone().unsqueeze()),
    }
}

/// `x * sigmoid(1.702 x)`: CLIP's activation.
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * sigmoid(x.mul_scalar(1.702))
}

/// Nearest-neighbour upsampling to `size`; exact 2x is done by repetition (no index maths).
pub fn upsample_nearest<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    if size == [2 * h, 2 * w] {
        x.reshape([n, c, h, 1, w, 1])
            .expand([n, c, h, 2, w, 2])
            .reshape([n, c, 2 * h, 2 * w])
    } else {
        interpolate(x, size, InterpolateOptions::new(InterpolateMode::Nearest))
    }
}

/// `a + b`. On burn-cuda two tensors laid out alike off the contiguous layout (channels-last
/// residuals) are added in one lined pass (`crate::backend::add`).
pub fn add<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cuda")]
    return crate::backend::add(a, b);
    #[cfg(not(feature = "cuda"))]
    return a + b;
}

/// `x + v` per channel: `x` `[N, C, H, W]`, `v` `[N, C]` or `[1, C]`. On burn-cuda a
/// channels-last `x` takes one lined pass (`crate::backend::add_channels`).
pub fn add_per_channel<B: Backend>(x: Tensor<B, 4>, v: Tensor<B, 2>) -> Tensor<B, 4> {
    #[cfg(feature = "cuda")]
    return crate::backend::add_channels(x, v);
    #[cfg(not(feature = "cuda"))]
    {
        let [n, c] = v.dims();
        x + v.reshape([n, c, 1, 1])
    }
}

/// `r + (x + v)` per channel: `x` and `r` `[N, C, H, W]`, `v` `[C]` (a conv's bias taken out of
/// the conv, [`Conv2d::take_bias`]). On burn-cuda a channels-last `x` with `r` laid out alike
/// takes one pass (`crate::backend::add_channels_residual`).
pub fn add_bias_residual_per_channel<B: Backend>(x: Tensor<B, 4>, v: &Tensor<B, 1>, r: Tensor<B, 4>) -> Tensor<B, 4> {
    let c = v.dims()[0];
    #[cfg(feature = "cuda")]
    return crate::backend::add_channels_residual(x, v.clone().reshape([1, c]), r);
    #[cfg(not(feature = "cuda"))]
    return r + (x + v.clone().reshape([1, c, 1, 1]));
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
    /// On backend tensors: `conv2`'s bias plus `conv_shortcut`'s, taken out of the convs and
    /// added with the residual in one pass ([`add_bias_residual_per_channel`]); `conv1`'s goes
    /// into `time_emb_proj`'s bias where there is one. `None` on the CPU kernels.
    residual_bias: Option<Tensor<B, 1>>,
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
        let norm1 = GroupNorm::load(ld, &format!("{p}.norm1"), cfg.groups, inp, cfg.eps);
        let mut conv1 = Conv2d::same(ld, &format!("{p}.conv1"), inp, out, 3);
        let mut time_emb_proj = cfg.temb.map(|t| Linear::load(ld, &format!("{p}.time_emb_proj"), t, out, true));
        let norm2 = GroupNorm::load(ld, &format!("{p}.norm2"), cfg.groups, out, cfg.eps);
        let mut conv2 = Conv2d::same(ld, &format!("{p}.conv2"), out, out, 3);
        let mut conv_shortcut = (inp != out).then(|| Conv2d::load(ld, &format!("{p}.conv_shortcut"), inp, out, 1, 1, 0));
        // The convs' biases join adds that run anyway: conv1's the time embedding (a [n, C]
        // vector, so its bias is folded into the projection's once, here), conv2's and the
        // shortcut's the residual. Backend tensors only (see `Conv2d::take_bias`).
        if let Some(proj) = time_emb_proj.as_mut() {
            if let Some(b) = conv1.take_bias() {
                proj.fold_bias(b);
            }
        }
        let residual_bias = conv2.take_bias().map(|b| match conv_shortcut.as_mut().and_then(Conv2d::take_bias) {
            Some(shortcut) => b + shortcut,
            None => b,
        });
        Self { norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut, residual_bias, out_scale: cfg.out_scale }
    }

    /// `temb` is the already SiLU-activated time embedding `[n, T]` (UNet only).
    pub fn forward(&self, x: Tensor<B, 4>, temb_act: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        let mut h = self.conv1.forward(self.norm1.forward_silu(x.clone()));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_act) {
            h = add_per_channel(h, proj.forward(t.clone()));
        }
        let h = self.conv2.forward(self.norm2.forward_silu(h));
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        let y = match &self.residual_bias {
            Some(b) => add_bias_residual_per_channel(h, b, skip),
            None => add(skip, h),
        };
        if self.out_scale == 1.0 {
            y
        } else {
            y.div_scalar(self.out_scale)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    /// `softmax(q k^T / sqrt(d)) v` in f64 for one head (`q` is `[lq, d]`, `k` and `v` are
    /// `[lk, d]`, row-major), query `i` seeing the keys `j` with `visible(i, j)`.
    fn attention_f64(q: &[f64], k: &[f64], v: &[f64], d: usize, visible: impl Fn(usize, usize) -> bool) -> Vec<f64> {
        let (lq, lk) = (q.len() / d, k.len() / d);
        let mut out = vec![0.0; lq * d];
        for i in 0..lq {
            let keys: Vec<usize> = (0..lk).filter(|&j| visible(i, j)).collect();
            let s: Vec<f64> = keys.iter().map(|&j| (0..d).map(|c| q[i * d + c] * k[j * d + c]).sum::<f64>() / (d as f64).sqrt()).collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for c in 0..d {
                out[i * d + c] = keys.iter().zip(&s).map(|(&j, x)| (x - m).exp() / z * v[j * d + c]).sum();
            }
        }
        out
    }

    /// A 64x64 latent's self-attention row has 4096 keys: with nearly flat scores the
    /// softmax's row sum reaches ~4096, where f16's spacing is 4 and an f16 accumulator stalls
    /// (adding 1 to 2048 gives 2048). Sums and division must run in f32 there.
    #[test]
    fn blocked_attention_long_rows_in_f16() {
        type H = burn_candle::Candle<half::f16>;
        let (lq, lk, d) = (3, 4096, 4);
        let dev = Default::default();
        let q: Vec<f32> = (0..lq * d).map(|i| ((i % 5) as f32 - 2.0) * 0.05).collect();
        let k: Vec<f32> = (0..lk * d).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.05).collect();
        let v: Vec<f32> = (0..lk * d).map(|i| ((i * 5 % 11) as f32) / 10.0).collect();
        let t = |x: &Vec<f32>, l: usize| Tensor::<H, 4>::from_data(TensorData::new(x.clone(), [1, 1, l, d]), &dev);
        let got: Vec<f32> = blocked_attention_within(t(&q, lq), t(&k, lk), t(&v, lk), None, usize::MAX, GpuMatmul::Auto).into_data().convert::<f32>().into_vec().unwrap();
        // Reference in f64 from the f16-rounded inputs.
        let r = |x: &Vec<f32>| x.iter().map(|&x| half::f16::from_f32(x).to_f64()).collect::<Vec<f64>>();
        let want = attention_f64(&r(&q), &r(&k), &r(&v), d, |_, _| true);
        for (idx, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let (i, c) = (idx / d, idx % d);
            assert!((g as f64 - w).abs() <= 5e-3 * w.abs().max(1.0), "[{i},{c}] {g} vs {w}");
        }
    }

    /// Attention in blocks of queries equals its f64 definition, unmasked (non-causal: every
    /// query sees every key) and with a causal mask cut per block, in f32 and in f16; also
    /// with `DDREP_GPU_MATMUL=cublas`'s path, which scales the queries per block off the GPU.
    #[test]
    fn blocked_attention_matches_its_definition() {
        fn run<B: Backend>(max_elems: usize, causal: bool, tol: f64, kernel: GpuMatmul) {
            let (n, h, l, d) = (2, 2, 7, 4);
            let val = |i: usize, s: usize| (((i * s + 3) % 17) as f32 - 8.0) / 8.0;
            let mk = |s: usize| (0..n * h * l * d).map(|i| val(i, s)).collect::<Vec<f32>>();
            let (qv, kv, vv) = (mk(5), mk(7), mk(11));
            let dev = Default::default();
            let t = |v: &Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v.clone(), [n, h, l, d]), &dev);
            let mask = causal.then(|| Tensor::<B, 4, Bool>::from_data(TensorData::new((0..l * l).map(|k| k % l > k / l).collect::<Vec<bool>>(), [1, 1, l, l]), &dev));
            let got: Vec<f32> = blocked_attention_within(t(&qv), t(&kv), t(&vv), mask, max_elems, kernel).into_data().convert::<f32>().into_vec().unwrap();
            for b in 0..n * h {
                let head = |v: &Vec<f32>| v[b * l * d..(b + 1) * l * d].iter().map(|&x| x as f64).collect::<Vec<f64>>();
                let want = attention_f64(&head(&qv), &head(&kv), &head(&vv), d, |i, j| !causal || j <= i);
                for i in 0..l {
                    for c in 0..d {
                        let (g, w) = (got[(b * l + i) * d + c] as f64, want[i * d + c]);
                        assert!((g - w).abs() <= tol, "{} block elems {max_elems} causal {causal}: [{b},{i},{c}] {g} vs {w}", std::any::type_name::<B>());
                    }
                }
            }
        }
        for causal in [false, true] {
            // 3 queries a block (2 * 2 * 7 * 3 elements), and all in one block.
            for kernel in [GpuMatmul::Auto, GpuMatmul::Cublas] {
                run::<Cpu>(2 * 2 * 7 * 3, causal, 1e-5, kernel);
                run::<Cpu>(usize::MAX, causal, 1e-5, kernel);
                run::<burn_candle::Candle<half::f16>>(2 * 2 * 7 * 3, causal, 5e-3, kernel);
            }
        }
    }

    /// Padding the head dim for a tile-sized routine (here the blocked path, which scales by
    /// its input's head dim) gives the attention of the unpadded inputs: d = 5 and 40 padded
    /// to 16 and 48, d = 16 passed through; the routine sees only multiples of 16.
    #[test]
    fn padded_head_dim_attention_matches_its_definition() {
        for d in [5, 16, 40] {
            let (n, h, lq, lk) = (1, 2, 6, 9);
            let val = |i: usize, s: usize| (((i * s + 3) % 19) as f32 - 9.0) / 9.0;
            let mk = |l: usize, s: usize| (0..n * h * l * d).map(|i| val(i, s)).collect::<Vec<f32>>();
            let (qv, kv, vv) = (mk(lq, 5), mk(lk, 7), mk(lk, 11));
            let dev = Default::default();
            let t = |v: &Vec<f32>, l: usize| Tensor::<Cpu, 4>::from_data(TensorData::new(v.clone(), [n, h, l, d]), &dev);
            let got = attention_with_padded_head_dim(t(&qv, lq), t(&kv, lk), t(&vv, lk), 16, |q, k, v| {
                assert_eq!(q.dims()[3] % 16, 0, "the routine got head dim {}", q.dims()[3]);
                Ok::<_, ()>(blocked_attention(q, k, v, None, GpuMatmul::Auto))
            })
            .unwrap();
            assert_eq!(got.dims(), [n, h, lq, d]);
            let got: Vec<f32> = got.into_data().into_vec().unwrap();
            for b in 0..n * h {
                let head = |v: &Vec<f32>, l: usize| v[b * l * d..(b + 1) * l * d].iter().map(|&x| x as f64).collect::<Vec<f64>>();
                let want = attention_f64(&head(&qv, lq), &head(&kv, lk), &head(&vv, lk), d, |_, _| true);
                for (idx, w) in want.iter().enumerate() {
                    let g = got[b * lq * d + idx] as f64;
                    assert!((g - w).abs() <= 1e-5, "d {d} head {b} [{}, {}]: {g} vs {w}", idx / d, idx % d);
                }
            }
        }
    }

    /// Row reductions in stages give the one-stage answers: rows of 40 (one stage), 2560 (10
    /// chunks, SD1.5's 8x8 group), 4096 x 3 (48 chunks) and 8 x 256 x 256 (three stages),
    /// mean, sum and max against f64, and the norm built on them against its definition, in
    /// f32 through burn's ops.
    #[test]
    fn row_reductions_in_chunks_match_the_definition() {
        for m in [40, 2560, 3 * 4096, 8 * 256 * 256] {
            let rows = 3;
            let v: Vec<f32> = (0..rows * m).map(|i| ((i * 37 % 101) as f32 - 40.0) * 0.25 + (i / m) as f32 * 7.0 + if i % m == 1000 % m { 30.0 } else { 0.0 }).collect();
            let x = Tensor::<Cpu, 3>::from_data(TensorData::new(v.clone(), [1, rows, m]), &Default::default());
            let x4 = x.clone().reshape([1, 1, rows, m]);
            let reduced = |op| -> Vec<f32> { reduce_last(x4.clone(), op).into_data().into_vec().unwrap() };
            let (means, sums, maxes) = (reduced(RowReduce::Mean), reduced(RowReduce::Sum), reduced(RowReduce::Max));
            let got: Vec<f32> = normalise_last(x, 1e-5).into_data().into_vec().unwrap();
            for (r, row) in v.chunks(m).enumerate() {
                let sum = row.iter().map(|&a| a as f64).sum::<f64>();
                let mean = sum / m as f64;
                let max = row.iter().cloned().fold(f32::MIN, f32::max);
                assert!((means[r] as f64 - mean).abs() <= 1e-5 * mean.abs().max(1.0), "m {m} row {r}: mean {} vs {mean}", means[r]);
                assert!((sums[r] as f64 - sum).abs() <= 1e-5 * sum.abs().max(1.0), "m {m} row {r}: sum {} vs {sum}", sums[r]);
                assert_eq!(maxes[r], max, "m {m} row {r}: max");
                let var = row.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / m as f64;
                for (j, &a) in row.iter().enumerate() {
                    let want = (a as f64 - mean) / (var + 1e-5).sqrt();
                    let g = got[r * m + j] as f64;
                    assert!((g - want).abs() <= 1e-4, "m {m} row {r} element {j}: {g} vs {want}");
                }
            }
        }
    }

    /// In f16 the norm's statistics are computed in f32: rows whose squared deviations
    /// overflow f16 (spread 900: squares near 8e5 > 65504) normalise like the f64 definition.
    #[test]
    fn f16_norm_statistics_do_not_overflow() {
        type H = burn_candle::Candle<half::f16>;
        let v: Vec<f32> = (0..3 * 40).map(|i| ((i * 37 % 23) as f32 - 11.0) * if i < 40 { 0.01 } else if i < 80 { 1.0 } else { 900.0 }).collect();
        let x = Tensor::<H, 3>::from_data(TensorData::new(v.clone(), [1, 3, 40]), &Default::default());
        let got: Vec<f32> = normalise_last(x, 1e-5).into_data().convert::<f32>().into_vec().unwrap();
        for (r, row) in v.chunks(40).enumerate() {
            let m = row.iter().map(|&a| a as f64).sum::<f64>() / 40.0;
            let var = row.iter().map(|&a| (a as f64 - m).powi(2)).sum::<f64>() / 40.0;
            for (j, &a) in row.iter().enumerate() {
                let want = (a as f64 - m) / (var + 1e-5).sqrt();
                let g = got[r * 40 + j] as f64;
                assert!((g - want).abs() <= 2e-3 * want.abs().max(1.0), "row {r} element {j}: {g} vs {want}");
            }
        }
    }
}
