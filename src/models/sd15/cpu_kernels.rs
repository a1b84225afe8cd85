//! CPU kernels on plain `f32` buffers for SD1.5's hot paths on the ndarray backend:
//! linear layers, convolutions (im2col + GEMM at every resolution) and attention (blocked,
//! so the `[n, heads, L, L]` score tensor is never materialised).
//!
//! Why: burn-ndarray's direct convolution is several times slower than a GEMM at SD's
//! shapes, and its attention builds the full score tensor (1 GB per 64x64 self-attention
//! at batch 2), whose page faults alone cost seconds per UNet eval. The GEMMs are the
//! `gemm` crate's (runtime-dispatched AVX2/AVX-512/NEON kernels, rayon threads). GPU
//! backends never come here; they keep burn's kernels.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_ndarray::NdArrayTensor;
use gemm::Parallelism;
use rayon::prelude::*;

/// `fn $name(args)` running `$generic` compiled for AVX2 + FMA when the CPU has them (checked
/// at run time; the crate itself is built for baseline x86-64), else as built. `$generic` is
/// `#[inline(always)]` and written so that the compiler vectorises it.
macro_rules! with_avx2 {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $generic:ident) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

/// Whether `B` is the plain f32 ndarray backend, where these kernels replace burn's.
/// (Not under autodiff: a kernel here would cut the graph.)
pub fn host_backend<B: Backend>(device: &B::Device) -> bool {
    B::name(device) == "ndarray" && std::any::type_name::<B::FloatElem>() == "f32"
}

/// A tensor's values, row-major. On the ndarray backend the buffer is taken over when the
/// tensor owns it alone, else copied with one memcpy (burn's `into_data` walks shared or
/// strided arrays element by element through dynamic-rank indices, which cost a fifth of a
/// UNet eval).
pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    let prim = t.into_primitive().tensor();
    if let Some(NdArrayTensor::F32(storage)) = (&prim as &dyn Any).downcast_ref::<NdArrayTensor>() {
        let view = storage.view();
        if view.is_standard_layout() {
            if let Some(slice) = view.as_slice() {
                if !storage.is_unique() {
                    return slice.to_vec();
                }
            }
            let Ok(NdArrayTensor::F32(storage)) = (Box::new(prim) as Box<dyn Any>)
                .downcast::<NdArrayTensor>()
                .map(|b| *b)
            else {
                unreachable!("checked above")
            };
            let n = storage.len();
            let (mut v, offset) = storage.into_owned().into_owned().into_raw_vec_and_offset();
            let offset = offset.unwrap_or(0);
            v.truncate(offset + n);
            v.drain(..offset);
            return v;
        }
        // Strided: ndarray copies it into standard layout lane by lane.
        let (mut v, offset) = view
            .as_standard_layout()
            .into_owned()
            .into_raw_vec_and_offset();
        v.drain(..offset.unwrap_or(0));
        return v;
    }
    crate::tensor_util::tensor_to_vec(Tensor::<B, D>::from_primitive(burn::tensor::TensorPrimitive::Float(prim)))
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// A raw pointer that may cross rayon tasks; every task writes a disjoint region.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// A strided read-only matrix: element (i, j) at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// `dst[m x n] (row stride dst_rs) = (accumulate ? dst : 0) + scale * a[m x k] . b[k x n]`.
///
/// # Safety
/// Every pointer must address the whole strided matrix it describes.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    a: View,
    b: View,
    accumulate: bool,
    scale: f32,
    par: Parallelism,
) {
    gemm::gemm(
        m, n, k, dst, 1, dst_rs, accumulate, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0, scale,
        false, false, false, par,
    );
}

/// `rows` copies of `row`, one after the other (the bias rows a GEMM then accumulates onto).
fn rows_of(row: &[f32], rows: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * row.len()];
    if !row.is_empty() {
        y.par_chunks_mut(row.len() * (CHUNK / row.len()).max(1)).for_each(|block| {
            for r in block.chunks_exact_mut(row.len()) {
                r.copy_from_slice(row);
            }
        });
    }
    y
}

/// An image batch `[n, bias.len(), plane]` whose channel `c` is filled with `bias[c]`, that a
/// convolution's GEMM then accumulates onto.
fn bias_planes(bias: &[f32], plane: usize, n: usize) -> Vec<f32> {
    let mut y = Vec::with_capacity(n * bias.len() * plane);
    for _ in 0..n {
        for &b in bias {
            y.extend(std::iter::repeat_n(b, plane));
        }
    }
    y
}

/// `y[rows, out] = x[rows, inp] . w[inp, out] + bias`.
pub fn linear(
    x: &[f32],
    rows: usize,
    inp: usize,
    w: &[f32],
    out: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), rows * inp);
    assert_eq!(w.len(), inp * out);
    let mut y = match bias {
        Some(b) => rows_of(b, rows),
        None => vec![0.0; rows * out],
    };
    if rows > 0 && out > 0 {
        let a = View {
            ptr: x.as_ptr(),
            rs: inp as isize,
            cs: 1,
        };
        let b = View {
            ptr: w.as_ptr(),
            rs: out as isize,
            cs: 1,
        };
        // SAFETY: the shapes were checked above.
        unsafe {
            matmul(
                rows,
                out,
                inp,
                y.as_mut_ptr(),
                out as isize,
                a,
                b,
                true,
                1.0,
                threads(),
            )
        };
    }
    y
}

/// Shape of a 2-D convolution: input `[n, c, h, w]`, weight `[o, c, k, k]`, `stride`, and
/// `padding` zeros on every side.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    pub fn out_hw(&self) -> (usize, usize) {
        let f = |x: usize| (x + 2 * self.padding - self.k) / self.stride + 1;
        (f(self.h), f(self.w))
    }
}

/// Largest im2col buffer (in f32 values) built at once; bigger images go in bands of rows.
const IM2COL_MAX: usize = 8 << 20;

/// `y[n, o, oh, ow] = conv(x, weight) + bias`, weight flattened as `[o, c*k*k]`.
pub fn conv2d(x: &[f32], s: ConvShape, weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let ConvShape {
        n,
        c,
        h,
        w,
        o,
        k,
        stride,
        padding,
    } = s;
    assert!(k >= 1 && stride >= 1 && h + 2 * padding >= k && w + 2 * padding >= k);
    assert_eq!(x.len(), n * c * h * w);
    assert_eq!(weight.len(), o * c * k * k);
    assert_eq!(bias.len(), o);
    let (oh, ow) = s.out_hw();
    let ckk = c * k * k;
    let mut y = bias_planes(bias, oh * ow, n);
    let wv = View {
        ptr: weight.as_ptr(),
        rs: ckk as isize,
        cs: 1,
    };
    let pointwise = k == 1 && stride == 1 && padding == 0;
    let band = (IM2COL_MAX / (ckk * ow).max(1)).clamp(1, oh);
    let mut cols = if pointwise {
        Vec::new()
    } else {
        vec![0f32; ckk * band * ow]
    };
    for i in 0..n {
        let xi = &x[i * c * h * w..(i + 1) * c * h * w];
        let yi = y[i * o * oh * ow..].as_mut_ptr();
        if pointwise {
            let b = View {
                ptr: xi.as_ptr(),
                rs: (h * w) as isize,
                cs: 1,
            };
            // SAFETY: x_i is [c, h*w], y_i is [o, h*w], weight [o, c].
            unsafe {
                matmul(
                    o,
                    h * w,
                    c,
                    yi,
                    (h * w) as isize,
                    wv,
                    b,
                    true,
                    1.0,
                    threads(),
                )
            };
            continue;
        }
        let mut y0 = 0;
        while y0 < oh {
            let rows = band.min(oh - y0);
            let npix = rows * ow;
            // Row (ci, ky, kx) of the column matrix holds the input pixel each output pixel
            // of the band sees through that tap (zero in the padding).
            cols[..ckk * npix]
                .par_chunks_mut(npix)
                .enumerate()
                .for_each(|(r, dst)| {
                    let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                    let plane = &xi[ci * h * w..(ci + 1) * h * w];
                    for (yy, row) in dst.chunks_exact_mut(ow).enumerate() {
                        let iy = ((y0 + yy) * stride + ky) as isize - padding as isize;
                        if iy < 0 || iy >= h as isize {
                            row.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                        if stride == 1 {
                            // Output column ox reads input column ox + kx - padding: one copy
                            // of the part inside the image, zeros beside it.
                            let shift = kx as isize - padding as isize;
                            let lo = (-shift).clamp(0, ow as isize) as usize;
                            let hi = (w as isize - shift).clamp(lo as isize, ow as isize) as usize;
                            row[..lo].fill(0.0);
                            row[lo..hi].copy_from_slice(
                                &src[(lo as isize + shift) as usize..(hi as isize + shift) as usize],
                            );
                            row[hi..].fill(0.0);
                            continue;
                        }
                        for (ox, v) in row.iter_mut().enumerate() {
                            let ix = (ox * stride + kx) as isize - padding as isize;
                            *v = if ix >= 0 && ix < w as isize {
                                src[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                });
            let b = View {
                ptr: cols.as_ptr(),
                rs: npix as isize,
                cs: 1,
            };
            // SAFETY: cols is [ckk, npix]; the destination is columns y0*ow.. of y_i [o, oh*ow].
            unsafe {
                matmul(
                    o,
                    npix,
                    ckk,
                    yi.add(y0 * ow),
                    (oh * ow) as isize,
                    wv,
                    b,
                    true,
                    1.0,
                    threads(),
                )
            };
            y0 += rows;
        }
    }
    y
}

/// `[n, c, hw]` through a 1x1 convolution `w [o, c]` + `b`, returned as a sequence
/// `[n, hw, o]` (the transpose happens inside the GEMM's strides).
pub fn pointwise_to_seq(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    w: &[f32],
    o: usize,
    b: &[f32],
) -> Vec<f32> {
    assert_eq!(x.len(), n * c * hw);
    assert_eq!((w.len(), b.len()), (o * c, o));
    let mut y = rows_of(b, n * hw);
    for i in 0..n {
        let xt = View {
            ptr: x[i * c * hw..].as_ptr(),
            rs: 1,
            cs: hw as isize,
        };
        let wt = View {
            ptr: w.as_ptr(),
            rs: 1,
            cs: c as isize,
        };
        // SAFETY: x_i^T is [hw, c], w^T is [c, o], y_i is [hw, o].
        unsafe {
            matmul(
                hw,
                o,
                c,
                y[i * hw * o..].as_mut_ptr(),
                o as isize,
                xt,
                wt,
                true,
                1.0,
                threads(),
            )
        };
    }
    y
}

/// A sequence `[n, hw, c]` through a 1x1 convolution `w [o, c]` + `b`, returned as an image
/// `[n, o, hw]`.
pub fn seq_to_pointwise(
    s: &[f32],
    n: usize,
    hw: usize,
    c: usize,
    w: &[f32],
    o: usize,
    b: &[f32],
) -> Vec<f32> {
    assert_eq!(s.len(), n * hw * c);
    assert_eq!((w.len(), b.len()), (o * c, o));
    let mut y = bias_planes(b, hw, n);
    for i in 0..n {
        let wv = View {
            ptr: w.as_ptr(),
            rs: c as isize,
            cs: 1,
        };
        let st = View {
            ptr: s[i * hw * c..].as_ptr(),
            rs: 1,
            cs: c as isize,
        };
        // SAFETY: w is [o, c], s_i^T is [c, hw], y_i is [o, hw].
        unsafe {
            matmul(
                o,
                hw,
                c,
                y[i * o * hw..].as_mut_ptr(),
                hw as isize,
                wv,
                st,
                true,
                1.0,
                threads(),
            )
        };
    }
    y
}

/// Values per rayon task in the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// Layer norm over the last axis (`c` values per row), in place; statistics in f64.
pub fn layer_norm(x: &mut [f32], c: usize, w: &[f32], b: &[f32], eps: f64) {
    assert!(c > 0 && x.len().is_multiple_of(c));
    assert_eq!((w.len(), b.len()), (c, c));
    let rows_per_task = (CHUNK / c).max(1);
    x.par_chunks_mut(rows_per_task * c).for_each(|rows| {
        for row in rows.chunks_exact_mut(c) {
            let (mean, inv) = moments(row, eps);
            for ((v, &g), &bb) in row.iter_mut().zip(w).zip(b) {
                *v = (*v - mean) * inv * g + bb;
            }
        }
    });
}

/// Mean and 1/sqrt(biased variance + eps) of `v`, two-pass in f64 like PyTorch's norms.
fn moments(v: &[f32], eps: f64) -> (f32, f32) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// Group norm of `[n, c, hw]` in place (`groups` groups of consecutive channels), optionally
/// followed by SiLU (the ResNet blocks' `silu(norm(x))`).
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &mut [f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    w: &[f32],
    b: &[f32],
    eps: f64,
    silu: bool,
) {
    assert!(groups > 0 && c.is_multiple_of(groups));
    assert_eq!(x.len(), n * c * hw);
    assert_eq!((w.len(), b.len()), (c, c));
    let cg = c / groups;
    x.par_chunks_mut(cg * hw).enumerate().for_each(|(i, slab)| {
        let (mean, inv) = moments(slab, eps);
        let c0 = (i % groups) * cg;
        for (j, plane) in slab.chunks_exact_mut(hw).enumerate() {
            let (g, bb) = (w[c0 + j] * inv, b[c0 + j] - mean * inv * w[c0 + j]);
            if silu {
                silu_affine(plane, g, bb);
            } else {
                for v in plane.iter_mut() {
                    *v = *v * g + bb;
                }
            }
        }
    });
}

with_avx2! {
    /// `v <- silu(v * g + b)`.
    fn silu_affine(v: &mut [f32], g: f32, b: f32) => silu_affine_generic
}

#[inline(always)]
fn silu_affine_generic(v: &mut [f32], g: f32, b: f32) {
    for x in v.iter_mut() {
        let y = *x * g + b;
        // sigmoid(y) = 1 / (1 + exp(-y)); exp_f32 takes arguments <= 0, so use the symmetry.
        let e = exp_f32(-y.abs());
        let s = if y >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        };
        *x = y * s;
    }
}

/// GEGLU: `h [rows, 2 * inner]` -> `h[:, :inner] * gelu(h[:, inner:])` with the exact (erf) GELU.
pub fn geglu(h: &[f32], rows: usize, inner: usize) -> Vec<f32> {
    assert_eq!(h.len(), rows * 2 * inner);
    let mut out = vec![0f32; rows * inner];
    let rows_per_task = (CHUNK / inner).max(1);
    out.par_chunks_mut(rows_per_task * inner)
        .enumerate()
        .for_each(|(t, dst)| {
            for (r, orow) in dst.chunks_exact_mut(inner).enumerate() {
                let row = t * rows_per_task + r;
                let src = &h[row * 2 * inner..(row + 1) * 2 * inner];
                geglu_row(orow, &src[..inner], &src[inner..]);
            }
        });
    out
}

with_avx2! {
    fn geglu_row(out: &mut [f32], value: &[f32], gate: &[f32]) => geglu_row_generic
}

#[inline(always)]
fn geglu_row_generic(out: &mut [f32], value: &[f32], gate: &[f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(value).zip(gate) {
        *o = v * 0.5 * g * (1.0 + erf_f32(g * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf to about 1.5e-7 absolute error (Abramowitz & Stegun 7.1.26), branch-free.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_f32(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// Query rows per attention task: the score block `[QUERY_BLOCK, Lk]` stays in cache.
const QUERY_BLOCK: usize = 64;

/// Multi-head attention without a mask on `[n, Lq, C]` queries and `[n, Lk, C]` keys and
/// values, heads split along C (`view(n, L, heads, hd)`), scale `hd^-0.5`; returns
/// `[n, Lq, C]`. Softmax in f32 with the row maximum subtracted, as PyTorch does.
#[allow(clippy::too_many_arguments)] // the three operands and the problem's five sizes
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    lq: usize,
    lk: usize,
    c: usize,
    heads: usize,
) -> Vec<f32> {
    assert!(heads > 0 && c.is_multiple_of(heads) && lk > 0);
    assert_eq!(q.len(), n * lq * c);
    assert_eq!(k.len(), n * lk * c);
    assert_eq!(v.len(), n * lk * c);
    let hd = c / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; n * lq * c];
    let dst = SendPtr(out.as_mut_ptr());
    let blocks = lq.div_ceil(QUERY_BLOCK);
    (0..n * heads * blocks).into_par_iter().for_each_init(
        || vec![0f32; QUERY_BLOCK * lk],
        |scores, task| {
            // Captures the whole `SendPtr` (Send), not its raw-pointer field (not Send), which
            // is what the closure would capture from `dst.0` alone.
            #[allow(clippy::redundant_locals)]
            let dst = dst;
            let (b, rest) = (task / (heads * blocks), task % (heads * blocks));
            let (h, blk) = (rest / blocks, rest % blocks);
            let i0 = blk * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(lq - i0);
            let qv = View {
                ptr: q[(b * lq + i0) * c + h * hd..].as_ptr(),
                rs: c as isize,
                cs: 1,
            };
            // K^T: element (d, j) is k[b, j, h*hd + d].
            let kt = View {
                ptr: k[b * lk * c + h * hd..].as_ptr(),
                rs: 1,
                cs: c as isize,
            };
            let vv = View {
                ptr: v[b * lk * c + h * hd..].as_ptr(),
                rs: c as isize,
                cs: 1,
            };
            let s = &mut scores[..rows * lk];
            // SAFETY: views stay inside q, k, v; each task writes its own rows x hd block.
            unsafe {
                matmul(
                    rows,
                    lk,
                    hd,
                    s.as_mut_ptr(),
                    lk as isize,
                    qv,
                    kt,
                    false,
                    scale,
                    Parallelism::None,
                );
            }
            let mut inv = [0f32; QUERY_BLOCK];
            for (r, row) in s.chunks_exact_mut(lk).enumerate() {
                inv[r] = 1.0 / softmax_unnormalised(row);
            }
            let o = unsafe { dst.0.add((b * lq + i0) * c + h * hd) };
            let sv = View {
                ptr: s.as_ptr(),
                rs: lk as isize,
                cs: 1,
            };
            unsafe {
                matmul(
                    rows,
                    hd,
                    lk,
                    o,
                    c as isize,
                    sv,
                    vv,
                    false,
                    1.0,
                    Parallelism::None,
                );
                for (r, f) in inv[..rows].iter().enumerate() {
                    for d in 0..hd {
                        *o.add(r * c + d) *= f;
                    }
                }
            }
        },
    );
    out
}

with_avx2! {
    /// `row <- exp(row - max(row))`; returns the sum of the new row.
    fn softmax_unnormalised(row: &mut [f32]) -> f32 => softmax_unnormalised_generic
}

/// Written in lanes of 16 so that the compiler vectorises it (no float reassociation needed).
#[inline(always)]
fn softmax_unnormalised_generic(row: &mut [f32]) -> f32 {
    const L: usize = 16;
    let mut mx = [f32::NEG_INFINITY; L];
    let mut chunks = row.chunks_exact(L);
    for ch in &mut chunks {
        for i in 0..L {
            mx[i] = mx[i].max(ch[i]);
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for x in mx {
        m = m.max(x);
    }
    let mut acc = [0f32; L];
    let mut chunks = row.chunks_exact_mut(L);
    for ch in &mut chunks {
        for i in 0..L {
            let e = exp_f32(ch[i] - m);
            ch[i] = e;
            acc[i] += e;
        }
    }
    let mut sum = 0.0;
    for x in chunks.into_remainder() {
        *x = exp_f32(*x - m);
        sum += *x;
    }
    sum + acc.iter().sum::<f32>()
}

/// `exp(x)` for `x <= 0` to about 2 ulp (Cephes' expf polynomial), branch-free so it
/// vectorises; results below f32's normal range flush to zero.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round-to-nearest by the 1.5 * 2^23 trick (no floor call, so it vectorises on SSE2 too).
    const ROUND: f32 = 12_582_912.0;
    // A comparison, not `max`, so that NaN propagates (a NaN score must reach the output).
    let x = if x < -87.0 { -87.0 } else { x };
    let nf = (x * LOG2E + ROUND) - ROUND;
    let r = x - nf * LN2_HI - nf * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes' 5.0000001e-1, which rounds to 0.5 in f32
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((nf as i32 + 127) << 23) as u32);
    e * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (a, b) = (exp_f32(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 4.0 * f32::EPSILON, "max relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-1e4), exp_f32(-87.0));
    }

    #[test]
    fn conv_matches_the_definition() {
        for &(c, h, w, o, k, stride, padding) in &[
            (3, 7, 5, 4, 3, 1, 1),
            (2, 8, 8, 3, 3, 2, 1),
            (3, 9, 6, 2, 3, 2, 0),
            (4, 5, 5, 6, 1, 1, 0),
            (2, 6, 7, 2, 5, 1, 2),
        ] {
            let s = ConvShape {
                n: 2,
                c,
                h,
                w,
                o,
                k,
                stride,
                padding,
            };
            let (x, wt, b) = (
                pseudo(2 * c * h * w, 1),
                pseudo(o * c * k * k, 2),
                pseudo(o, 3),
            );
            let (oh, ow) = s.out_hw();
            let mut want = vec![0f32; 2 * o * oh * ow];
            for i in 0..2 {
                for oc in 0..o {
                    for yy in 0..oh {
                        for xx in 0..ow {
                            let mut acc = b[oc] as f64;
                            for ci in 0..c {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let iy = (yy * stride + ky) as isize - padding as isize;
                                        let ix = (xx * stride + kx) as isize - padding as isize;
                                        if iy >= 0
                                            && ix >= 0
                                            && (iy as usize) < h
                                            && (ix as usize) < w
                                        {
                                            acc += x
                                                [((i * c + ci) * h + iy as usize) * w + ix as usize]
                                                as f64
                                                * wt[((oc * c + ci) * k + ky) * k + kx] as f64;
                                        }
                                    }
                                }
                            }
                            want[((i * o + oc) * oh + yy) * ow + xx] = acc as f32;
                        }
                    }
                }
            }
            let got = conv2d(&x, s, &wt, &b);
            assert!(
                max_rel(&got, &want) < 1e-5,
                "{s:?}: {}",
                max_rel(&got, &want)
            );
        }
    }

    #[test]
    fn attention_matches_the_definition() {
        // Lq not a multiple of the query block, two heads, cross-attention lengths.
        let (n, lq, lk, c, heads) = (2, QUERY_BLOCK + 13, 37, 12, 3);
        let hd = c / heads;
        let (q, k, v) = (
            pseudo(n * lq * c, 4),
            pseudo(n * lk * c, 5),
            pseudo(n * lk * c, 6),
        );
        let q: Vec<f32> = q.iter().map(|x| 4.0 * x).collect();
        let got = attention(&q, &k, &v, n, lq, lk, c, heads);
        let mut want = vec![0f32; n * lq * c];
        for b in 0..n {
            for h in 0..heads {
                for i in 0..lq {
                    let s: Vec<f64> = (0..lk)
                        .map(|j| {
                            (0..hd)
                                .map(|d| {
                                    q[(b * lq + i) * c + h * hd + d] as f64
                                        * k[(b * lk + j) * c + h * hd + d] as f64
                                })
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hd {
                        let o: f64 = (0..lk)
                            .map(|j| e[j] * v[(b * lk + j) * c + h * hd + d] as f64)
                            .sum::<f64>()
                            / z;
                        want[(b * lq + i) * c + h * hd + d] = o as f32;
                    }
                }
            }
        }
        assert!(max_rel(&got, &want) < 1e-5, "{}", max_rel(&got, &want));
    }

    #[test]
    fn norms_gelu_and_pointwise_match_the_definitions() {
        let (n, c, hw, groups) = (2, 6, 10, 3);
        let x = pseudo(n * c * hw, 10);
        let (w, b) = (pseudo(c, 11), pseudo(c, 12));
        for silu in [false, true] {
            let mut got = x.clone();
            group_norm(&mut got, n, c, hw, groups, &w, &b, 1e-5, silu);
            let cg = c / groups;
            let mut want = x.clone();
            for i in 0..n {
                for g in 0..groups {
                    let slab = &x[(i * c + g * cg) * hw..(i * c + (g + 1) * cg) * hw];
                    let mean = slab.iter().map(|&v| v as f64).sum::<f64>() / slab.len() as f64;
                    let var = slab.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>()
                        / slab.len() as f64;
                    for j in 0..cg * hw {
                        let ch = g * cg + j / hw;
                        let y = (slab[j] as f64 - mean) / (var + 1e-5).sqrt() * w[ch] as f64
                            + b[ch] as f64;
                        let y = if silu { y / (1.0 + (-y).exp()) } else { y };
                        want[(i * c + g * cg) * hw + j] = y as f32;
                    }
                }
            }
            assert!(
                max_rel(&got, &want) < 1e-5,
                "silu {silu}: {}",
                max_rel(&got, &want)
            );
        }

        let mut got = x.clone();
        layer_norm(&mut got, c, &w, &b, 1e-5);
        for (row, grow) in x.chunks(c).zip(got.chunks(c)) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
            for j in 0..c {
                let want = (row[j] as f64 - mean) / (var + 1e-5).sqrt() * w[j] as f64 + b[j] as f64;
                assert!(
                    (grow[j] as f64 - want).abs() < 1e-5,
                    "{} vs {want}",
                    grow[j]
                );
            }
        }

        // Exact GELU through libm's erf; inputs up to +-6.
        let inner = 7;
        let h: Vec<f32> = pseudo(5 * 2 * inner, 13).iter().map(|v| 6.0 * v).collect();
        let got = geglu(&h, 5, inner);
        for r in 0..5 {
            for j in 0..inner {
                let (v, g) = (
                    h[r * 2 * inner + j] as f64,
                    h[r * 2 * inner + inner + j] as f64,
                );
                let want = v * 0.5 * g * (1.0 + libm::erf(g / std::f64::consts::SQRT_2));
                assert!(
                    (got[r * inner + j] as f64 - want).abs() < 2e-6 * (1.0 + want.abs()),
                    "{} vs {want}",
                    got[r * inner + j]
                );
            }
        }

        let (o, wt, bias) = (4, pseudo(4 * c, 14), pseudo(4, 15));
        let seq = pointwise_to_seq(&x, n, c, hw, &wt, o, &bias);
        let img = conv2d(
            &x,
            ConvShape {
                n,
                c,
                h: hw,
                w: 1,
                o,
                k: 1,
                stride: 1,
                padding: 0,
            },
            &wt,
            &bias,
        );
        for i in 0..n {
            for p in 0..hw {
                for oc in 0..o {
                    assert!((seq[(i * hw + p) * o + oc] - img[(i * o + oc) * hw + p]).abs() < 1e-5);
                }
            }
        }
        // And back: the sequence (as [n, hw, o] with o = c channels in) to an image.
        let (o2, wt2, bias2) = (3, pseudo(3 * o, 16), pseudo(3, 17));
        let back = seq_to_pointwise(&seq, n, hw, o, &wt2, o2, &bias2);
        let want = conv2d(
            &img,
            ConvShape {
                n,
                c: o,
                h: hw,
                w: 1,
                o: o2,
                k: 1,
                stride: 1,
                padding: 0,
            },
            &wt2,
            &bias2,
        );
        assert!(max_rel(&back, &want) < 1e-5);
    }

    /// Bit-identical results with 1 and with 4 threads, at sizes where the GEMMs split work
    /// across threads (the CPU backend's determinism promise covers thread counts).
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let s = ConvShape { n: 2, c: 64, h: 32, w: 32, o: 96, k: 3, stride: 1, padding: 1 };
                let y = conv2d(&pseudo(2 * 64 * 32 * 32, 20), s, &pseudo(96 * 64 * 9, 21), &pseudo(96, 22));
                let (l, c) = (1024, 64);
                let a = attention(&pseudo(2 * l * c, 23), &pseudo(2 * l * c, 24), &pseudo(2 * l * c, 25), 2, l, l, c, 4);
                let z = linear(&pseudo(2048 * 256, 26), 2048, 256, &pseudo(256 * 512, 27), 512, None);
                [y, a, z].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
            })
        };
        assert!(run(1) == run(4), "results differ between 1 and 4 threads");
    }

    #[test]
    fn linear_matches_the_definition() {
        let (rows, inp, out) = (33, 17, 9);
        let (x, w, b) = (pseudo(rows * inp, 7), pseudo(inp * out, 8), pseudo(out, 9));
        let got = linear(&x, rows, inp, &w, out, Some(&b));
        let want: Vec<f32> = (0..rows * out)
            .map(|i| {
                let (r, o) = (i / out, i % out);
                b[o] + (0..inp)
                    .map(|j| x[r * inp + j] * w[j * out + o])
                    .sum::<f32>()
            })
            .collect();
        assert!(max_rel(&got, &want) < 1e-5);
    }
}
