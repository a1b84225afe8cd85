//! ddrep's own cubecl kernels for the parts of SD1.5 that burn runs as chains of small ops:
//! group norm (with its SiLU), layer norm, the attention softmax and GEGLU; and im2col, for the
//! cuBLAS convolutions (`crate::cublas`). Generic over the cubecl runtime (burn-cuda's on the
//! GPU; `tools/gpu/kernels-check` runs them on wgpu when a Vulkan driver is present).
//!
//! Why: on the H200 (2026-11-26) an f16 UNet eval at batch 2 launched about 3100 kernels, some
//! 2400 of them element-wise ops, casts, copies and reductions of these layers (a group norm
//! alone was ~15: a cast to f32, staged means, subtract, square, add, sqrt, divide, a cast
//! back, the affine and the SiLU), and the card sat at 28-59 % SM while ddrep took 0.086 s
//! against diffusers' 0.024 s: the host could not launch them fast enough. Each kernel here
//! is one or two launches, reads its input with the strides it has (no copies of the NHWC conv
//! outputs), and keeps statistics and exponentials in f32 as PyTorch's kernels do.

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::server::CubeCountSelection;

/// Units per cube of the row kernels (a power of two: [`cube_sum`] halves it).
const UNITS: u32 = 256;
/// Elements of a group-norm group that one cube of [`group_norm_stats`] summarises.
const GN_CHUNK: usize = 2048;

/// The sum of `value` over the cube's units (every unit gets it). `shared` holds one f32 per
/// unit; it is free again when this returns.
#[cube]
fn cube_sum(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    shared[UNIT_POS as usize] = value;
    sync_cube();
    let mut active = CUBE_DIM;
    while active > 1 {
        active /= 2;
        if UNIT_POS < active {
            let other = shared[(UNIT_POS + active) as usize];
            shared[UNIT_POS as usize] += other;
        }
        sync_cube();
    }
    let total = shared[0];
    sync_cube();
    total
}

/// The maximum of `value` over the cube's units, as [`cube_sum`].
#[cube]
fn cube_max(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    shared[UNIT_POS as usize] = value;
    sync_cube();
    let mut active = CUBE_DIM;
    while active > 1 {
        active /= 2;
        if UNIT_POS < active {
            let a = shared[UNIT_POS as usize];
            let b = shared[(UNIT_POS + active) as usize];
            shared[UNIT_POS as usize] = select(b > a, b, a);
        }
        sync_cube();
    }
    let total = shared[0];
    sync_cube();
    total
}

/// Where element `i` of group `(n, c0..c0 + cpg)` of a `[N, C, H, W]` tensor lies: the group is
/// walked channel-fastest when the tensor is channels-last (`stride(1) == 1`), so that
/// neighbouring units read neighbouring memory either way. `H` and `W` are one axis of stride
/// `stride(3)` (the launcher checks that they merge).
#[cube]
fn group_offset<F: Float>(t: &Tensor<F>, n: usize, c0: usize, cpg: usize, hw: usize, i: usize, #[comptime] channels_last: bool) -> usize {
    let mut c = i / hw;
    let mut s = i % hw;
    if channels_last {
        c = i % cpg;
        s = i / cpg;
    }
    n * t.stride(0) + (c0 + c) * t.stride(1) + s * t.stride(3)
}

/// The length of chunk `k` of `chunk` elements of a group of `count`.
#[cube]
fn chunk_len(k: usize, count: usize, #[comptime] chunk: usize) -> f32 {
    let start = k * chunk;
    let end = select(start + chunk < count, start + chunk, count);
    f32::cast_from(end - start)
}

/// Per chunk of `chunk` ([`GN_CHUNK`]) elements of each group: the chunk's mean and its sum of squared
/// deviations (two passes over the chunk, which stays in cache), into `stats[2 * chunk..]`.
/// One cube per chunk; chunk `k` of group `g` of sample `n` is cube `(n * groups + g) * chunks + k`.
#[cube(launch_unchecked)]
fn group_norm_stats<F: Float>(
    x: &Tensor<F>,
    stats: &mut Tensor<f32>,
    channels_per_group: u32,
    chunks: u32,
    #[comptime] chunk: usize,
    #[comptime] channels_last: bool,
    #[define(F)] _dtype: StorageType,
) {
    let chunks = chunks as usize;
    let cpg = channels_per_group as usize;
    let groups = x.shape(1) / cpg;
    if CUBE_POS >= x.shape(0) * groups * chunks {
        terminate!();
    }
    let mut shared = SharedMemory::<f32>::new(UNITS as usize);
    let hw = x.shape(2) * x.shape(3);
    let count = cpg * hw;
    let group = CUBE_POS / chunks;
    let n = group / groups;
    let c0 = (group % groups) * cpg;
    let start = (CUBE_POS % chunks) * chunk;
    let end = select(start + chunk < count, start + chunk, count);
    let len = chunk_len(CUBE_POS % chunks, count, chunk);
    let mut sum = f32::new(0.0);
    let mut i = start + UNIT_POS as usize;
    while i < end {
        sum += f32::cast_from(x[group_offset(x, n, c0, cpg, hw, i, channels_last)]);
        i += CUBE_DIM as usize;
    }
    let mean = cube_sum(sum, &mut shared) / len;
    let mut m2 = f32::new(0.0);
    let mut i = start + UNIT_POS as usize;
    while i < end {
        let d = f32::cast_from(x[group_offset(x, n, c0, cpg, hw, i, channels_last)]) - mean;
        m2 += d * d;
        i += CUBE_DIM as usize;
    }
    let m2 = cube_sum(m2, &mut shared);
    if UNIT_POS == 0 {
        stats[2 * CUBE_POS] = mean;
        stats[2 * CUBE_POS + 1] = m2;
    }
}

/// Merges a group's chunk statistics (Chan et al.'s pairwise formula, summed: the mean of the
/// chunk means weighted by their lengths, and `sum M2_k + n_k (mean_k - mean)^2`), then writes
/// the cube's chunk normalised, `(x - mean) / sqrt(var + eps) * gamma + beta`, with SiLU if
/// `silu`, in f32 and rounded once to `F`. Same cube layout as [`group_norm_stats`].
#[cube(launch_unchecked)]
fn group_norm_apply<F: Float>(
    x: &Tensor<F>,
    stats: &Tensor<f32>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    out: &mut Tensor<F>,
    channels_per_group: u32,
    chunks: u32,
    eps: f32,
    #[comptime] chunk: usize,
    #[comptime] channels_last: bool,
    #[comptime] silu: bool,
    #[define(F)] _dtype: StorageType,
) {
    let chunks = chunks as usize;
    let cpg = channels_per_group as usize;
    let groups = x.shape(1) / cpg;
    if CUBE_POS >= x.shape(0) * groups * chunks {
        terminate!();
    }
    let mut shared = SharedMemory::<f32>::new(UNITS as usize);
    let hw = x.shape(2) * x.shape(3);
    let count = cpg * hw;
    let group = CUBE_POS / chunks;
    let n = group / groups;
    let c0 = (group % groups) * cpg;
    let first = group * chunks;
    let mut weighted = f32::new(0.0);
    let mut k = UNIT_POS as usize;
    while k < chunks {
        weighted += chunk_len(k, count, chunk) * stats[2 * (first + k)];
        k += CUBE_DIM as usize;
    }
    let mean = cube_sum(weighted, &mut shared) / f32::cast_from(count);
    let mut m2 = f32::new(0.0);
    let mut k = UNIT_POS as usize;
    while k < chunks {
        let d = stats[2 * (first + k)] - mean;
        m2 += stats[2 * (first + k) + 1] + chunk_len(k, count, chunk) * d * d;
        k += CUBE_DIM as usize;
    }
    let m2 = cube_sum(m2, &mut shared);
    let rstd = f32::new(1.0) / f32::sqrt(m2 / f32::cast_from(count) + eps);
    let start = (CUBE_POS % chunks) * chunk;
    let end = select(start + chunk < count, start + chunk, count);
    let mut i = start + UNIT_POS as usize;
    while i < end {
        let mut c = i / hw;
        if channels_last {
            c = i % cpg;
        }
        let v = f32::cast_from(x[group_offset(x, n, c0, cpg, hw, i, channels_last)]);
        let mut y = (v - mean) * rstd * f32::cast_from(gamma[c0 + c]) + f32::cast_from(beta[c0 + c]);
        if silu {
            y = y / (f32::new(1.0) + f32::exp(-y));
        }
        out[group_offset(out, n, c0, cpg, hw, i, channels_last)] = F::cast_from(y);
        i += CUBE_DIM as usize;
    }
}

/// Layer norm over the last axis of `[n, L, C]` (last axis contiguous), one cube per row,
/// two-pass statistics in f32, into a contiguous `out`.
#[cube(launch_unchecked)]
fn layer_norm_rows<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    out: &mut Tensor<F>,
    eps: f32,
    #[define(F)] _dtype: StorageType,
) {
    let (len, width) = (x.shape(1), x.shape(2));
    if CUBE_POS >= x.shape(0) * len {
        terminate!();
    }
    let mut shared = SharedMemory::<f32>::new(UNITS as usize);
    let base = (CUBE_POS / len) * x.stride(0) + (CUBE_POS % len) * x.stride(1);
    let mut sum = f32::new(0.0);
    let mut j = UNIT_POS as usize;
    while j < width {
        sum += f32::cast_from(x[base + j]);
        j += CUBE_DIM as usize;
    }
    let mean = cube_sum(sum, &mut shared) / f32::cast_from(width);
    let mut m2 = f32::new(0.0);
    let mut j = UNIT_POS as usize;
    while j < width {
        let d = f32::cast_from(x[base + j]) - mean;
        m2 += d * d;
        j += CUBE_DIM as usize;
    }
    let rstd = f32::new(1.0) / f32::sqrt(cube_sum(m2, &mut shared) / f32::cast_from(width) + eps);
    let mut j = UNIT_POS as usize;
    while j < width {
        let y = (f32::cast_from(x[base + j]) - mean) * rstd * f32::cast_from(gamma[j]) + f32::cast_from(beta[j]);
        out[CUBE_POS * width + j] = F::cast_from(y);
        j += CUBE_DIM as usize;
    }
}

/// Softmax over the last axis of a contiguous `[rows, L]`, one cube per row: the max, the sum
/// of `exp(x - max)` in f32, and `exp(x - max) / sum` rounded once to `F`.
#[cube(launch_unchecked)]
fn softmax_rows<F: Float>(x: &Tensor<F>, out: &mut Tensor<F>, rows: u32, #[define(F)] _dtype: StorageType) {
    if CUBE_POS >= rows as usize {
        terminate!();
    }
    let mut shared = SharedMemory::<f32>::new(UNITS as usize);
    let width = x.shape(x.rank() - 1);
    let base = CUBE_POS * width;
    let mut max = f32::new(-3.0e38);
    let mut j = UNIT_POS as usize;
    while j < width {
        let v = f32::cast_from(x[base + j]);
        max = select(v > max, v, max);
        j += CUBE_DIM as usize;
    }
    let max = cube_max(max, &mut shared);
    let mut sum = f32::new(0.0);
    let mut j = UNIT_POS as usize;
    while j < width {
        sum += f32::exp(f32::cast_from(x[base + j]) - max);
        j += CUBE_DIM as usize;
    }
    let scale = f32::new(1.0) / cube_sum(sum, &mut shared);
    let mut j = UNIT_POS as usize;
    while j < width {
        out[base + j] = F::cast_from(f32::exp(f32::cast_from(x[base + j]) - max) * scale);
        j += CUBE_DIM as usize;
    }
}

/// GEGLU on a contiguous `[rows, 2 * inner]`: `value * gelu(gate)` with the first half the
/// value and the second the gate, exact (erf) GELU in f32, into a contiguous `[rows, inner]`.
#[cube(launch_unchecked)]
fn geglu_elems<F: Float>(h: &Tensor<F>, out: &mut Tensor<F>, #[define(F)] _dtype: StorageType) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let inner = out.shape(out.rank() - 1);
    let row = ABSOLUTE_POS / inner;
    let j = ABSOLUTE_POS % inner;
    let value = f32::cast_from(h[row * 2 * inner + j]);
    let gate = f32::cast_from(h[row * 2 * inner + inner + j]);
    let gelu = f32::new(0.5) * gate * (f32::new(1.0) + Erf::erf(gate * f32::new(std::f32::consts::FRAC_1_SQRT_2)));
    out[ABSOLUTE_POS] = F::cast_from(value * gelu);
}

/// Rows `row0..row0 + out.shape(0)` of the im2col matrix of `x` (`[N, C, H, W]`, any strides)
/// for a square `k`x`k` convolution: row `(n, oy, ox)` of an `out_h` x `out_w` output holds
/// the `k * k * C` inputs under the kernel at that output pixel, ordered `(ky, kx, c)` (channel
/// fastest, the order of a channels-last weight), zero where the kernel lies over the padding.
/// One cube per row: the row's position is worked out once, then the taps (unrolled) and the
/// channels (one per unit, so neighbouring units read neighbouring memory of a channels-last
/// input and write neighbouring columns), with no division per element. `out` is a
/// contiguous `[rows, k * k * C]`.
#[cube(launch_unchecked)]
fn im2col_rows<F: Float>(
    x: &Tensor<F>,
    out: &mut Tensor<F>,
    row0: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    padding: u32,
    #[comptime] k: usize,
    #[define(F)] _dtype: StorageType,
) {
    if CUBE_POS >= out.shape(0) {
        terminate!();
    }
    let channels = x.shape(1);
    let row = CUBE_POS + row0 as usize;
    let (ow, oh) = (out_w as usize, out_h as usize);
    let ox = row % ow;
    let oy = (row / ow) % oh;
    let n = row / (ow * oh);
    // Positions in the padded input; the border is `padding` wide on each side.
    let pad = padding as usize;
    let (y0, x0) = (oy * stride as usize, ox * stride as usize);
    let (h, w) = (x.shape(2) + pad, x.shape(3) + pad);
    let out_row = CUBE_POS * out.shape(1);
    #[unroll]
    for tap in 0..k * k {
        let (py, px) = (y0 + tap / k, x0 + tap % k);
        let inside = py >= pad && px >= pad && py < h && px < w;
        // Read only where `inside`; elsewhere the (wrapped) offset is never used.
        let src = n * x.stride(0) + (py - pad) * x.stride(2) + (px - pad) * x.stride(3);
        let dst = out_row + tap * channels;
        let mut c = UNIT_POS as usize;
        while c < channels {
            let mut v = F::new(0.0);
            if inside {
                v = x[src + c * x.stride(1)];
            }
            out[dst + c] = v;
            c += CUBE_DIM as usize;
        }
    }
}

/// A kernel's output, or its input handed back with the reason it did not run (a dtype the
/// kernels do not take, or the runtime's launch error, e.g. a compiler's): the caller runs
/// burn's ops instead. Boxed: the rare path need not make every result large.
pub type KernelResult<R> = Result<CubeTensor<R>, Refused<R>>;

/// A kernel's input handed back, with why the kernel did not run ([`KernelResult`]).
pub type Refused<R> = Box<(CubeTensor<R>, String)>;

/// `x` with its element type for the kernels, or `x` handed back with why there is none
/// (quantised or non-float tensors; never expected in SD1.5).
fn with_dtype<R: CubeRuntime>(x: CubeTensor<R>) -> Result<(CubeTensor<R>, StorageType), Refused<R>> {
    match x.dtype {
        DType::F32 | DType::F16 | DType::BF16 => {
            let dtype = x.dtype.into();
            Ok((x, dtype))
        }
        d => Err(Box::new((x, format!("dtype {d:?}")))),
    }
}

/// An uninitialised contiguous tensor of `shape` in `like`'s dtype, on its device.
fn empty_like<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape, like.dtype)
}

/// `out` once its launch went through, else `input` handed back with the launch error.
fn launched<R: CubeRuntime, E: std::fmt::Debug>(launch: Result<(), E>, out: CubeTensor<R>, input: CubeTensor<R>) -> KernelResult<R> {
    match launch {
        Ok(()) => Ok(out),
        Err(e) => Err(Box::new((input, format!("{e:?}")))),
    }
}

/// The same tensor with a contiguous layout (a copy only when it is not one).
fn contiguous<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.is_contiguous() {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    }
}

/// A cube count of at least `cubes` cubes (spread over axes where one axis would exceed the
/// runtime's limit; the kernels skip the cubes past their work).
fn cube_count<R: CubeRuntime>(t: &CubeTensor<R>, cubes: usize) -> CubeCount {
    CubeCountSelection::new(&t.client, cubes as u32).cube_count()
}

/// `[N, C, H, W]` group norm with `groups` groups (statistics per sample and group), affine
/// `gamma`, `beta` (`[C]`), then SiLU if `silu`. A channels-last input gives a channels-last
/// output (the next conv reads it without a copy); anything else a contiguous one. `Err`
/// hands `x` back with the reason ([`KernelResult`]).
pub fn group_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    gamma: CubeTensor<R>,
    beta: CubeTensor<R>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> KernelResult<R> {
    let (x, dtype) = with_dtype(x)?;
    let [n, c, h, w] = <[usize; 4]>::try_from(x.shape.dims.as_slice()).expect("a 4-d tensor");
    if groups == 0 || c % groups != 0 || x.shape.num_elements() == 0 {
        // Not a group norm the kernels' indexing covers (the configs' check refuses such
        // models first); burn's ops say what is wrong.
        return Err(Box::new((x, format!("{c} channels in {groups} groups"))));
    }
    let s = &x.strides;
    let channels_last = s[1] == 1 && s[3] == c && s[2] == w * c && s[0] == h * w * c;
    let x = if channels_last || x.is_contiguous() { x } else { burn_cubecl::kernel::into_contiguous(x) };
    let (gamma, beta) = (contiguous(gamma), contiguous(beta));
    let cpg = c / groups;
    let chunks = (cpg * h * w).div_ceil(GN_CHUNK).max(1);
    let cubes = n * groups * chunks;
    let client = x.client.clone();
    let stats = empty_device_dtype(client.clone(), x.device.clone(), Shape::new([2 * cubes]), DType::F32);
    let out = empty_like(&x, x.shape.clone());
    let out = if channels_last {
        CubeTensor::new(out.client, out.handle, out.shape, out.device, x.strides.clone(), out.dtype)
    } else {
        out
    };
    let dim = CubeDim::new_1d(UNITS);
    // Safety: every index the kernels form is inside its tensor (cubes past the work return
    // first; element and chunk loops stop at the group's and chunk's ends).
    let launch = unsafe {
        group_norm_stats::launch_unchecked(
            &client,
            cube_count(&x, cubes),
            dim,
            x.as_tensor_arg(1),
            stats.as_tensor_arg(1),
            ScalarArg::new(cpg as u32),
            ScalarArg::new(chunks as u32),
            GN_CHUNK,
            channels_last,
            dtype,
        )
        .and_then(|()| {
            group_norm_apply::launch_unchecked(
            &client,
            cube_count(&x, cubes),
            dim,
            x.as_tensor_arg(1),
            stats.as_tensor_arg(1),
            gamma.as_tensor_arg(1),
            beta.as_tensor_arg(1),
            out.as_tensor_arg(1),
            ScalarArg::new(cpg as u32),
            ScalarArg::new(chunks as u32),
            ScalarArg::new(eps as f32),
            GN_CHUNK,
            channels_last,
            silu,
            dtype,
        )
        })
    };
    launched(launch, out, x)
}

/// Layer norm over the last axis of `[n, L, C]` with `gamma`, `beta` (`[C]`), into a contiguous
/// tensor. `Err` hands `x` back with the reason ([`KernelResult`]).
pub fn layer_norm<R: CubeRuntime>(x: CubeTensor<R>, gamma: CubeTensor<R>, beta: CubeTensor<R>, eps: f64) -> KernelResult<R> {
    let (x, dtype) = with_dtype(x)?;
    let x = if x.strides[2] == 1 { x } else { burn_cubecl::kernel::into_contiguous(x) };
    let (gamma, beta) = (contiguous(gamma), contiguous(beta));
    let rows = x.shape.dims[0] * x.shape.dims[1];
    if rows == 0 || x.shape.dims[2] == 0 {
        return Ok(x);
    }
    let client = x.client.clone();
    let out = empty_like(&x, x.shape.clone());
    // Safety: as in `group_norm`.
    let launch = unsafe {
        layer_norm_rows::launch_unchecked(
            &client,
            cube_count(&x, rows),
            CubeDim::new_1d(UNITS),
            x.as_tensor_arg(1),
            gamma.as_tensor_arg(1),
            beta.as_tensor_arg(1),
            out.as_tensor_arg(1),
            ScalarArg::new(eps as f32),
            dtype,
        )
    };
    launched(launch, out, x)
}

/// Softmax over the last axis, into a contiguous tensor of the same dtype. `Err` hands `x`
/// back with the reason ([`KernelResult`]).
pub fn softmax_last<R: CubeRuntime>(x: CubeTensor<R>) -> KernelResult<R> {
    let (x, dtype) = with_dtype(x)?;
    let x = contiguous(x);
    let width = *x.shape.dims.last().expect("a tensor with axes");
    let rows = x.shape.num_elements() / width.max(1);
    if rows == 0 || width == 0 {
        return Ok(x);
    }
    let client = x.client.clone();
    let out = empty_like(&x, x.shape.clone());
    // A row shorter than a cube leaves units idle; 32 (one warp) serves the 77 text tokens.
    let units = (width.next_power_of_two() as u32).clamp(32, UNITS);
    // Safety: as in `group_norm`.
    let launch = unsafe {
        softmax_rows::launch_unchecked(
            &client,
            cube_count(&x, rows),
            CubeDim::new_1d(units),
            x.as_tensor_arg(1),
            out.as_tensor_arg(1),
            ScalarArg::new(rows as u32),
            dtype,
        )
    };
    launched(launch, out, x)
}

/// GEGLU on `[n, L, 2 * inner]`: the first half times the exact GELU of the second, into a
/// contiguous `[n, L, inner]`. `Err` hands `h` back with the reason ([`KernelResult`]).
pub fn geglu<R: CubeRuntime>(h: CubeTensor<R>) -> KernelResult<R> {
    let (h, dtype) = with_dtype(h)?;
    let h = contiguous(h);
    let mut dims = h.shape.dims.clone();
    *dims.last_mut().expect("a tensor with axes") /= 2;
    let client = h.client.clone();
    let out = empty_like(&h, Shape::from(dims));
    let elems = out.shape.num_elements();
    if elems == 0 {
        return Ok(out);
    }
    let dim = CubeDim::new_1d(UNITS);
    // Safety: as in `group_norm`.
    let launch = unsafe {
        geglu_elems::launch_unchecked(
            &client,
            cubecl::calculate_cube_count_elemwise(&client, elems, dim),
            dim,
            h.as_tensor_arg(1),
            out.as_tensor_arg(1),
            dtype,
        )
    };
    launched(launch, out, h)
}

/// The geometry of a square convolution for [`im2col_into`]: kernel size, stride, padding on
/// every side, and the output's height and width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Im2col {
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// Writes rows `row0..row0 + out.shape[0]` of the im2col matrix of `x` (`[N, C, H, W]`, any
/// strides) into `out`, a contiguous `[rows, k * k * C]` tensor of `x`'s dtype: row
/// `(n, oy, ox)`, columns ordered `(ky, kx, c)` ([`im2col_rows`]). A convolution is then one GEMM
/// of these rows with the channels-last weight `[O, k * k * C]`, transposed; the rows can be
/// written a chunk at a time to bound the scratch memory. `Err` says why it did not run.
pub fn im2col_into<R: CubeRuntime>(x: &CubeTensor<R>, out: &CubeTensor<R>, geometry: Im2col, row0: usize) -> Result<(), String> {
    let dtype: StorageType = match x.dtype {
        DType::F32 | DType::F16 | DType::BF16 => x.dtype.into(),
        d => return Err(format!("dtype {d:?}")),
    };
    let [n, c, _, _] = <[usize; 4]>::try_from(x.shape.dims.as_slice()).map_err(|_| format!("input of shape {:?}", x.shape.dims))?;
    let Im2col { k, stride, padding, out_h, out_w } = geometry;
    let rows = out.shape.dims[0];
    if out.dtype != x.dtype || out.shape.dims != [rows, k * k * c] || !out.is_contiguous() || row0 + rows > n * out_h * out_w {
        return Err(format!("im2col rows {row0}..{} of {:?} into {:?} {:?}", row0 + rows, x.shape.dims, out.shape.dims, out.dtype));
    }
    if out.shape.num_elements() == 0 {
        return Ok(());
    }
    let client = x.client.clone();
    // One unit per channel up to a cube of UNITS; at least a warp.
    let dim = CubeDim::new_1d((c.next_power_of_two() as u32).clamp(32, UNITS));
    // Safety: cubes past `out`'s rows return first; every input index is inside `x` (checked
    // against its shape), every output index inside `out`.
    unsafe {
        im2col_rows::launch_unchecked(
            &client,
            cube_count(out, rows),
            dim,
            x.as_tensor_arg(1),
            out.as_tensor_arg(1),
            ScalarArg::new(row0 as u32),
            ScalarArg::new(out_h as u32),
            ScalarArg::new(out_w as u32),
            ScalarArg::new(stride as u32),
            ScalarArg::new(padding as u32),
            k,
            dtype,
        )
    }
    .map_err(|e| format!("{e:?}"))
}
