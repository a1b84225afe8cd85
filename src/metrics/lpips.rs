//! LPIPS (Zhang et al. 2018), AlexNet variant with the v0.1 linear heads, as lpips 0.1.4
//! `LPIPS(net='alex', version='0.1')` computes it, in burn (generic over the backend).
//!
//! Pipeline (inputs NCHW RGB in [-1, 1], lpips' `normalize=False`):
//! 1. scaling layer `x = (in - shift) / scale`, f32 `shift = [-.030, -.088, -.188]`,
//!    `scale = [.458, .448, .450]`;
//! 2. torchvision AlexNet `features`: conv0 (11x11, stride 4, pad 2) + ReLU → relu1;
//!    maxpool(3, 2), conv3 (5x5, pad 2) + ReLU → relu2; maxpool(3, 2), conv6 (3x3, pad 1) + ReLU →
//!    relu3; conv8 + ReLU → relu4; conv10 + ReLU → relu5;
//! 3. per pixel unit-normalise over channels `n = f / (sqrt(Σ_c f²) + 1e-10)`;
//! 4. `d_k = lin_k((n0 - n1)²)` (1x1 conv, no bias, one output), spatial mean per layer;
//!    `lpips = Σ_k d_k`.
//!
//! Weights (user files, never downloaded):
//! * trunk: torchvision AlexNet tensors `features.{0,3,6,8,10}.{weight,bias}` (or lpips'
//!   `net.slice{1..5}.{idx}.*` names) from a safetensors file. torchvision's
//!   `alexnet-owt-7be5be79.pth` is a zip-format torch file; convert it once with
//!   `python -c "import torch;from safetensors.torch import save_file;save_file({k:v for k,v in torch.load('alexnet-owt-7be5be79.pth').items() if k.startswith('features')},'alexnet.safetensors')"`.
//! * heads: lpips' `weights/v0.1/alex.pth` (`lin{k}.model.1.weight`, `[1,C,1,1]`), read directly
//!   from the legacy torch format by [`super::legacy_pth`], or the same keys in a safetensors file.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use super::images::{same_shape, ImageBatch};
use super::legacy_pth::read_legacy_pth;
use super::weights::TensorStore;
use super::{MetricError, MetricResult};

/// f32 values of lpips' ScalingLayer.
pub const LPIPS_SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
pub const LPIPS_SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// Channels of relu1..relu5.
pub const ALEX_CHANNELS: [usize; 5] = [64, 192, 384, 256, 256];
/// torchvision indices of AlexNet's five convolutions in `features`.
pub const ALEX_CONV_INDEX: [usize; 5] = [0, 3, 6, 8, 10];
/// Smallest H and W the AlexNet trunk accepts (the second 3x3/2 max-pool needs a 3x3 input).
pub const LPIPS_MIN_SIDE: usize = 31;

struct Conv<B: Backend> {
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    stride: usize,
    pad: usize,
}

/// LPIPS with an AlexNet trunk and linear heads, ready to run on backend `B`.
pub struct Lpips<B: Backend> {
    convs: Vec<Conv<B>>,
    heads: Vec<Tensor<B, 4>>,
    shift: Tensor<B, 4>,
    scale: Tensor<B, 4>,
}

/// LPIPS of a batch: `distance[b]` and `per_layer[k][b]` (spatial means of the five heads).
#[derive(Clone, Debug, PartialEq)]
pub struct LpipsValues {
    pub distance: Vec<f32>,
    pub per_layer: [Vec<f32>; 5],
}

/// Debug view of one forward pass: raw trunk outputs of both inputs and the head maps.
pub struct LpipsTrace<B: Backend> {
    pub relu0: Vec<Tensor<B, 4>>,
    pub relu1: Vec<Tensor<B, 4>>,
    pub lin_maps: Vec<Tensor<B, 4>>,
}

fn trunk_name(store: &TensorStore, idx: usize, slice: usize, what: &str) -> String {
    let tv = format!("features.{idx}.{what}");
    if store.contains(&tv) {
        return tv;
    }
    let lp = format!("net.slice{slice}.{idx}.{what}");
    if store.contains(&lp) {
        lp
    } else {
        tv
    }
}

fn head_name(store: &TensorStore, k: usize) -> String {
    let a = format!("lin{k}.model.1.weight");
    if store.contains(&a) {
        return a;
    }
    let b = format!("lins.{k}.model.1.weight");
    if store.contains(&b) {
        b
    } else {
        a
    }
}

/// Reads LPIPS heads from a legacy `.pth` (lpips' `alex.pth`) or a `.safetensors` file.
pub fn load_lpips_heads(path: impl AsRef<Path>) -> MetricResult<TensorStore> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(MetricError::Weights(format!(
            "LPIPS heads file {} not found: supply lpips' weights/v0.1/alex.pth (from the lpips 0.1.4 wheel) or its safetensors conversion",
            path.display()
        )));
    }
    let st = path.extension().map(|e| e == "safetensors").unwrap_or(false);
    if st {
        TensorStore::from_safetensors_file(path)
    } else {
        read_legacy_pth(path)
    }
}

impl<B: Backend> Lpips<B> {
    /// Builds LPIPS from a trunk store (AlexNet `features.*`) and a heads store (`lin{k}.model.1.weight`).
    pub fn from_stores(trunk: &TensorStore, heads: &TensorStore, device: &B::Device) -> MetricResult<Self> {
        let mut convs = Vec::new();
        let mut cin = 3;
        let geo = [(11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)];
        for (slot, (&idx, &cout)) in ALEX_CONV_INDEX.iter().zip(&ALEX_CHANNELS).enumerate() {
            let (k, stride, pad) = geo[slot];
            let weight = trunk.tensor::<B, 4>(&trunk_name(trunk, idx, slot + 1, "weight"), [cout, cin, k, k], device)?;
            let bias = trunk.tensor::<B, 1>(&trunk_name(trunk, idx, slot + 1, "bias"), [cout], device)?;
            convs.push(Conv { weight, bias, stride, pad });
            cin = cout;
        }
        let heads = (0..5)
            .map(|k| heads.tensor::<B, 4>(&head_name(heads, k), [1, ALEX_CHANNELS[k], 1, 1], device))
            .collect::<MetricResult<Vec<_>>>()?;
        let shift = Tensor::from_data(TensorData::new(LPIPS_SHIFT.to_vec(), [1, 3, 1, 1]), device);
        let scale = Tensor::from_data(TensorData::new(LPIPS_SCALE.to_vec(), [1, 3, 1, 1]), device);
        Ok(Self { convs, heads, shift, scale })
    }

    /// Builds LPIPS from a trunk safetensors file and a heads file (`.pth` legacy or `.safetensors`).
    pub fn from_files(trunk: impl AsRef<Path>, heads: impl AsRef<Path>, device: &B::Device) -> MetricResult<Self> {
        let tp = trunk.as_ref();
        if !tp.exists() {
            return Err(MetricError::Weights(format!(
                "AlexNet trunk file {} not found: supply torchvision's AlexNet features as safetensors (see ddrep::metrics::lpips docs for the one-line conversion)",
                tp.display()
            )));
        }
        let t = TensorStore::from_safetensors_file(tp)?;
        let h = load_lpips_heads(heads)?;
        Self::from_stores(&t, &h, device)
    }

    /// AlexNet trunk outputs relu1..relu5 of scaled input `x` (`[N,3,H,W]` in [-1,1]).
    pub fn trunk(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let mut h = (x - self.shift.clone()) / self.scale.clone();
        let mut outs = Vec::with_capacity(5);
        for (i, c) in self.convs.iter().enumerate() {
            if i == 1 || i == 2 {
                h = max_pool2d(h, [3, 3], [2, 2], [0, 0], [1, 1], false);
            }
            let opts = ConvOptions::new([c.stride, c.stride], [c.pad, c.pad], [1, 1], 1);
            h = burn::tensor::activation::relu(conv2d(h, c.weight.clone(), Some(c.bias.clone()), opts));
            outs.push(h.clone());
        }
        outs
    }

    fn unit_normalize(f: Tensor<B, 4>) -> Tensor<B, 4> {
        let norm = f.clone().powi_scalar(2).sum_dim(1).sqrt();
        f / (norm + 1e-10)
    }

    /// Full forward with the intermediate tensors (for debugging / parity tests).
    pub fn trace(&self, in0: Tensor<B, 4>, in1: Tensor<B, 4>) -> LpipsTrace<B> {
        let f0 = self.trunk(in0);
        let f1 = self.trunk(in1);
        let lin_maps = f0
            .iter()
            .zip(&f1)
            .zip(&self.heads)
            .map(|((a, b), w)| {
                let d = (Self::unit_normalize(a.clone()) - Self::unit_normalize(b.clone())).powi_scalar(2);
                conv2d(d, w.clone(), None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
            })
            .collect();
        LpipsTrace { relu0: f0, relu1: f1, lin_maps }
    }

    /// Per-layer spatial means `[N]` x 5 (sum them for LPIPS). No input checks: see [`Self::distance`].
    pub fn forward(&self, in0: Tensor<B, 4>, in1: Tensor<B, 4>) -> Vec<Tensor<B, 1>> {
        let t = self.trace(in0, in1);
        t.lin_maps
            .into_iter()
            .map(|m| {
                let n = m.dims()[0];
                m.reshape([n as i32, -1]).mean_dim(1).reshape([n])
            })
            .collect()
    }

    /// LPIPS between two host batches (NCHW RGB). `normalize = false`: pixels in [-1, 1] (lpips'
    /// default); `true`: pixels in [0, 1], mapped by `2x - 1` (lpips' `normalize=True`).
    /// Errors on different shapes, channels other than 3, or images smaller than 31x31.
    pub fn distance(&self, in0: &ImageBatch<'_>, in1: &ImageBatch<'_>, normalize: bool, device: &B::Device) -> MetricResult<LpipsValues> {
        same_shape(in0, in1)?;
        let [n, c, h, w] = in0.shape();
        if c != 3 {
            return Err(MetricError::ShapeMismatch { what: "LPIPS needs RGB images (3 channels)".into(), left: in0.shape().to_vec(), right: vec![n, 3, h, w] });
        }
        if h < LPIPS_MIN_SIDE || w < LPIPS_MIN_SIDE {
            return Err(MetricError::TooSmall {
                metric: "LPIPS (AlexNet)",
                h,
                w,
                reason: format!("AlexNet's conv/max-pool stack needs H and W >= {LPIPS_MIN_SIDE} (torch raises 'Output size is too small')"),
            });
        }
        let to = |b: &ImageBatch<'_>| {
            let v: Vec<f32> = if normalize { b.data().iter().map(|x| x * 2.0 - 1.0).collect() } else { b.data().to_vec() };
            Tensor::<B, 4>::from_data(TensorData::new(v, [n, c, h, w]), device)
        };
        let layers = self.forward(to(in0), to(in1));
        let per: Vec<Vec<f32>> = layers
            .into_iter()
            .map(|t| t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data"))
            .collect();
        let distance = (0..n).map(|b| per.iter().map(|l| l[b]).sum()).collect();
        let per_layer: [Vec<f32>; 5] = per.try_into().expect("five layers");
        Ok(LpipsValues { distance, per_layer })
    }
}
