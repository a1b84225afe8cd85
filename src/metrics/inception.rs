//! The FID-variant Inception-v3 (`pt_inception-2015-12-05`) used by torch-fidelity 0.4.0 and
//! torchmetrics 1.9.0 (FID / KID), in burn (generic over the backend).
//!
//! Input: uint8 RGB images of any size (NCHW), resized to 299x299 by one of two paths
//! ([`ResizeMode`]), then `(x - 128) / 128`.
//! Network: `BasicConv2d` = conv (no bias) + BatchNorm (eps 0.001, running stats) + ReLU, with the
//! TF-compatibility patches of pytorch-fid / torch-fidelity: the branch_pool average pools of
//! Mixed_5b-d, 6b-e and 7b use `count_include_pad=False`, Mixed_7c's branch_pool is a 3x3 stride-1
//! **max** pool. Features: `64` (after MaxPool_1), `192` (after MaxPool_2), `768` (after
//! Mixed_6e), `2048` (after Mixed_7c), each a global spatial average; `fc` is not used.
//!
//! Weights: a safetensors file with torch-fidelity's state-dict names
//! (`Conv2d_1a_3x3.conv.weight`, `Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var}`, ...).
//! The official `pt_inception-2015-12-05-6726825d.pth` is a zip-format torch file; convert it once:
//! `python -c "import torch;from safetensors.torch import save_file;save_file({k:v for k,v in torch.load('pt_inception-2015-12-05-6726825d.pth').items() if v.is_floating_point()},'pt_inception-2015-12-05.safetensors')"`.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use super::kid::FeatureMatrix;
use super::weights::TensorStore;
use super::{MetricError, MetricResult};

/// Side of the network input.
pub const INCEPTION_SIZE: usize = 299;
/// BatchNorm epsilon of the FID Inception.
pub const BN_EPS: f32 = 0.001;

/// How images are resized to 299x299.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// torch-fidelity `FeatureExtractorInceptionV3`: `interpolate_bilinear_2d_like_tensorflow1x`
    /// (TF1.x bilinear, `align_corners=False`, no half-pixel offset, no antialias).
    TorchFidelity,
    /// torchmetrics `NoTrainInceptionV3` (what `KernelInceptionDistance(feature=2048)` and FID
    /// use by default, `antialias=True`): `F.interpolate(bilinear, align_corners=False,
    /// antialias=True)`, a PIL-style separable triangle filter.
    Torchmetrics,
}

/// TF1.x bilinear resize of one `h x w` plane (f32 arithmetic as torch-fidelity).
fn resize_tf1(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let sy = h as f32 / oh as f32;
    let sx = w as f32 / ow as f32;
    let idx = |o: usize, s: f32, n: usize| {
        let p = o as f32 * s;
        let lo = p.floor();
        let l = (lo as usize).min(n - 1);
        let hi = (l + 1).min(n - 1);
        (l, hi, p - lo)
    };
    let xs: Vec<_> = (0..ow).map(|x| idx(x, sx, w)).collect();
    let mut out = vec![0.0f32; oh * ow];
    for y in 0..oh {
        let (y0, y1, fy) = idx(y, sy, h);
        for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
            let tl = src[y0 * w + x0];
            let tr = src[y0 * w + x1];
            let bl = src[y1 * w + x0];
            let br = src[y1 * w + x1];
            let top = tl + (tr - tl) * fx;
            let bot = bl + (br - bl) * fx;
            out[y * ow + x] = top + (bot - top) * fy;
        }
    }
    out
}

/// Antialiased bilinear weights (torch `_upsample_bilinear2d_aa`, PIL-style) for `n -> m`.
fn aa_weights(n: usize, m: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n as f64 / m as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..m)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(n as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|j| {
                    let t = (j as f64 - center + 0.5) * inv;
                    (1.0 - t.abs()).max(0.0)
                })
                .collect();
            let total: f64 = w.iter().sum();
            if total > 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

fn resize_aa(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let wx = aa_weights(w, ow);
    let wy = aa_weights(h, oh);
    // Horizontal pass then vertical pass.
    let mut tmp = vec![0.0f32; h * ow];
    for y in 0..h {
        for (x, (x0, ws)) in wx.iter().enumerate() {
            tmp[y * ow + x] = ws.iter().enumerate().map(|(k, &c)| c * src[y * w + x0 + k]).sum();
        }
    }
    let mut out = vec![0.0f32; oh * ow];
    for (y, (y0, ws)) in wy.iter().enumerate() {
        for x in 0..ow {
            out[y * ow + x] = ws.iter().enumerate().map(|(k, &c)| c * tmp[(y0 + k) * ow + x]).sum();
        }
    }
    out
}

/// Resizes uint8 NCHW RGB images to the normalised `[N, 3, 299, 299]` network input
/// (`(resized - 128) / 128`). Errors on an empty batch, wrong length or channels other than 3.
pub fn preprocess(images: &[u8], shape: [usize; 4], mode: ResizeMode) -> MetricResult<Vec<f32>> {
    let [n, c, h, w] = shape;
    if shape.contains(&0) {
        return Err(MetricError::Empty(format!("Inception input of shape {shape:?}")));
    }
    if c != 3 {
        return Err(MetricError::ShapeMismatch { what: "Inception-v3 needs RGB images (3 channels)".into(), left: shape.to_vec(), right: vec![n, 3, h, w] });
    }
    if images.len() != n * c * h * w {
        return Err(MetricError::DataLength { what: "Inception input".into(), shape: shape.to_vec(), expected: n * c * h * w, got: images.len() });
    }
    let s = INCEPTION_SIZE;
    let mut out = Vec::with_capacity(n * c * s * s);
    for plane in images.chunks_exact(h * w) {
        let f: Vec<f32> = plane.iter().map(|&v| v as f32).collect();
        let r = match mode {
            ResizeMode::TorchFidelity => resize_tf1(&f, h, w, s, s),
            ResizeMode::Torchmetrics => resize_aa(&f, h, w, s, s),
        };
        out.extend(r.into_iter().map(|v| (v - 128.0) / 128.0));
    }
    Ok(out)
}

/// Float images in [0, 1] to uint8 as torchmetrics' `normalize=True` does: `(x * 255).byte()`
/// (truncation; values are clamped to [0, 255] first). Errors on non-finite pixels.
pub fn to_u8_like_torchmetrics(data: &[f32]) -> MetricResult<Vec<u8>> {
    super::check_finite("images", data)?;
    Ok(data.iter().map(|&x| (x * 255.0).clamp(0.0, 255.0) as u8).collect())
}

struct BasicConv<B: Backend> {
    weight: Tensor<B, 4>,
    scale: Tensor<B, 4>,
    shift: Tensor<B, 4>,
    stride: usize,
    pad: [usize; 2],
}

impl<B: Backend> BasicConv<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let opts = ConvOptions::new([self.stride, self.stride], self.pad, [1, 1], 1);
        let y = conv2d(x, self.weight.clone(), None, opts);
        burn::tensor::activation::relu(y * self.scale.clone() + self.shift.clone())
    }
}

/// The four feature levels of one batch (`[N, 64]`, `[N, 192]`, `[N, 768]`, `[N, 2048]`).
pub struct InceptionFeatures<B: Backend> {
    pub f64: Tensor<B, 2>,
    pub f192: Tensor<B, 2>,
    pub f768: Tensor<B, 2>,
    pub f2048: Tensor<B, 2>,
}

/// FID-variant Inception-v3 on backend `B`.
pub struct InceptionV3<B: Backend> {
    convs: HashMap<String, BasicConv<B>>,
}

/// `(name, cin, cout, kh, kw, stride, pad_h, pad_w)`.
type ConvSpec = (String, usize, usize, usize, usize, usize, usize, usize);

fn conv_specs() -> Vec<ConvSpec> {
    let mut v = Vec::new();
    let mut add = |n: String, ci, co, kh, kw, s, ph, pw| v.push((n, ci, co, kh, kw, s, ph, pw));
    add("Conv2d_1a_3x3".into(), 3, 32, 3, 3, 2, 0, 0);
    add("Conv2d_2a_3x3".into(), 32, 32, 3, 3, 1, 0, 0);
    add("Conv2d_2b_3x3".into(), 32, 64, 3, 3, 1, 1, 1);
    add("Conv2d_3b_1x1".into(), 64, 80, 1, 1, 1, 0, 0);
    add("Conv2d_4a_3x3".into(), 80, 192, 3, 3, 1, 0, 0);
    for (m, cin, pf) in [("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)] {
        add(format!("{m}.branch1x1"), cin, 64, 1, 1, 1, 0, 0);
        add(format!("{m}.branch5x5_1"), cin, 48, 1, 1, 1, 0, 0);
        add(format!("{m}.branch5x5_2"), 48, 64, 5, 5, 1, 2, 2);
        add(format!("{m}.branch3x3dbl_1"), cin, 64, 1, 1, 1, 0, 0);
        add(format!("{m}.branch3x3dbl_2"), 64, 96, 3, 3, 1, 1, 1);
        add(format!("{m}.branch3x3dbl_3"), 96, 96, 3, 3, 1, 1, 1);
        add(format!("{m}.branch_pool"), cin, pf, 1, 1, 1, 0, 0);
    }
    add("Mixed_6a.branch3x3".into(), 288, 384, 3, 3, 2, 0, 0);
    add("Mixed_6a.branch3x3dbl_1".into(), 288, 64, 1, 1, 1, 0, 0);
    add("Mixed_6a.branch3x3dbl_2".into(), 64, 96, 3, 3, 1, 1, 1);
    add("Mixed_6a.branch3x3dbl_3".into(), 96, 96, 3, 3, 2, 0, 0);
    for (m, c7) in [("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)] {
        add(format!("{m}.branch1x1"), 768, 192, 1, 1, 1, 0, 0);
        add(format!("{m}.branch7x7_1"), 768, c7, 1, 1, 1, 0, 0);
        add(format!("{m}.branch7x7_2"), c7, c7, 1, 7, 1, 0, 3);
        add(format!("{m}.branch7x7_3"), c7, 192, 7, 1, 1, 3, 0);
        add(format!("{m}.branch7x7dbl_1"), 768, c7, 1, 1, 1, 0, 0);
        add(format!("{m}.branch7x7dbl_2"), c7, c7, 7, 1, 1, 3, 0);
        add(format!("{m}.branch7x7dbl_3"), c7, c7, 1, 7, 1, 0, 3);
        add(format!("{m}.branch7x7dbl_4"), c7, c7, 7, 1, 1, 3, 0);
        add(format!("{m}.branch7x7dbl_5"), c7, 192, 1, 7, 1, 0, 3);
        add(format!("{m}.branch_pool"), 768, 192, 1, 1, 1, 0, 0);
    }
    add("Mixed_7a.branch3x3_1".into(), 768, 192, 1, 1, 1, 0, 0);
    add("Mixed_7a.branch3x3_2".into(), 192, 320, 3, 3, 2, 0, 0);
    add("Mixed_7a.branch7x7x3_1".into(), 768, 192, 1, 1, 1, 0, 0);
    add("Mixed_7a.branch7x7x3_2".into(), 192, 192, 1, 7, 1, 0, 3);
    add("Mixed_7a.branch7x7x3_3".into(), 192, 192, 7, 1, 1, 3, 0);
    add("Mixed_7a.branch7x7x3_4".into(), 192, 192, 3, 3, 2, 0, 0);
    for (m, cin) in [("Mixed_7b", 1280), ("Mixed_7c", 2048)] {
        add(format!("{m}.branch1x1"), cin, 320, 1, 1, 1, 0, 0);
        add(format!("{m}.branch3x3_1"), cin, 384, 1, 1, 1, 0, 0);
        add(format!("{m}.branch3x3_2a"), 384, 384, 1, 3, 1, 0, 1);
        add(format!("{m}.branch3x3_2b"), 384, 384, 3, 1, 1, 1, 0);
        add(format!("{m}.branch3x3dbl_1"), cin, 448, 1, 1, 1, 0, 0);
        add(format!("{m}.branch3x3dbl_2"), 448, 384, 3, 3, 1, 1, 1);
        add(format!("{m}.branch3x3dbl_3a"), 384, 384, 1, 3, 1, 0, 1);
        add(format!("{m}.branch3x3dbl_3b"), 384, 384, 3, 1, 1, 1, 0);
        add(format!("{m}.branch_pool"), cin, 192, 1, 1, 1, 0, 0);
    }
    v
}

fn gap<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, _, _] = x.dims();
    x.reshape([n as i32, c as i32, -1]).mean_dim(2).reshape([n, c])
}

fn avg3<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    avg_pool2d(x, [3, 3], [1, 1], [1, 1], false, false)
}

fn maxpool<B: Backend>(x: Tensor<B, 4>, stride: usize, pad: usize) -> Tensor<B, 4> {
    max_pool2d(x, [3, 3], [stride, stride], [pad, pad], [1, 1], false)
}

impl<B: Backend> InceptionV3<B> {
    /// Builds the network from torch-fidelity-named tensors (shapes checked).
    pub fn from_store(store: &TensorStore, device: &B::Device) -> MetricResult<Self> {
        let mut convs = HashMap::new();
        for (name, ci, co, kh, kw, stride, ph, pw) in conv_specs() {
            let weight = store.tensor::<B, 4>(&format!("{name}.conv.weight"), [co, ci, kh, kw], device)?;
            let get = |p: &str| store.get(&format!("{name}.bn.{p}"), &[co]).map(|t| t.data.clone());
            let (g, b, m, v) = (get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?);
            let scale: Vec<f32> = g.iter().zip(&v).map(|(g, v)| g / (v + BN_EPS).sqrt()).collect();
            let shift: Vec<f32> = b.iter().zip(&m).zip(&scale).map(|((b, m), s)| b - m * s).collect();
            let scale = Tensor::from_data(TensorData::new(scale, [1, co, 1, 1]), device);
            let shift = Tensor::from_data(TensorData::new(shift, [1, co, 1, 1]), device);
            convs.insert(name, BasicConv { weight, scale, shift, stride, pad: [ph, pw] });
        }
        Ok(Self { convs })
    }

    /// Builds the network from a safetensors file (see the module docs for the conversion).
    pub fn from_file(path: impl AsRef<Path>, device: &B::Device) -> MetricResult<Self> {
        let p = path.as_ref();
        if !p.exists() {
            return Err(MetricError::Weights(format!(
                "Inception-v3 weights {} not found: supply pt_inception-2015-12-05 converted to safetensors (see ddrep::metrics::inception docs)",
                p.display()
            )));
        }
        Self::from_store(&TensorStore::from_safetensors_file(p)?, device)
    }

    fn c(&self, name: &str, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.convs[name].forward(x)
    }

    fn mixed_a(&self, m: &str, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.c(&format!("{m}.branch1x1"), x.clone());
        let b5 = self.c(&format!("{m}.branch5x5_2"), self.c(&format!("{m}.branch5x5_1"), x.clone()));
        let b3 = self.c(&format!("{m}.branch3x3dbl_1"), x.clone());
        let b3 = self.c(&format!("{m}.branch3x3dbl_3"), self.c(&format!("{m}.branch3x3dbl_2"), b3));
        let bp = self.c(&format!("{m}.branch_pool"), avg3(x));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }

    fn mixed_b(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self.c("Mixed_6a.branch3x3", x.clone());
        let bd = self.c("Mixed_6a.branch3x3dbl_1", x.clone());
        let bd = self.c("Mixed_6a.branch3x3dbl_3", self.c("Mixed_6a.branch3x3dbl_2", bd));
        let bp = maxpool(x, 2, 0);
        Tensor::cat(vec![b3, bd, bp], 1)
    }

    fn mixed_c(&self, m: &str, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.c(&format!("{m}.branch1x1"), x.clone());
        let mut b7 = x.clone();
        for i in 1..=3 {
            b7 = self.c(&format!("{m}.branch7x7_{i}"), b7);
        }
        let mut bd = x.clone();
        for i in 1..=5 {
            bd = self.c(&format!("{m}.branch7x7dbl_{i}"), bd);
        }
        let bp = self.c(&format!("{m}.branch_pool"), avg3(x));
        Tensor::cat(vec![b1, b7, bd, bp], 1)
    }

    fn mixed_d(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self.c("Mixed_7a.branch3x3_2", self.c("Mixed_7a.branch3x3_1", x.clone()));
        let mut b7 = x.clone();
        for i in 1..=4 {
            b7 = self.c(&format!("Mixed_7a.branch7x7x3_{i}"), b7);
        }
        let bp = maxpool(x, 2, 0);
        Tensor::cat(vec![b3, b7, bp], 1)
    }

    fn mixed_e(&self, m: &str, x: Tensor<B, 4>, max_pool: bool) -> Tensor<B, 4> {
        let b1 = self.c(&format!("{m}.branch1x1"), x.clone());
        let b3 = self.c(&format!("{m}.branch3x3_1"), x.clone());
        let b3 = Tensor::cat(vec![self.c(&format!("{m}.branch3x3_2a"), b3.clone()), self.c(&format!("{m}.branch3x3_2b"), b3)], 1);
        let bd = self.c(&format!("{m}.branch3x3dbl_1"), x.clone());
        let bd = self.c(&format!("{m}.branch3x3dbl_2"), bd);
        let bd = Tensor::cat(vec![self.c(&format!("{m}.branch3x3dbl_3a"), bd.clone()), self.c(&format!("{m}.branch3x3dbl_3b"), bd)], 1);
        let pooled = if max_pool { maxpool(x, 1, 1) } else { avg3(x) };
        let bp = self.c(&format!("{m}.branch_pool"), pooled);
        Tensor::cat(vec![b1, b3, bd, bp], 1)
    }

    /// Forward on the normalised `[N, 3, 299, 299]` input (see [`preprocess`]).
    pub fn forward(&self, x: Tensor<B, 4>) -> InceptionFeatures<B> {
        let mut x = self.c("Conv2d_1a_3x3", x);
        x = self.c("Conv2d_2a_3x3", x);
        x = self.c("Conv2d_2b_3x3", x);
        x = maxpool(x, 2, 0);
        let f64 = gap(x.clone());
        x = self.c("Conv2d_3b_1x1", x);
        x = self.c("Conv2d_4a_3x3", x);
        x = maxpool(x, 2, 0);
        let f192 = gap(x.clone());
        for m in ["Mixed_5b", "Mixed_5c", "Mixed_5d"] {
            x = self.mixed_a(m, x);
        }
        x = self.mixed_b(x);
        for m in ["Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"] {
            x = self.mixed_c(m, x);
        }
        let f768 = gap(x.clone());
        x = self.mixed_d(x);
        x = self.mixed_e("Mixed_7b", x, false);
        x = self.mixed_e("Mixed_7c", x, true);
        let f2048 = gap(x);
        InceptionFeatures { f64, f192, f768, f2048 }
    }

    /// All feature levels of uint8 NCHW RGB images resized with `mode`.
    pub fn features(&self, images: &[u8], shape: [usize; 4], mode: ResizeMode, device: &B::Device) -> MetricResult<InceptionFeatures<B>> {
        let x = preprocess(images, shape, mode)?;
        let s = INCEPTION_SIZE;
        Ok(self.forward(Tensor::from_data(TensorData::new(x, [shape[0], 3, s, s]), device)))
    }

    /// 2048-d pool features of uint8 NCHW RGB images, computed in batches of `batch_size`,
    /// as the `[N, 2048]` matrix KID/FID use.
    pub fn pool_features(&self, images: &[u8], shape: [usize; 4], mode: ResizeMode, batch_size: usize, device: &B::Device) -> MetricResult<FeatureMatrix> {
        if batch_size == 0 {
            return Err(MetricError::InvalidParam("batch_size must be > 0".into()));
        }
        let [n, c, h, w] = shape;
        let per = c * h * w;
        if images.len() != n * per {
            return Err(MetricError::DataLength { what: "Inception input".into(), shape: shape.to_vec(), expected: n * per, got: images.len() });
        }
        if n == 0 {
            return Err(MetricError::Empty("no images for Inception features".into()));
        }
        let mut all = Vec::with_capacity(n * 2048);
        for start in (0..n).step_by(batch_size) {
            let m = batch_size.min(n - start);
            let f = self.features(&images[start * per..(start + m) * per], [m, c, h, w], mode, device)?;
            all.extend(f.f2048.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data"));
        }
        FeatureMatrix::new("Inception pool features", all, 2048)
    }
}
