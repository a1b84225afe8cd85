//! Runs ddrep's own cubecl kernels (`ddrep::gpu_kernels`: group norm with and without SiLU,
//! NCHW and channels-last; layer norm; softmax; GEGLU with and without its bias; im2col; the
//! adds) on burn's wgpu backend and compares each
//! output with its f64 definition, computed from the inputs as rounded to the kernel's dtype.
//! Prints one line per case and exits 1 if any is outside its tolerance.
//!
//!     sudo apt-get install mesa-vulkan-drivers   # lavapipe: Vulkan on the CPU
//!     cd tools/gpu/kernels-check && cargo run --release            # f32
//!     cargo run --release -- f16                                     # needs shader-f16
//!
//! lavapipe (Mesa 22.3) has no f16 shaders, so there only f32 runs; f16 and bf16 are checked on
//! CUDA by `ddrep parity` (tools/gpu/check.sh). `.ci/run` runs this (f32, on lavapipe) after
//! the test suite.

use burn::tensor::{DType, FloatDType, Tensor, TensorData, TensorPrimitive};
use burn_cubecl::tensor::CubeTensor;

type R = burn_wgpu::WgpuRuntime;
type B = burn_cubecl::CubeBackend<R, f32, i32, u32>;

struct Check {
    dtype: DType,
    tol: f64,
    dev: burn_wgpu::WgpuDevice,
    failures: usize,
}

impl Check {
    /// `v` as a tensor of `dims` in the checked dtype, as a cube tensor.
    fn input<const D: usize>(&self, v: &[f32], dims: [usize; D]) -> CubeTensor<R> {
        let t = Tensor::<B, D>::from_data(TensorData::new(v.to_vec(), dims), &self.dev);
        let t = if self.dtype == DType::F16 { t.cast(FloatDType::F16) } else { t };
        t.into_primitive().tensor()
    }

    /// A kernel output as f32 values in its logical (row-major) order.
    fn output<const D: usize>(&self, c: CubeTensor<R>) -> Vec<f32> {
        let t = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(c));
        t.cast(FloatDType::F32).into_data().convert::<f32>().into_vec().unwrap()
    }

    /// `v` rounded to the checked dtype, in f64.
    fn exact(&self, v: f32) -> f64 {
        if self.dtype == DType::F16 { half::f16::from_f32(v).to_f64() } else { v as f64 }
    }

    /// Reports the largest error of `got` against `want`, relative to `max(|want|, floor)`.
    fn report(&mut self, what: String, got: &[f32], want: &[f64], floor: f64) {
        assert_eq!(got.len(), want.len(), "{what}: output length");
        let err = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs() / w.abs().max(floor)).fold(0.0, f64::max);
        let ok = err <= self.tol;
        self.failures += usize::from(!ok);
        println!("{what} {:?}: max rel err {err:.2e} (tol {:.0e}) {}", self.dtype, self.tol, if ok { "ok" } else { "FAIL" });
    }
}

/// Deterministic inputs with a spread of values and a slow drift (uneven group means).
fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 + seed * 11) % 101) as f32 / 25.0 - 2.0 + ((i / 97) % 5) as f32 * 0.3).collect()
}

fn group_norm(ck: &mut Check, [n, c, h, w]: [usize; 4], groups: usize, channels_last: bool, silu: bool) {
    let (xv, gv, bv) = (data(n * c * h * w, 1), data(c, 2), data(c, 3));
    let mut x = ck.input(&xv, [n, c, h, w]);
    if channels_last {
        // The same values, laid out NHWC and viewed as NCHW (as the implicit-GEMM convs give them).
        let t = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(x)).permute([0, 2, 3, 1]);
        let t = burn_cubecl::kernel::into_contiguous(t.into_primitive().tensor());
        x = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t)).permute([0, 3, 1, 2]).into_primitive().tensor();
    }
    let strides = x.strides.clone();
    let line = ddrep::gpu_kernels::group_norm_line(&x, groups);
    let y = ddrep::gpu_kernels::group_norm(x, ck.input(&gv, [c]), ck.input(&bv, [c]), groups, 1e-5, silu).ok().expect("a float dtype");
    assert_eq!(y.strides, strides, "the output keeps the input's layout");
    let got = ck.output::<4>(y);
    let cpg = c / groups;
    let mut want = vec![0.0; xv.len()];
    for ni in 0..n {
        for g in 0..groups {
            let idx: Vec<usize> = (0..cpg).flat_map(|k| (0..h * w).map(move |s| (ni * c + g * cpg + k) * h * w + s)).collect();
            let mean = idx.iter().map(|&i| ck.exact(xv[i])).sum::<f64>() / idx.len() as f64;
            let var = idx.iter().map(|&i| (ck.exact(xv[i]) - mean).powi(2)).sum::<f64>() / idx.len() as f64;
            for &i in &idx {
                let ch = (i / (h * w)) % c;
                let y = (ck.exact(xv[i]) - mean) / (var + 1e-5).sqrt() * ck.exact(gv[ch]) + ck.exact(bv[ch]);
                want[i] = if silu { y / (1.0 + (-y).exp()) } else { y };
            }
        }
    }
    ck.report(format!("group_norm [{n},{c},{h},{w}] groups {groups} channels_last {channels_last} silu {silu} line {line}"), &got, &want, 1.0);
}

fn layer_norm(ck: &mut Check, [n, l, c]: [usize; 3]) {
    let (xv, gv, bv) = (data(n * l * c, 4), data(c, 5), data(c, 6));
    let x = ck.input(&xv, [n, l, c]);
    let path = row_path(&x, 2);
    let y = ddrep::gpu_kernels::layer_norm(x, ck.input(&gv, [c]), ck.input(&bv, [c]), 1e-5).ok().expect("a float dtype");
    let got = ck.output::<3>(y);
    let mut want = Vec::with_capacity(xv.len());
    for row in xv.chunks(c) {
        let xs: Vec<f64> = row.iter().map(|&v| ck.exact(v)).collect();
        let mean = xs.iter().sum::<f64>() / c as f64;
        let var = xs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / c as f64;
        want.extend(xs.iter().enumerate().map(|(j, a)| (a - mean) / (var + 1e-5).sqrt() * ck.exact(gv[j]) + ck.exact(bv[j])));
    }
    ck.report(format!("layer_norm [{n},{l},{c}] {path}"), &got, &want, 1.0);
}

fn softmax(ck: &mut Check, rows: usize, width: usize) {
    let xv: Vec<f32> = data(rows * width, 7).iter().map(|v| v * 3.0).collect();
    let x = ck.input(&xv, [1, rows, width]);
    let path = row_path(&x, 2);
    let got = ck.output::<3>(ddrep::gpu_kernels::softmax_last(x).ok().expect("a float dtype"));
    let mut want = Vec::with_capacity(xv.len());
    for row in xv.chunks(width) {
        let xs: Vec<f64> = row.iter().map(|&v| ck.exact(v)).collect();
        let max = xs.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = xs.iter().map(|a| (a - max).exp()).sum();
        want.extend(xs.iter().map(|a| (a - max).exp() / z));
    }
    // Relative to the probability itself down to 1e-3 (smaller ones are f16's subnormals).
    ck.report(format!("softmax [{rows},{width}] {path}"), &got, &want, 1e-3);
}

/// GEGLU, with the projection's bias added in the kernel or without one.
fn geglu(ck: &mut Check, rows: usize, inner: usize, with_bias: bool) {
    let (hv, bv) = (data(rows * 2 * inner, 8), data(2 * inner, 13));
    let h = ck.input(&hv, [1, rows, 2 * inner]);
    let line = ddrep::gpu_kernels::line_along(&ck.input(&vec![0.0; rows * inner], [1, rows, inner]), 2);
    let bias = with_bias.then(|| ck.input(&bv, [2 * inner]));
    let got = ck.output::<3>(ddrep::gpu_kernels::geglu(h, bias.as_ref()).ok().expect("a float dtype"));
    // The bias add rounds to the dtype as a separate add would.
    let biased = |x: f32, j: usize| if with_bias { ck.exact((ck.exact(x) + ck.exact(bv[j])) as f32) } else { ck.exact(x) };
    let mut want = Vec::with_capacity(rows * inner);
    for row in hv.chunks(2 * inner) {
        for j in 0..inner {
            let (value, gate) = (biased(row[j], j), biased(row[inner + j], inner + j));
            want.push(value * 0.5 * gate * (1.0 + erf(gate / 2f64.sqrt())));
        }
    }
    ck.report(format!("geglu [{rows},{inner}] bias {with_bias} line {line}"), &got, &want, 1.0);
}

/// `(y + bias) + r` for a linear layer's contiguous `[n, l, c]` output, its bias and a residual
/// laid out alike, against the two rounded adds; a residual laid out otherwise is burn's to add.
fn bias_residual(ck: &mut Check, [n, l, c]: [usize; 3]) {
    let (yv, bv, rv) = (data(n * l * c, 14), data(c, 15), data(n * l * c, 16));
    let (y, b, r) = (ck.input(&yv, [n, l, c]), ck.input(&bv, [c]), ck.input(&rv, [n, l, c]));
    assert!(ddrep::gpu_kernels::adds_bias_residual(&y, &b, &r), "a contiguous output takes its bias and residual");
    let line = ddrep::gpu_kernels::line_along(&y, 2);
    let got = ck.output::<3>(ddrep::gpu_kernels::add_bias_residual(y.clone(), &b, &r).ok().expect("a float dtype"));
    let want: Vec<f64> = (0..yv.len()).map(|i| ck.exact((ck.exact(yv[i]) + ck.exact(bv[i % c])) as f32) + ck.exact(rv[i])).collect();
    ck.report(format!("add bias and residual [{n},{l},{c}] line {line}"), &got, &want, 1.0);
    if l > 1 && c > 1 {
        let swapped = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(ck.input(&rv, [n, c, l]))).swap_dims(1, 2).into_primitive().tensor();
        assert!(!ddrep::gpu_kernels::adds_bias_residual(&y, &b, &swapped), "a residual laid out otherwise is refused");
    }
}

/// im2col of an NCHW or channels-last input, written in chunks of `chunk` rows into one
/// scratch buffer and read back after each chunk, against the definition (exact: a copy).
fn im2col(ck: &mut Check, [n, c, h, w]: [usize; 4], k: usize, stride: usize, padding: usize, channels_last: bool, chunk: usize) {
    let xv = data(n * c * h * w, 9);
    let mut x = ck.input(&xv, [n, c, h, w]);
    if channels_last {
        let t = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(x)).permute([0, 2, 3, 1]);
        let t = burn_cubecl::kernel::into_contiguous(t.into_primitive().tensor());
        x = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t)).permute([0, 3, 1, 2]).into_primitive().tensor();
    }
    let line = ddrep::gpu_kernels::line_along(&x, 1);
    let (oh, ow) = ((h + 2 * padding - k) / stride + 1, (w + 2 * padding - k) / stride + 1);
    let geometry = ddrep::gpu_kernels::Im2col { k, stride, padding, out_h: oh, out_w: ow };
    let (rows, cols) = (n * oh * ow, k * k * c);
    let mut got = Vec::with_capacity(rows * cols);
    for row0 in (0..rows).step_by(chunk) {
        let len = chunk.min(rows - row0);
        let out = ck.input(&vec![f32::NAN; len * cols], [len, cols]);
        ddrep::gpu_kernels::im2col_into(&x, &out, geometry, row0).expect("im2col launches");
        got.extend(ck.output::<2>(out));
    }
    let mut want = Vec::with_capacity(rows * cols);
    for ni in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..k {
                    for kx in 0..k {
                        for ci in 0..c {
                            let (py, px) = ((oy * stride + ky) as isize - padding as isize, (ox * stride + kx) as isize - padding as isize);
                            let inside = py >= 0 && px >= 0 && (py as usize) < h && (px as usize) < w;
                            want.push(if inside { ck.exact(xv[((ni * c + ci) * h + py as usize) * w + px as usize]) } else { 0.0 });
                        }
                    }
                }
            }
        }
    }
    ck.report(format!("im2col [{n},{c},{h},{w}] k {k} stride {stride} padding {padding} channels_last {channels_last} chunk {chunk} line {line}"), &got, &want, 1.0);
}

/// `[n, c, h, w]` values laid out NHWC and viewed as NCHW (as the cuBLAS convs give them).
fn channels_last(x: CubeTensor<R>) -> CubeTensor<R> {
    let t = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(x)).permute([0, 2, 3, 1]);
    let t = burn_cubecl::kernel::into_contiguous(t.into_primitive().tensor());
    Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t)).permute([0, 3, 1, 2]).into_primitive().tensor()
}

/// `a + b` of two channels-last tensors, and `a + v` per channel (`v` `[1, c]` or `[n, c]`),
/// against the sums of the rounded inputs (exact in f32 up to one rounding); the outputs keep
/// the channels-last layout.
fn adds(ck: &mut Check, [n, c, h, w]: [usize; 4]) {
    let (av, bv) = (data(n * c * h * w, 10), data(n * c * h * w, 11));
    let a = channels_last(ck.input(&av, [n, c, h, w]));
    let b = channels_last(ck.input(&bv, [n, c, h, w]));
    let strides = a.strides.clone();
    assert!(ddrep::gpu_kernels::adds_alike(&a, &b), "two channels-last tensors add alike");
    let y = ddrep::gpu_kernels::add_same_layout(a.clone(), &b).ok().expect("a float dtype");
    assert_eq!(y.strides, strides, "the sum keeps the layout");
    let want: Vec<f64> = av.iter().zip(&bv).map(|(&x, &y)| ck.exact(x) + ck.exact(y)).collect();
    let got = ck.output::<4>(y);
    ck.report(format!("add same layout [{n},{c},{h},{w}] channels-last"), &got, &want, 1.0);
    for rows in if n > 1 { vec![1, n] } else { vec![1] } {
        let vv = data(rows * c, 12);
        let v = ck.input(&vv, [rows, c]);
        assert!(ddrep::gpu_kernels::adds_channels(&a, &v), "a channels-last tensor takes a channel vector");
        let y = ddrep::gpu_kernels::add_channels(a.clone(), v).ok().expect("a float dtype");
        assert_eq!(y.strides, strides, "the sum keeps the layout");
        let got = ck.output::<4>(y);
        let want: Vec<f64> = (0..av.len())
            .map(|i| {
                let (ni, ci) = (i / (c * h * w), (i / (h * w)) % c);
                ck.exact(av[i]) + ck.exact(vv[if rows == 1 { ci } else { ni * c + ci }])
            })
            .collect();
        ck.report(format!("add per channel [{n},{c},{h},{w}] + [{rows},{c}]"), &got, &want, 1.0);
    }
    // A conv's bias and the residual in one pass: `(a + v) + b`, `v` `[1, c]`.
    let vv = data(c, 17);
    let v = ck.input(&vv, [1, c]);
    assert!(ddrep::gpu_kernels::adds_channels_residual(&a, &v, &b), "a channels-last conv output takes its bias and a residual laid out alike");
    let y = ddrep::gpu_kernels::add_channels_residual(a.clone(), v.clone(), &b).ok().expect("a float dtype");
    assert_eq!(y.strides, strides, "the sum keeps the layout");
    let got = ck.output::<4>(y);
    let want: Vec<f64> = (0..av.len()).map(|i| ck.exact((ck.exact(av[i]) + ck.exact(vv[(i / (h * w)) % c])) as f32) + ck.exact(bv[i])).collect();
    ck.report(format!("add per channel and residual [{n},{c},{h},{w}] + [1,{c}]"), &got, &want, 1.0);
    // NCHW tensors are burn's to add.
    let x = ck.input(&av, [n, c, h, w]);
    assert!(!ddrep::gpu_kernels::adds_channels_residual(&a, &v, &x), "a residual laid out otherwise is refused");
    assert!(!ddrep::gpu_kernels::adds_alike(&x, &x.clone()) && !ddrep::gpu_kernels::adds_channels(&x, &ck.input(&vec![0.0; c], [1, c])));
}

/// How a row kernel reads rows of `x` along `axis`: its line and whether the row is cached in
/// shared memory.
fn row_path(x: &CubeTensor<R>, axis: usize) -> String {
    let (line, (_, cached)) = (ddrep::gpu_kernels::line_along(x, axis), ddrep::gpu_kernels::row_cache(x, x.shape.dims[axis]));
    format!("line {line} {}", if cached { "cached" } else { "streamed" })
}

/// erf by Simpson's rule on `2 / sqrt(pi) exp(-t^2)` (4000 intervals: error far below f32's).
fn erf(x: f64) -> f64 {
    let n = 4000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let inner: f64 = (1..n).map(|i| f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 }).sum();
    (f(0.0) + f(x) + inner) * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

fn main() {
    let dtypes: Vec<String> = std::env::args().skip(1).collect();
    let dtypes = if dtypes.is_empty() { vec!["f32".to_string()] } else { dtypes };
    let mut failures = 0;
    for name in dtypes {
        let (dtype, tol) = match name.as_str() {
            "f32" => (DType::F32, 1e-5),
            "f16" => (DType::F16, 4e-3),
            other => {
                eprintln!("unknown dtype {other:?}: expected f32 or f16");
                std::process::exit(2);
            }
        };
        let mut ck = Check { dtype, tol, dev: Default::default(), failures: 0 };
        // Groups of one chunk and of several (the 40x60 groups: 2 x 2400 elements, 2 chunks;
        // 32 x 256 in 4), read in lines of 1, 2 and 4 (lines of channels within a group when
        // channels-last, of pixels otherwise; 10 channels per group as SD1.5's 320).
        for (dims, groups) in [([2, 8, 5, 7], 4), ([1, 64, 40, 60], 32), ([2, 40, 3, 3], 8), ([2, 320, 8, 8], 32), ([1, 256, 16, 16], 8)] {
            for channels_last in [false, true] {
                for silu in [false, true] {
                    group_norm(&mut ck, dims, groups, channels_last, silu);
                }
            }
        }
        // Rows read in lines of 4 (wgpu's widest), 2 and 1; rows kept in shared memory and
        // (the widest, past any row cache) read from global memory in each pass.
        for dims in [[2, 13, 320], [1, 5, 1280], [1, 3, 40], [2, 3, 42], [1, 2, 45], [1, 2, 20000]] {
            layer_norm(&mut ck, dims);
        }
        for (rows, width) in [(6, 77), (3, 300), (2, 4096), (1, 5), (4, 1024), (3, 1030), (2, 40000)] {
            softmax(&mut ck, rows, width);
        }
        for (rows, inner) in [(7, 10), (300, 1280), (5, 7), (3, 6)] {
            for with_bias in [false, true] {
                geglu(&mut ck, rows, inner, with_bias);
            }
        }
        // The transformer blocks' output projections: lines of 4, 2 and 1 along the channels.
        for dims in [[2, 13, 320], [1, 7, 6], [2, 3, 5], [1, 1, 1]] {
            bias_residual(&mut ck, dims);
        }
        // Per-channel adds in lines of 4, 2 and 1 channels (same-layout adds in lines of 4, 4
        // and 2 over the buffer); one sample and two.
        for dims in [[2, 8, 3, 5], [1, 6, 4, 4], [2, 5, 3, 3]] {
            adds(&mut ck, dims);
        }
        // SD1.5's convs: 3x3 "same" and the stride-2 downsampler; 1x1; chunks that split an
        // image and leave a short last chunk.
        for channels_last in [false, true] {
            im2col(&mut ck, [2, 5, 7, 6], 3, 1, 1, channels_last, 1000);
            im2col(&mut ck, [2, 5, 7, 6], 3, 1, 1, channels_last, 17);
            im2col(&mut ck, [1, 8, 9, 8], 3, 2, 1, channels_last, 1000);
            im2col(&mut ck, [2, 3, 4, 5], 1, 1, 0, channels_last, 7);
            // More channels than units in a cube (256): each unit takes several (lines of 4
            // channels-last: more lines than units too).
            im2col(&mut ck, [1, 300, 3, 4], 3, 1, 1, channels_last, 5);
            im2col(&mut ck, [1, 1200, 3, 3], 3, 1, 1, channels_last, 4);
            // Lines of 2 (6 channels), and SD1.5's conv_in (4 channels).
            im2col(&mut ck, [2, 6, 5, 4], 3, 1, 1, channels_last, 1000);
            im2col(&mut ck, [1, 4, 6, 6], 3, 2, 1, channels_last, 1000);
        }
        failures += ck.failures;
    }
    if failures > 0 {
        eprintln!("{failures} kernel checks outside their tolerance");
        std::process::exit(1);
    }
}
