//! ddrep's own cubecl kernels for the parts of SD1.5 that burn runs as chains of small ops:
//! group norm (with its SiLU), layer norm, the attention softmax and GEGLU (with its
//! projection's bias); for the cuBLAS convolutions (`crate::cublas`), im2col and the adds on
//! their channels-last outputs (bias, time embedding, residuals), which burn's element-wise
//! kernels read one element at a time; and a layer's bias added with its residual in one
//! pass (a launch fewer each). Generic over the cubecl runtime (burn-cuda's on the
//! GPU; `tools/gpu/kernels-check` runs them on wgpu when a Vulkan driver is present).
//!
//! Why: on the H200 (2026-11-26) an f16 UNet eval at batch 2 launched about 3100 kernels, some
//! 2400 of them element-wise ops, casts, copies and reductions of these layers (a group norm
//! alone was ~15: a cast to f32, staged means, subtract, square, add, sqrt, divide, a cast
//! back, the affine and the SiLU), and the card sat at 28-59 % SM while ddrep took 0.086 s
//! against diffusers' 0.024 s: the host could not launch them fast enough. Each kernel here
//! is one or two launches, reads its input with the strides it has (no copies of the NHWC conv
//! outputs), and keeps statistics and exponentials in f32 as PyTorch's kernels do.
//!
//! Layer norm, softmax, GEGLU and im2col read and write lines (vectors of up to 16 bytes:
//! 8 halves) where the layout allows, and the two row kernels keep their row in shared memory
//! in f32, so that it is read from global memory once instead of once per pass: the softmax
//! over a 64x64 latent's self-attention scores (537 MB in f16 at batch 2) is bound by memory
//! traffic, and element-wide loads of 2 bytes leave most of it unused.

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
/// `stride(3)` (the launcher checks that they merge). In lines of `t.line_size()` elements
/// (`i` a multiple of it): channels of one pixel when channels-last, pixels of one channel
/// otherwise, contiguous either way (the launcher picks the line so).
#[cube]
fn group_offset<F: Float>(t: &Tensor<Line<F>>, n: usize, c0: usize, cpg: usize, hw: usize, i: usize, #[comptime] channels_last: bool) -> usize {
    let mut c = i / hw;
    let mut s = i % hw;
    if channels_last {
        c = i % cpg;
        s = i / cpg;
    }
    (n * t.stride(0) + (c0 + c) * t.stride(1) + s * t.stride(3)) / t.line_size()
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
    x: &Tensor<Line<F>>,
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
    let line = x.line_size();
    let step = CUBE_DIM as usize * line;
    let mut sum = f32::new(0.0);
    let mut i = start + UNIT_POS as usize * line;
    while i < end {
        let v = x[group_offset(x, n, c0, cpg, hw, i, channels_last)];
        #[unroll]
        for k in 0..line {
            sum += f32::cast_from(v[k]);
        }
        i += step;
    }
    let mean = cube_sum(sum, &mut shared) / len;
    let mut m2 = f32::new(0.0);
    let mut i = start + UNIT_POS as usize * line;
    while i < end {
        let v = x[group_offset(x, n, c0, cpg, hw, i, channels_last)];
        #[unroll]
        for k in 0..line {
            let d = f32::cast_from(v[k]) - mean;
            m2 += d * d;
        }
        i += step;
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
    x: &Tensor<Line<F>>,
    stats: &Tensor<f32>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    out: &mut Tensor<Line<F>>,
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
    let line = x.line_size();
    let mut i = start + UNIT_POS as usize * line;
    while i < end {
        let v = x[group_offset(x, n, c0, cpg, hw, i, channels_last)];
        let mut o = Line::empty(line);
        #[unroll]
        for k in 0..line {
            // A line is `line` channels of one pixel (channels-last) or pixels of one channel.
            let mut c = c0 + i / hw;
            if channels_last {
                c = c0 + i % cpg + k;
            }
            let mut y = (f32::cast_from(v[k]) - mean) * rstd * f32::cast_from(gamma[c]) + f32::cast_from(beta[c]);
            if silu {
                y = y / (f32::new(1.0) + f32::exp(-y));
            }
            o[k] = F::cast_from(y);
        }
        out[group_offset(out, n, c0, cpg, hw, i, channels_last)] = o;
        i += CUBE_DIM as usize * line;
    }
}

/// Line `j` of the row that starts at line `base` of `x`, in f32, read from global memory; with
/// `cached` also kept in the row cache `row` (element `k` at `k * lines + j`, so each unit
/// touches only its own slots and neighbouring units neighbouring banks).
#[cube]
fn load_line<F: Float>(x: &Tensor<Line<F>>, row: &mut SharedMemory<f32>, base: usize, j: usize, lines: usize, #[comptime] cached: bool) -> Line<f32> {
    let v = Line::<f32>::cast_from(x[base + j]);
    if cached {
        #[unroll]
        for k in 0..x.line_size() {
            row[k * lines + j] = v[k];
        }
    }
    v
}

/// Line `j` of the row again, in f32: from the row cache with `cached` (as the unit last left
/// it), else from global memory.
#[cube]
fn reload_line<F: Float>(x: &Tensor<Line<F>>, row: &SharedMemory<f32>, base: usize, j: usize, lines: usize, #[comptime] cached: bool) -> Line<f32> {
    let line = x.line_size();
    let mut v = Line::empty(line);
    if cached {
        #[unroll]
        for k in 0..line {
            v[k] = row[k * lines + j];
        }
    } else {
        v = Line::<f32>::cast_from(x[base + j]);
    }
    v
}

/// Layer norm over the last axis of `[n, L, C]` (last axis contiguous), one cube per row read
/// in lines of `x.line_size()` elements, two-pass statistics in f32, into a contiguous `out`.
/// With `cached` the row is read from global memory once and kept in shared memory as f32
/// (`slots >= C`; [`load_line`]); without (rows too long for it), once per pass.
#[cube(launch_unchecked)]
fn layer_norm_rows<F: Float>(
    x: &Tensor<Line<F>>,
    gamma: &Tensor<Line<F>>,
    beta: &Tensor<Line<F>>,
    out: &mut Tensor<Line<F>>,
    eps: f32,
    #[comptime] slots: usize,
    #[comptime] cached: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (len, width) = (x.shape(1), x.shape(2));
    if CUBE_POS >= x.shape(0) * len {
        terminate!();
    }
    let line = x.line_size();
    let lines = width / line;
    let mut shared = SharedMemory::<f32>::new(UNITS as usize);
    let mut row = SharedMemory::<f32>::new(slots);
    // The launcher picks a line size that divides both strides.
    let base = ((CUBE_POS / len) * x.stride(0) + (CUBE_POS % len) * x.stride(1)) / line;
    let mut sum = f32::new(0.0);
    let mut j = UNIT_POS as usize;
    while j < lines {
        let v = load_line(x, &mut row, base, j, lines, cached);
        #[unroll]
        for k in 0..line {
            sum += v[k];
        }
        j += CUBE_DIM as usize;
    }
    let mean = cube_sum(sum, &mut shared) / f32::cast_from(width);
    let mut m2 = f32::new(0.0);
    let mut j = UNIT_POS as usize;
    while j < lines {
        let v = reload_line(x, &row, base, j, lines, cached);
        #[unroll]
        for k in 0..line {
            let d = v[k] - mean;
            m2 += d * d;
        }
        j += CUBE_DIM as usize;
    }
    let rstd = f32::new(1.0) / f32::sqrt(cube_sum(m2, &mut shared) / f32::cast_from(width) + eps);
    let mut j = UNIT_POS as usize;
    while j < lines {
        let v = reload_line(x, &row, base, j, lines, cached);
        let (g, b) = (gamma[j], beta[j]);
        let mut o = Line::empty(line);
        #[unroll]
        for k in 0..line {
            o[k] = F::cast_from((v[k] - mean) * rstd * f32::cast_from(g[k]) + f32::cast_from(b[k]));
        }
        out[CUBE_POS * lines + j] = o;
        j += CUBE_DIM as usize;
    }
}

/// Softmax over the last axis of a contiguous `[rows, L]`, one cube per row, read in lines of
/// `x.line_size()` elements: the max, the sum of `exp(x - max)` in f32, and
/// `exp(x - max) / sum` rounded once to `F`. With `cached` the row is read from global memory
/// once and kept in shared memory as f32 (`slots >= L`; [`load_line`]), where the second pass
/// leaves `exp(x - max)`; without (rows too long for it), it is read once per pass.
#[cube(launch_unchecked)]
fn softmax_rows<F: Float>(
    x: &Tensor<Line<F>>,
    out: &mut Tensor<Line<F>>,
    rows: u32,
    #[comptime] slots: usize,
    #[comptime] cached: bool,
    #[define(F)] _dtype: StorageType,
) {
    if CUBE_POS >= rows as usize {
        terminate!();
    }
    let line = x.line_size();
    let mut shared = SharedMemory::<f32>::new(UNITS as usize);
    let mut row = SharedMemory::<f32>::new(slots);
    let lines = x.shape(x.rank() - 1) / line;
    let base = CUBE_POS * lines;
    let mut max = f32::new(-3.0e38);
    let mut j = UNIT_POS as usize;
    while j < lines {
        let v = load_line(x, &mut row, base, j, lines, cached);
        #[unroll]
        for k in 0..line {
            max = select(v[k] > max, v[k], max);
        }
        j += CUBE_DIM as usize;
    }
    let max = cube_max(max, &mut shared);
    let mut sum = f32::new(0.0);
    let mut j = UNIT_POS as usize;
    while j < lines {
        let v = reload_line(x, &row, base, j, lines, cached);
        #[unroll]
        for k in 0..line {
            let e = f32::exp(v[k] - max);
            if cached {
                row[k * lines + j] = e;
            }
            sum += e;
        }
        j += CUBE_DIM as usize;
    }
    let scale = f32::new(1.0) / cube_sum(sum, &mut shared);
    let mut j = UNIT_POS as usize;
    while j < lines {
        let v = reload_line(x, &row, base, j, lines, cached);
        let mut o = Line::empty(line);
        #[unroll]
        for k in 0..line {
            // The cache holds exp(x - max) by now; global memory still x.
            let mut e = v[k];
            if !cached {
                e = f32::exp(e - max);
            }
            o[k] = F::cast_from(e * scale);
        }
        out[base + j] = o;
        j += CUBE_DIM as usize;
    }
}

/// GEGLU on a contiguous `[rows, 2 * inner]`: `value * gelu(gate)` with the first half the
/// value and the second the gate, exact (erf) GELU in f32, into a contiguous `[rows, inner]`;
/// one line of `out.line_size()` outputs per unit. With `with_bias`, `bias` (`[2 * inner]`,
/// the projection's bias) is added to `h` first, rounded as a separate add would round it;
/// without, `bias` is not read.
#[cube(launch_unchecked)]
fn geglu_elems<F: Float>(h: &Tensor<Line<F>>, bias: &Tensor<Line<F>>, out: &mut Tensor<Line<F>>, #[comptime] with_bias: bool, #[define(F)] _dtype: StorageType) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let line = out.line_size();
    let inner = out.shape(out.rank() - 1) / line;
    let row = ABSOLUTE_POS / inner;
    let j = ABSOLUTE_POS % inner;
    let mut value = h[row * 2 * inner + j];
    let mut gate = h[row * 2 * inner + inner + j];
    if with_bias {
        value += bias[j];
        gate += bias[inner + j];
    }
    let mut o = Line::empty(line);
    #[unroll]
    for k in 0..line {
        let g = f32::cast_from(gate[k]);
        let gelu = f32::new(0.5) * g * (f32::new(1.0) + Erf::erf(g * f32::new(std::f32::consts::FRAC_1_SQRT_2)));
        o[k] = F::cast_from(f32::cast_from(value[k]) * gelu);
    }
    out[ABSOLUTE_POS] = o;
}

/// `out = a + b` over dense buffers in memory order, one line per unit: element `i` of `a`
/// (and `out`, which has `a`'s layout) adds element `(i / period) * inner + i % inner` of `b`'s
/// buffer, so that `b` may be `a`'s own layout (`inner = period =` all of it), or a per-channel
/// vector repeated over a channels-last tensor's pixels (`inner` = channels; `period` = one
/// sample's elements for a vector per sample, or all of them for one vector). With
/// `with_residual`, `r` (laid out as `a`) is added after, rounded as a second add would round
/// it: `(a + b) + r`, a layer's bias and its residual in one pass; without, `r` is not read.
/// In lines: the launcher divides `inner` and `period` by the line, which divides both.
#[cube(launch_unchecked)]
fn add_repeating_lines<F: Float>(
    a: &Tensor<Line<F>>,
    b: &Tensor<Line<F>>,
    r: &Tensor<Line<F>>,
    out: &mut Tensor<Line<F>>,
    inner: u32,
    period: u32,
    #[comptime] with_residual: bool,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let (inner, period) = (inner as usize, period as usize);
    let sum = a[i] + b[(i / period) * inner + i % inner];
    if with_residual {
        out[i] = sum + r[i];
    } else {
        out[i] = sum;
    }
}

/// Rows `row0..row0 + out.shape(0)` of the im2col matrix of `x` (`[N, C, H, W]`, any strides)
/// for a square `k`x`k` convolution: row `(n, oy, ox)` of an `out_h` x `out_w` output holds
/// the `k * k * C` inputs under the kernel at that output pixel, ordered `(ky, kx, c)` (channel
/// fastest, the order of a channels-last weight), zero where the kernel lies over the padding.
/// One cube per row: the row's position is worked out once, then the taps (unrolled) and the
/// channels, one line of `x.line_size()` channels per unit (lines only where the input is
/// channels-last: the launcher picks 1 otherwise), so that neighbouring units read
/// neighbouring memory of a channels-last input and write neighbouring columns, with no
/// division per element. `out` is a contiguous `[rows, k * k * C]` in the same lines.
#[cube(launch_unchecked)]
fn im2col_rows<F: Float>(
    x: &Tensor<Line<F>>,
    out: &mut Tensor<Line<F>>,
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
    let line = x.line_size();
    let channel_lines = x.shape(1) / line;
    let row = CUBE_POS + row0 as usize;
    let (ow, oh) = (out_w as usize, out_h as usize);
    let ox = row % ow;
    let oy = (row / ow) % oh;
    let n = row / (ow * oh);
    // Positions in the padded input; the border is `padding` wide on each side.
    let pad = padding as usize;
    let (y0, x0) = (oy * stride as usize, ox * stride as usize);
    let (h, w) = (x.shape(2) + pad, x.shape(3) + pad);
    let out_row = CUBE_POS * (out.shape(1) / line);
    #[unroll]
    for tap in 0..k * k {
        let (py, px) = (y0 + tap / k, x0 + tap % k);
        let inside = py >= pad && px >= pad && py < h && px < w;
        // Read only where `inside`; elsewhere the (wrapped) offset is never used. In lines:
        // with lines, the channel stride is 1 and every other stride a multiple of the line.
        let src = n * x.stride(0) + (py - pad) * x.stride(2) + (px - pad) * x.stride(3);
        let dst = out_row + tap * channel_lines;
        let mut c = UNIT_POS as usize;
        while c < channel_lines {
            let mut v = Line::empty(line).fill(F::new(0.0));
            if inside {
                v = x[(src + c * line * x.stride(1)) / line];
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

/// The widest line (elements per load, up to the runtime's widest load) in which `t` can be
/// read along `axis`: 1 unless that axis is contiguous and the line divides its length, every
/// other stride (of an axis longer than 1) and the view's offset into its buffer, so that
/// every line the kernels form is a whole, aligned load. Public for `tools/gpu/kernels-check`,
/// which says which lines its cases ran.
pub fn line_along<R: CubeRuntime>(t: &CubeTensor<R>, axis: usize) -> usize {
    if t.strides[axis] != 1 {
        return 1;
    }
    let dtype: StorageType = t.dtype.into();
    let dims = &t.shape.dims;
    t.client
        .io_optimized_line_sizes(&dtype)
        .filter(|&line| {
            dims[axis].is_multiple_of(line)
                && offset_aligned(t, line)
                && t.strides.iter().zip(dims).enumerate().all(|(i, (&s, &d))| i == axis || d == 1 || s.is_multiple_of(line))
        })
        .max()
        .unwrap_or(1)
}

/// Whether `t`'s view starts on a whole line of `line` elements in its buffer.
fn offset_aligned<R: CubeRuntime>(t: &CubeTensor<R>, line: usize) -> bool {
    (t.handle.offset_start.unwrap_or(0) as usize).is_multiple_of(line * t.dtype.size())
}

/// Shared memory a row kernel may take for its row cache. Bounded well below the cards' limit
/// (48 KiB of static shared memory per cube on CUDA) so several cubes still share an SM.
const ROW_CACHE_BYTES: usize = 32 << 10;

/// The comptime row cache of a row kernel for rows of `width` elements: `(slots, cached)`,
/// f32 slots rounded up to a power of two (fewer kernel variants), or one unused slot when the
/// row does not fit beside the reduction buffer. Public as [`line_along`].
pub fn row_cache<R: CubeRuntime>(t: &CubeTensor<R>, width: usize) -> (usize, bool) {
    let slots = width.next_power_of_two();
    let limit = ROW_CACHE_BYTES.min(t.client.properties().hardware.max_shared_memory_size);
    if (slots + UNITS as usize) * 4 <= limit { (slots, true) } else { (1, false) }
}

/// Units per cube for a row of `lines` lines: one line each up to a cube of [`UNITS`], at
/// least a warp, a power of two ([`cube_sum`]).
fn row_units(lines: usize) -> CubeDim {
    CubeDim::new_1d((lines.next_power_of_two() as u32).clamp(32, UNITS))
}

/// Whether `x` (`[N, C, H, W]`) is an NHWC tensor viewed as NCHW (as the channels-last conv
/// outputs are).
fn is_channels_last<R: CubeRuntime>(x: &CubeTensor<R>) -> bool {
    let ([_, c, h, w], s) = (<[usize; 4]>::try_from(x.shape.dims.as_slice()).expect("a 4-d tensor"), &x.strides);
    s[1] == 1 && s[3] == c && s[2] == w * c && s[0] == h * w * c
}

/// The line in which [`group_norm`] reads `x` (channels-last, or contiguous NCHW) in `groups`
/// groups: along the contiguous axis (channels, or an NCHW tensor's pixels), dividing the
/// group's channels (channels-last) or its pixels (NCHW) too, so that no line straddles two
/// groups or two channels; chunks hold whole lines ([`GN_CHUNK`] is a power of two). Public as
/// [`line_along`].
pub fn group_norm_line<R: CubeRuntime>(x: &CubeTensor<R>, groups: usize) -> usize {
    let [_, c, h, w] = <[usize; 4]>::try_from(x.shape.dims.as_slice()).expect("a 4-d tensor");
    let channels_last = is_channels_last(x);
    let mut line = if channels_last { line_along(x, 1) } else { line_along(x, 3) };
    while !(if channels_last { c / groups } else { h * w }).is_multiple_of(line) {
        line /= 2;
    }
    line
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
    let channels_last = is_channels_last(&x);
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
    let line = group_norm_line(&x, groups);
    // Safety: every index the kernels form is inside its tensor (cubes past the work return
    // first; element and chunk loops stop at the group's and chunk's ends, which are whole
    // lines).
    let launch = unsafe {
        group_norm_stats::launch_unchecked(
            &client,
            cube_count(&x, cubes),
            dim,
            x.as_tensor_arg(line),
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
            x.as_tensor_arg(line),
            stats.as_tensor_arg(1),
            gamma.as_tensor_arg(1),
            beta.as_tensor_arg(1),
            out.as_tensor_arg(line),
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
    let (rows, width) = (x.shape.dims[0] * x.shape.dims[1], x.shape.dims[2]);
    if rows == 0 || width == 0 {
        return Ok(x);
    }
    let client = x.client.clone();
    let out = empty_like(&x, x.shape.clone());
    let line = line_along(&x, 2);
    let (slots, cached) = row_cache(&x, width);
    // Safety: as in `group_norm`; the line divides the row length and the row strides.
    let launch = unsafe {
        layer_norm_rows::launch_unchecked(
            &client,
            cube_count(&x, rows),
            row_units(width / line),
            x.as_tensor_arg(line),
            gamma.as_tensor_arg(line),
            beta.as_tensor_arg(line),
            out.as_tensor_arg(line),
            ScalarArg::new(eps as f32),
            slots,
            cached,
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
    let axis = x.shape.num_dims() - 1;
    let width = x.shape.dims[axis];
    let rows = x.shape.num_elements() / width.max(1);
    if rows == 0 || width == 0 {
        return Ok(x);
    }
    let client = x.client.clone();
    let out = empty_like(&x, x.shape.clone());
    let line = line_along(&x, axis);
    let (slots, cached) = row_cache(&x, width);
    // Safety: as in `group_norm`; the line divides the row length.
    let launch = unsafe {
        softmax_rows::launch_unchecked(
            &client,
            cube_count(&x, rows),
            // A row shorter than a cube leaves units idle; a warp serves the 77 text tokens.
            row_units(width / line),
            x.as_tensor_arg(line),
            out.as_tensor_arg(line),
            ScalarArg::new(rows as u32),
            slots,
            cached,
            dtype,
        )
    };
    launched(launch, out, x)
}

/// Whether `t`'s strides are a permutation of a contiguous layout's (no gaps, no overlaps; axes
/// of length 1 aside), so that its buffer holds exactly its elements.
fn is_dense<R: CubeRuntime>(t: &CubeTensor<R>) -> bool {
    let mut axes: Vec<(usize, usize)> = t.strides.iter().copied().zip(t.shape.dims.iter().copied()).filter(|&(_, d)| d != 1).collect();
    axes.sort_unstable();
    let mut expected = 1;
    axes.into_iter().all(|(stride, dim)| {
        let ok = stride == expected;
        expected *= dim;
        ok
    })
}

/// `a + b` (then `+ r`, when given) for `a` dense ([`is_dense`]), `b` read as `inner`/`period`
/// say ([`add_repeating_lines`]) and `r` laid out as `a`, into a tensor with `a`'s layout.
/// `b`'s buffer must hold `(len / period) * inner` elements in that order (the callers below
/// check it).
fn add_repeating<R: CubeRuntime>(a: CubeTensor<R>, b: &CubeTensor<R>, r: Option<&CubeTensor<R>>, inner: usize, period: usize) -> KernelResult<R> {
    let (a, dtype) = with_dtype(a)?;
    let total = a.shape.num_elements();
    let r_alike = r.is_none_or(|r| r.dtype == a.dtype && r.shape.dims == a.shape.dims && r.strides == a.strides);
    if b.dtype != a.dtype || !is_dense(&a) || !r_alike || inner == 0 || period == 0 || total % period != 0 || b.shape.num_elements() != total / period * inner {
        let why = format!("{:?} {:?} + {:?} {:?}{}", a.shape.dims, a.dtype, b.shape.dims, b.dtype, r.map_or(String::new(), |r| format!(" + {:?} {:?} (strides {:?} against {:?})", r.shape.dims, r.dtype, r.strides, a.strides)));
        return Err(Box::new((a, why)));
    }
    let client = a.client.clone();
    let out = empty_like(&a, a.shape.clone());
    let out = CubeTensor::new(out.client, out.handle, out.shape, out.device, a.strides.clone(), out.dtype);
    let line = client
        .io_optimized_line_sizes(&dtype)
        .filter(|&l| inner.is_multiple_of(l) && period.is_multiple_of(l) && offset_aligned(&a, l) && offset_aligned(b, l) && r.is_none_or(|r| offset_aligned(r, l)))
        .max()
        .unwrap_or(1);
    let dim = CubeDim::new_1d(UNITS);
    // Safety: `a`, `r` and `out` hold `total` elements in their buffers (dense, one layout);
    // every index into `b` is below `(total / period) * inner`, its length. Without `r`, `a` is
    // bound in its place and not read.
    let launch = unsafe {
        add_repeating_lines::launch_unchecked(
            &client,
            cubecl::calculate_cube_count_elemwise(&client, total / line, dim),
            dim,
            a.as_tensor_arg(line),
            b.as_tensor_arg(line),
            r.unwrap_or(&a).as_tensor_arg(line),
            out.as_tensor_arg(line),
            ScalarArg::new((inner / line) as u32),
            ScalarArg::new((period / line) as u32),
            r.is_some(),
            dtype,
        )
    };
    launched(launch, out, a)
}

/// Whether [`add_same_layout`] takes `a + b`: one shape, the same strides, dense memory that is
/// not the contiguous layout (where burn's element-wise kernels read lines already).
pub fn adds_alike<R: CubeRuntime>(a: &CubeTensor<R>, b: &CubeTensor<R>) -> bool {
    a.shape.dims == b.shape.dims && a.strides == b.strides && a.dtype == b.dtype && is_dense(a) && !a.is_contiguous()
}

/// `a + b` for two tensors of one shape laid out alike in dense memory (both channels-last,
/// say, where burn's element-wise kernels read one element at a time: their last axis is not
/// contiguous), in lines over the buffers, into `a`'s layout. `Err` hands `a` back with the
/// reason ([`KernelResult`]).
pub fn add_same_layout<R: CubeRuntime>(a: CubeTensor<R>, b: &CubeTensor<R>) -> KernelResult<R> {
    if a.shape.dims != b.shape.dims || a.strides != b.strides {
        let why = format!("{:?} {:?} + {:?} {:?}", a.shape.dims, a.strides, b.shape.dims, b.strides);
        return Err(Box::new((a, why)));
    }
    let total = a.shape.num_elements();
    add_repeating(a, b, None, total, total)
}

/// Whether [`add_channels`] takes `x + v`: `x` a channels-last `[N, C, H, W]`, `v` a `[1, C]`
/// or `[N, C]` of its dtype.
pub fn adds_channels<R: CubeRuntime>(x: &CubeTensor<R>, v: &CubeTensor<R>) -> bool {
    match (x.shape.dims.as_slice(), v.shape.dims.as_slice()) {
        ([n, c, _, _], [vn, vc]) => vc == c && (vn == n || *vn == 1) && x.dtype == v.dtype && is_channels_last(x),
        _ => false,
    }
}

/// `x + v` for a channels-last `[N, C, H, W]` `x` (NHWC memory viewed as NCHW, as the cuBLAS
/// convs give) and a per-channel `v`, `[1, C]` (a bias) or `[N, C]` (one vector per sample: the
/// resnets' time embedding), in lines along the channels, into `x`'s layout. `Err` hands `x`
/// back with the reason ([`KernelResult`]).
pub fn add_channels<R: CubeRuntime>(x: CubeTensor<R>, v: CubeTensor<R>) -> KernelResult<R> {
    if !adds_channels(&x, &v) {
        let why = format!("{:?} (strides {:?}) + {:?}", x.shape.dims, x.strides, v.shape.dims);
        return Err(Box::new((x, why)));
    }
    let v = contiguous(v);
    let (total, [n, c]) = (x.shape.num_elements(), [v.shape.dims[0], v.shape.dims[1]]);
    // One vector per sample repeats every sample's elements; a single one over all of them.
    let period = if n > 1 { total / n } else { total };
    add_repeating(x, &v, None, c, period)
}

/// Whether [`add_channels_residual`] takes `(x + v) + r`: [`adds_channels`] with a `[1, C]`
/// `v`, and `r` of `x`'s shape, strides and dtype.
pub fn adds_channels_residual<R: CubeRuntime>(x: &CubeTensor<R>, v: &CubeTensor<R>, r: &CubeTensor<R>) -> bool {
    adds_channels(x, v) && v.shape.dims[0] == 1 && r.shape.dims == x.shape.dims && r.strides == x.strides && r.dtype == x.dtype
}

/// `(x + v) + r` in one pass: a channels-last conv output `x` (`[N, C, H, W]`), its bias `v`
/// (`[1, C]`) and a residual `r` laid out as `x`, rounded as the two adds would be (the
/// resnets' `skip + conv2(h)` and the transformers' `x + proj_out(s)`, the bias taken out of
/// the conv: one launch where the cuBLAS convs took two). `Err` hands `x` back with the reason
/// ([`KernelResult`]).
pub fn add_channels_residual<R: CubeRuntime>(x: CubeTensor<R>, v: CubeTensor<R>, r: &CubeTensor<R>) -> KernelResult<R> {
    if !adds_channels_residual(&x, &v, r) {
        let why = format!("{:?} (strides {:?}) + {:?} + {:?} (strides {:?})", x.shape.dims, x.strides, v.shape.dims, r.shape.dims, r.strides);
        return Err(Box::new((x, why)));
    }
    let v = contiguous(v);
    let (total, c) = (x.shape.num_elements(), v.shape.dims[1]);
    add_repeating(x, &v, Some(r), c, total)
}

/// Whether [`add_bias_residual`] takes `(y + bias) + r`: `y` contiguous with `C` on its last
/// axis, `bias` a `[C]`, `r` of `y`'s shape, strides and dtype.
pub fn adds_bias_residual<R: CubeRuntime>(y: &CubeTensor<R>, bias: &CubeTensor<R>, r: &CubeTensor<R>) -> bool {
    let c = y.shape.dims.last().copied().unwrap_or(0);
    y.is_contiguous() && bias.shape.dims == [c] && bias.dtype == y.dtype && r.shape.dims == y.shape.dims && r.strides == y.strides && r.dtype == y.dtype
}

/// `(y + bias) + r` in one pass: a linear layer's output `y` (`[.., C]`, contiguous) with its
/// bias `[C]` and a residual `r` laid out as `y`, rounded as the two adds would be (the
/// transformer blocks' `x + to_out(a)` and `x + ff_out(h)`: one launch instead of two). `Err`
/// hands `y` back with the reason ([`KernelResult`]).
pub fn add_bias_residual<R: CubeRuntime>(y: CubeTensor<R>, bias: &CubeTensor<R>, r: &CubeTensor<R>) -> KernelResult<R> {
    if !adds_bias_residual(&y, bias, r) {
        let why = format!("{:?} (strides {:?}) + {:?} + {:?} (strides {:?})", y.shape.dims, y.strides, bias.shape.dims, r.shape.dims, r.strides);
        return Err(Box::new((y, why)));
    }
    let bias = contiguous(bias.clone());
    let (total, c) = (y.shape.num_elements(), bias.shape.dims[0]);
    add_repeating(y, &bias, Some(r), c, total)
}

/// GEGLU on `[n, L, 2 * inner]`: the first half times the exact GELU of the second, into a
/// contiguous `[n, L, inner]`; with `bias` (`[2 * inner]`, the projection's), `h + bias` in
/// its place (one launch instead of two). `Err` hands `h` back with the reason
/// ([`KernelResult`]).
pub fn geglu<R: CubeRuntime>(h: CubeTensor<R>, bias: Option<&CubeTensor<R>>) -> KernelResult<R> {
    let (h, dtype) = with_dtype(h)?;
    let h = contiguous(h);
    let two_inner = h.shape.dims.last().copied().unwrap_or(0);
    if let Some(b) = bias.filter(|b| b.shape.dims != [two_inner] || b.dtype != h.dtype) {
        let why = format!("GEGLU of {:?} with a bias of {:?} {:?}", h.shape.dims, b.shape.dims, b.dtype);
        return Err(Box::new((h, why)));
    }
    let bias = bias.map(|b| contiguous(b.clone()));
    let mut dims = h.shape.dims.clone();
    *dims.last_mut().expect("a tensor with axes") /= 2;
    let client = h.client.clone();
    let out = empty_like(&h, Shape::from(dims));
    let elems = out.shape.num_elements();
    if elems == 0 {
        return Ok(out);
    }
    let dim = CubeDim::new_1d(UNITS);
    // A line that divides the output row divides the input's (twice as long) and the bias too.
    let line = line_along(&out, out.shape.num_dims() - 1);
    let line = if bias.as_ref().is_none_or(|b| offset_aligned(b, line)) { line } else { 1 };
    // Safety: as in `group_norm`; the bias holds `2 * inner` elements, as the kernel reads.
    // Without a bias, `h` is bound in its place and not read.
    let launch = unsafe {
        geglu_elems::launch_unchecked(
            &client,
            cubecl::calculate_cube_count_elemwise(&client, elems / line, dim),
            dim,
            h.as_tensor_arg(line),
            bias.as_ref().unwrap_or(&h).as_tensor_arg(line),
            out.as_tensor_arg(line),
            bias.is_some(),
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
    // Lines of channels where the input is channels-last (1 otherwise); they then divide the
    // output's rows too (`k * k * C` columns).
    let line = line_along(x, 1);
    // One unit per line of channels (as a row kernel's per line of its row).
    let dim = row_units(c / line);
    // Safety: cubes past `out`'s rows return first; every input index is inside `x` (checked
    // against its shape), every output index inside `out`.
    unsafe {
        im2col_rows::launch_unchecked(
            &client,
            cube_count(out, rows),
            dim,
            x.as_tensor_arg(line),
            out.as_tensor_arg(line),
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
