//! cuBLAS GEMMs for burn-cuda tensors: the matmuls of `DDREP_GPU_MATMUL=cublas` and the
//! convolutions of `DDREP_GPU_CONV=cublas` (1x1 convs as one GEMM over the pixels, the others
//! as ddrep's im2col kernel, `gpu_kernels::im2col_into`, then one GEMM per chunk of rows).
//!
//! Why: on the lent H200 (2026-11-26) cubek's GEMM kernels, at their fixed tile
//! configurations, took two thirds of an SD1.5 UNet eval's GPU time, more than diffusers'
//! whole eval; diffusers runs the same GEMMs through cuBLAS (and cuDNN). cuBLAS comes with the
//! CUDA toolkit and with PyTorch's wheels; cudarc (burn-cuda's driver crate) loads it at run
//! time, and ddrep says once and falls back to burn's kernels where it cannot.
//!
//! burn's tensors are row-major with arbitrary strides; cuBLAS is column-major with one leading
//! dimension per operand. [`plan`] maps one to the other (`C = A B` is `C^T = B^T A^T`, and
//! a row-major matrix is its transpose in column-major terms), taking transposed views such as
//! attention's `k^T` and a channels-last weight as they are; it is plain Rust, checked on the
//! CPU against an emulation of cuBLAS's contract. The calls run on the CUDA stream that holds
//! the tensors (read through the patched cubecl-cuda, vendor/cubecl-cuda), so they are ordered
//! with burn's kernels without a device sync.

/// A batch of strided matrices in row-major terms: element `(i, j)` of matrix `b` at
/// `b * batch_stride + i * row_stride + j * col_stride` elements from the start. A
/// `batch_stride` of 0 repeats one matrix over the batch (broadcasting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
    pub batch_stride: usize,
}

/// One column-major operand of a cuBLAS call: transposed or not, and its leading dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColMajor {
    pub transpose: bool,
    pub ld: i32,
    pub batch_stride: i64,
}

/// The arguments of `cublasGemmStridedBatchedEx` that compute `C = A B` for row-major
/// operands: cuBLAS's first operand is `B`, its second `A`, and its `C` is row-major `C`
/// read column-major (`m` = `C`'s columns, `n` = its rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmCall {
    pub m: i32,
    pub n: i32,
    pub k: i32,
    /// cuBLAS's `A`: the row-major `B`.
    pub first: ColMajor,
    /// cuBLAS's `B`: the row-major `A`.
    pub second: ColMajor,
    pub ldc: i32,
    pub stride_c: i64,
    pub batch: i32,
}

/// The column-major operand whose `op(X)` is the `r x c` matrix with element `(i, j)` at
/// `i * si + j * sj`, or `None` when neither axis has unit stride (the caller copies it).
/// `op = N` reads `X(i, j)` at `i + j * ld` (needs `si == 1`, `ld >= r`); `op = T` reads
/// `X^T`, element `(i, j)` at `j + i * ld` (needs `sj == 1`, `ld >= c`). An axis of length 1
/// takes any stride.
fn col_major(r: usize, c: usize, si: usize, sj: usize, batch_stride: usize) -> Option<ColMajor> {
    let ld = |x: usize| i32::try_from(x).ok();
    let batch_stride = i64::try_from(batch_stride).ok()?;
    if (si == 1 || r == 1) && (c == 1 || sj >= r) {
        let ld = ld(if c == 1 { r.max(1) } else { sj })?;
        return Some(ColMajor { transpose: false, ld, batch_stride });
    }
    if (sj == 1 || c == 1) && (r == 1 || si >= c) {
        let ld = ld(if r == 1 { c.max(1) } else { si })?;
        return Some(ColMajor { transpose: true, ld, batch_stride });
    }
    None
}

/// The cuBLAS call for `C = A B` over `batch` matrices, `a` being `m x k` and `b` `k x n`,
/// into row-major `C` with rows `c_row_stride` apart (at least `n`) and matrices
/// `c_batch_stride` apart; `None` when an operand has no unit-stride axis, when sizes do not
/// agree or do not fit cuBLAS's 32-bit arguments, or for an empty problem.
pub fn plan(a: Operand, b: Operand, c_row_stride: usize, c_batch_stride: usize, batch: usize) -> Option<GemmCall> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || m == 0 || n == 0 || k == 0 || batch == 0 || c_row_stride < n || (batch > 1 && c_batch_stride == 0) {
        return None;
    }
    // cuBLAS's first operand is B^T (n x k): element (i, j) = B(j, i).
    let first = col_major(n, k, b.col_stride, b.row_stride, b.batch_stride)?;
    // Its second is A^T (k x m): element (i, j) = A(j, i).
    let second = col_major(k, m, a.col_stride, a.row_stride, a.batch_stride)?;
    let int = |x: usize| i32::try_from(x).ok();
    Some(GemmCall {
        m: int(n)?,
        n: int(m)?,
        k: int(k)?,
        first,
        second,
        ldc: int(c_row_stride)?,
        stride_c: i64::try_from(c_batch_stride).ok()?,
        batch: int(batch)?,
    })
}

/// The batch of a tensor's leading axes as one count and one stride, or `None` when they do not
/// merge into one stride (then it is copied first). Axes of length 1 are skipped; no batch
/// gives `(1, 0)`.
pub fn merged_batch(shape: &[usize], strides: &[usize]) -> Option<(usize, usize)> {
    let axes: Vec<(usize, usize)> = shape.iter().copied().zip(strides.iter().copied()).filter(|&(len, _)| len != 1).collect();
    let count = axes.iter().map(|&(len, _)| len).product();
    for pair in axes.windows(2) {
        let ((_, outer), (inner_len, inner)) = (pair[0], pair[1]);
        if outer != inner * inner_len {
            return None;
        }
    }
    Some((count, axes.last().map_or(0, |&(_, s)| s)))
}

/// Where to split the batch axes of a batched matmul (output batch `dims`; each operand's
/// stride along them, 0 where it is broadcast) into an outer level, looped over, and an inner
/// one, one strided-batched cuBLAS call: the first split at which every operand's outer axes
/// and inner axes each merge into one stride ([`merged_batch`]). 0 (no loop) when they all
/// merge; `None` when no split serves.
pub fn split_batch(dims: &[usize], strides: &[&[usize]]) -> Option<usize> {
    (0..=dims.len()).find(|&p| {
        strides.iter().all(|s| merged_batch(&dims[..p], &s[..p]).is_some() && merged_batch(&dims[p..], &s[p..]).is_some())
    })
}

/// One cuBLAS call of a plan: where its operands start (elements from the start of `A`, `B`
/// and `C`'s memory) and its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub a_offset: usize,
    pub b_offset: usize,
    pub c_offset: usize,
    pub gemm: GemmCall,
}

/// A plan's output (of `out_dims`: contiguous, or laid out as the caller asked) and its calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned<C> {
    pub out_dims: Vec<usize>,
    pub calls: C,
}

/// A tensor's logical shape and its strides in elements.
#[derive(Clone, Copy, Debug)]
pub struct Layout<'a> {
    pub dims: &'a [usize],
    pub strides: &'a [usize],
}

/// Why [`matmul_calls`] has no calls for two operands as they lie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unplanned {
    /// Copy these operands (`lhs`, `rhs`) to contiguous memory and plan again: one has no
    /// unit-stride matrix axis, or their batch axes merge in no common split.
    Copy(bool, bool),
    /// Not a problem for cuBLAS at all (shapes, broadcasting, sizes): burn's matmul runs it.
    Refuse(String),
}

/// The matrix of a layout's last two axes, batched over one level of its batch (`count` is
/// not recorded: the call has it), or `None` when cuBLAS cannot read it as it lies.
fn matrix(t: Layout, batch_stride: usize) -> Option<Operand> {
    let d = t.dims.len();
    let op = Operand { rows: t.dims[d - 2], cols: t.dims[d - 1], row_stride: t.strides[d - 2], col_stride: t.strides[d - 1], batch_stride };
    col_major(op.cols, op.rows, op.col_stride, op.row_stride, 0)?;
    Some(op)
}

/// `t`'s stride along each batch axis of an output with batch `dims`: 0 along an axis where
/// `t` has length 1 (broadcast).
fn batch_strides(t: Layout, dims: &[usize]) -> Vec<usize> {
    dims.iter().enumerate().map(|(i, &len)| if t.dims[i] == 1 && len != 1 { 0 } else { t.strides[i] }).collect()
}

/// The cuBLAS calls of `lhs @ rhs` with burn's batch broadcasting (along each batch axis an
/// operand has the output's length or 1) into a contiguous `[batch.., m, n]` output:
/// operands read as they lie, batch axes split where they do not merge into one stride
/// ([`split_batch`]: one strided-batched call per outer index), and a matrix times a shared
/// one (a linear layer's `[n, L, in] x [1, in, out]`) as one GEMM over all the rows when they
/// lie evenly, which cuBLAS tiles better than a batch.
pub fn matmul_calls(lhs: Layout, rhs: Layout) -> Result<Planned<Vec<Call>>, Unplanned> {
    matmul_calls_into(lhs, rhs, None)
}

/// [`matmul_calls`] into an output with strides `out_strides` (`None`: contiguous), for a
/// caller that has the output's memory: its last axis must have unit stride (rows of `C` as
/// cuBLAS writes them), its rows at least `n` apart, and its batch axes merge with the
/// operands' like theirs (one more operand for [`split_batch`]). Attention's `P V` written
/// straight into `[n, L, heads, d]` memory viewed `[n, heads, L, d]` is the case: the heads
/// are merged back by the GEMM itself, not by a copy. Offsets are from the output's first
/// element.
pub fn matmul_calls_into(lhs: Layout, rhs: Layout, out_strides: Option<&[usize]>) -> Result<Planned<Vec<Call>>, Unplanned> {
    let d = lhs.dims.len();
    let refuse = || Err(Unplanned::Refuse(format!("{:?} x {:?}", lhs.dims, rhs.dims)));
    if d < 2 || rhs.dims.len() != d || lhs.strides.len() != d || rhs.strides.len() != d {
        return refuse();
    }
    let nb = d - 2;
    let dims: Vec<usize> = lhs.dims[..nb].iter().zip(&rhs.dims[..nb]).map(|(&x, &y)| x.max(y)).collect();
    let matches = |t: Layout| t.dims[..nb].iter().zip(&dims).all(|(&len, &out)| len == out || len == 1);
    let (m, k, n) = (lhs.dims[d - 2], lhs.dims[d - 1], rhs.dims[d - 1]);
    if !matches(lhs) || !matches(rhs) || rhs.dims[d - 2] != k || m == 0 || k == 0 || n == 0 || dims.contains(&0) {
        return refuse();
    }
    let (lhs_ok, rhs_ok) = (matrix(lhs, 0).is_some(), matrix(rhs, 0).is_some());
    if !lhs_ok || !rhs_ok {
        return Err(Unplanned::Copy(!lhs_ok, !rhs_ok));
    }
    let mut out_dims = dims.clone();
    out_dims.extend([m, n]);
    let contiguous_out: Vec<usize> = (0..d).map(|i| out_dims[i + 1..].iter().product()).collect();
    let os = out_strides.unwrap_or(&contiguous_out);
    // cuBLAS writes rows of C with unit stride, `ldc` apart.
    let ldc = if m == 1 { n } else { os.get(d - 2).copied().unwrap_or(0) };
    if os.len() != d || (n > 1 && os[d - 1] != 1) || ldc < n {
        return refuse();
    }
    let (ls, rs, cs) = (batch_strides(lhs, &dims), batch_strides(rhs, &dims), os[..nb].to_vec());
    let Some(split) = split_batch(&dims, &[&ls, &rs, &cs]) else {
        return Err(Unplanned::Copy(true, true));
    };
    let level = |s: &[usize], axes: std::ops::Range<usize>| merged_batch(&dims[axes.clone()], &s[axes]).map_or(0, |(_, stride)| stride);
    let (outer, inner) = (dims[..split].iter().product::<usize>(), dims[split..].iter().product::<usize>());
    let (a_outer, b_outer, c_outer) = (level(&ls, 0..split), level(&rs, 0..split), level(&cs, 0..split));
    let mut a = matrix(lhs, level(&ls, split..nb)).expect("readable");
    let b = matrix(rhs, level(&rs, split..nb)).expect("readable");
    let (mut batch, c_inner) = (inner, level(&cs, split..nb));
    if outer == 1 && inner > 1 && b.batch_stride == 0 && a.col_stride == 1 && a.batch_stride == m * a.row_stride && c_inner == m * ldc {
        a = Operand { rows: inner * m, batch_stride: 0, ..a };
        batch = 1;
    }
    let Some(gemm) = plan(a, b, ldc, if batch == 1 { 0 } else { c_inner }, batch) else { return refuse() };
    let calls = (0..outer).map(|i| Call { a_offset: i * a_outer, b_offset: i * b_outer, c_offset: i * c_outer, gemm }).collect();
    Ok(Planned { out_dims, calls })
}

/// A convolution as cuBLAS calls ([`conv_plan`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConvPlan {
    /// A 1x1 conv without stride or padding: `A` is the input as it lies (pixels as rows,
    /// channels as columns), `B` the weight.
    Direct(Vec<Call>),
    /// Any other: rows `row0..row0 + rows` of the im2col matrix (`[rows, cols]`, contiguous,
    /// in a scratch of `chunk_rows` rows) are `A` of each call, the channels-last weight `B`.
    Im2col { chunk_rows: usize, cols: usize, chunks: Vec<(usize, usize, Call)> },
}

/// Why [`conv_plan`] has no plan for a convolution as its operands lie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConvUnplanned {
    /// The weight is not channels-last (`[O, k, k, C]` memory): copy it so and plan again.
    WeightLayout,
    /// A 1x1 input that cuBLAS cannot read as it lies: copy it and plan again.
    InputLayout,
    /// Not a convolution these calls take (shapes, sizes): burn's kernels run it.
    Refuse(String),
}

/// The cuBLAS calls of the convolution of `x` (`[N, C, H, W]`) with `w` (`[O, C, k, k]`,
/// square), stride and padding on both axes, into NHWC output memory (`out_dims`
/// `[N, Ho, Wo, O]`, contiguous). A 1x1 conv without stride or padding multiplies the input's pixels as they lie:
/// all of them as one matrix when `(n, h, w)` merge into one stride (channels-last memory),
/// else one matrix per image (NCHW: a column-major block each). Any other reads im2col rows
/// (columns ordered `(ky, kx, c)`, as `gpu_kernels::im2col_into` writes them), at most
/// `scratch_elems` elements of them at a time, against the weight read channels-last.
pub fn conv_plan(x: Layout, w: Layout, stride: usize, padding: usize, scratch_elems: usize) -> Result<Planned<ConvPlan>, ConvUnplanned> {
    let (Ok([n, c, h, wd]), Ok([o, wc, k, k2])) = (<[usize; 4]>::try_from(x.dims), <[usize; 4]>::try_from(w.dims)) else {
        return Err(ConvUnplanned::Refuse(format!("input {:?}, weight {:?}", x.dims, w.dims)));
    };
    let refuse = || Err(ConvUnplanned::Refuse(format!("input {:?}, weight {:?}, stride {stride}, padding {padding}", x.dims, w.dims)));
    if wc != c || k != k2 || k == 0 || stride == 0 || h + 2 * padding < k || wd + 2 * padding < k || n * c * o == 0 {
        return refuse();
    }
    let (oh, ow) = ((h + 2 * padding - k) / stride + 1, (wd + 2 * padding - k) / stride + 1);
    let (rows, pixels) = (n * oh * ow, oh * ow);
    let planned = |calls| Ok(Planned { out_dims: vec![n, oh, ow, o], calls });
    let (xs, ws) = (x.strides, w.strides);
    if k == 1 && stride == 1 && padding == 0 {
        let weight = Operand { rows: c, cols: o, row_stride: ws[1], col_stride: ws[0], batch_stride: 0 };
        let image = |merged: Option<(usize, usize)>, count: usize, batch_stride: usize| {
            let (_, row_stride) = merged?;
            let a = Operand { rows: count, cols: c, row_stride: if count == 1 { 1 } else { row_stride }, col_stride: xs[1], batch_stride };
            col_major(c, count, a.col_stride, a.row_stride, 0).map(|_| a)
        };
        let whole = image(merged_batch(&[n, h, wd], &[xs[0], xs[2], xs[3]]), rows, 0).map(|a| (a, 1));
        let per_image = || image(merged_batch(&[h, wd], &[xs[2], xs[3]]), pixels, xs[0]).map(|a| (a, n));
        let Some((a, batch)) = whole.or_else(per_image) else {
            return Err(ConvUnplanned::InputLayout);
        };
        let Some(gemm) = plan(a, weight, o, pixels * o, batch) else { return refuse() };
        return planned(ConvPlan::Direct(vec![Call { a_offset: 0, b_offset: 0, c_offset: 0, gemm }]));
    }
    if !(ws[1] == 1 && ws[3] == c && ws[2] == k * c) {
        return Err(ConvUnplanned::WeightLayout);
    }
    let cols = k * k * c;
    let weight = Operand { rows: cols, cols: o, row_stride: 1, col_stride: ws[0], batch_stride: 0 };
    let chunk_rows = (scratch_elems / cols).clamp(1, rows);
    let mut chunks = Vec::with_capacity(rows.div_ceil(chunk_rows));
    for row0 in (0..rows).step_by(chunk_rows) {
        let len = chunk_rows.min(rows - row0);
        let a = Operand { rows: len, cols, row_stride: cols, col_stride: 1, batch_stride: 0 };
        let Some(gemm) = plan(a, weight, o, 0, 1) else { return refuse() };
        chunks.push((row0, len, Call { a_offset: 0, b_offset: 0, c_offset: row0 * o, gemm }));
    }
    planned(ConvPlan::Im2col { chunk_rows, cols, chunks })
}

#[cfg(feature = "cuda")]
pub(crate) use gpu::{conv2d, matmul, matmul_into, unavailable};

#[cfg(feature = "cuda")]
mod gpu {
    use super::{conv_plan, matmul_calls, matmul_calls_into, Call, ConvPlan, ConvUnplanned, GemmCall, Layout, Planned, Unplanned};
    use crate::gpu_kernels::{im2col_into, Im2col};
    use burn_cubecl::tensor::CubeTensor;
    use burn::tensor::{DType, Shape};
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasHandle_t, cublasOperation_t, cudaDataType};
    use std::sync::{Mutex, OnceLock};

    type Cube = burn_cubecl::tensor::CubeTensor<burn::cubecl::cuda::CudaRuntime>;

    /// Most bytes of im2col rows that one conv holds at once; larger convs (the VAE's at full
    /// resolution) are computed a chunk of rows at a time.
    const IM2COL_SCRATCH_BYTES: usize = 256 << 20;

    /// The process's cuBLAS handle, made on first use (on the context burn-cuda made current),
    /// or why there is none.
    struct Handle(cublasHandle_t);
    // SAFETY: a cuBLAS handle may be used from any thread of its context, one call at a time;
    // the mutex around it sees to the latter.
    unsafe impl Send for Handle {}
    static HANDLE: OnceLock<Result<Mutex<Handle>, String>> = OnceLock::new();

    /// Whether cuBLAS was tried and could not be loaded or started: then every call would fail.
    pub(crate) fn unavailable() -> bool {
        HANDLE.get().is_some_and(Result::is_err)
    }

    /// Runs `f` with the cuBLAS handle, making it first if need be.
    fn with_handle<T>(f: impl FnOnce(cublasHandle_t) -> Result<T, String>) -> Result<T, String> {
        let handle = HANDLE.get_or_init(|| {
            // cudarc panics where a library lacks a symbol of the CUDA version it was built
            // for (here 13.0, tools/gpu/prepare.sh): caught, that is one more reason to say.
            let made = std::panic::catch_unwind(|| {
                // SAFETY: only probes whether the library loads (cudarc panics on a missing one).
                if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                    return Err("libcublas was not found: put the folder that holds libcublas.so (the CUDA toolkit's lib64, or PyTorch's nvidia/cu*/lib) on LD_LIBRARY_PATH".to_string());
                }
                cudarc::cublas::result::create_handle().map(|h| Mutex::new(Handle(h))).map_err(|e| format!("cublasCreate: {e}"))
            });
            made.unwrap_or_else(|panic| {
                let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                Err(format!("cuBLAS could not be loaded ({})", why.unwrap_or_default()))
            })
        });
        match handle {
            Ok(h) => f(h.lock().unwrap_or_else(|e| e.into_inner()).0),
            Err(e) => Err(e.clone()),
        }
    }

    /// A device pointer to `t`'s first element (its offset included) and its stream.
    fn pointer(t: &Cube) -> (u64, cudarc::driver::sys::CUstream) {
        let binding = t.client.get_resource(t.handle.clone().binding());
        let resource = binding.resource();
        (resource.ptr, resource.stream)
    }

    fn data_type(dtype: DType) -> Result<cudaDataType, String> {
        match dtype {
            DType::F32 => Ok(cudaDataType::CUDA_R_32F),
            DType::F16 => Ok(cudaDataType::CUDA_R_16F),
            DType::BF16 => Ok(cudaDataType::CUDA_R_16BF),
            d => Err(format!("dtype {d:?}")),
        }
    }

    /// One planned call ([`plan`]) of `cublasGemmStridedBatchedEx`, `C = alpha A B` in
    /// row-major terms with f32 accumulation (as PyTorch runs f16, bf16 and f32 matmuls
    /// without TF32), on `c`'s stream. `a`, `b`, `c` are byte addresses.
    fn gemm(dtype: DType, call: GemmCall, alpha: f32, a: u64, b: u64, c: (u64, cudarc::driver::sys::CUstream)) -> Result<(), String> {
        let dt = data_type(dtype)?;
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let beta = 0f32;
        with_handle(|h| {
            // SAFETY: the addresses are inside live allocations of burn-cuda tensors that the
            // caller holds until the call is queued; the plan bounds every index by the
            // operands' shapes and strides; the call is queued on the stream of the output's
            // memory, behind the kernels that wrote the inputs.
            unsafe {
                cudarc::cublas::result::set_stream(h, c.1 as _).map_err(|e| format!("cublasSetStream: {e}"))?;
                cudarc::cublas::result::gemm_strided_batched_ex(
                    h,
                    op(call.first.transpose),
                    op(call.second.transpose),
                    call.m,
                    call.n,
                    call.k,
                    (&alpha as *const f32).cast(),
                    b as *const std::ffi::c_void,
                    dt,
                    call.first.ld,
                    call.first.batch_stride,
                    a as *const std::ffi::c_void,
                    dt,
                    call.second.ld,
                    call.second.batch_stride,
                    (&beta as *const f32).cast(),
                    c.0 as *mut std::ffi::c_void,
                    dt,
                    call.ldc,
                    call.stride_c,
                    call.batch,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                )
                .map_err(|e| format!("cublasGemmStridedBatchedEx: {e}"))
            }
        })
    }

    fn layout(t: &Cube) -> Layout<'_> {
        Layout { dims: &t.shape.dims, strides: &t.strides }
    }

    /// Runs `calls` (`C = alpha A B`) with `A`, `B`, `C` at these byte addresses, on `C`'s
    /// stream.
    fn run(dtype: DType, calls: &[Call], alpha: f32, a: u64, b: u64, c: (u64, cudarc::driver::sys::CUstream)) -> Result<(), String> {
        let elem = dtype.size() as u64;
        calls.iter().try_for_each(|call| gemm(dtype, call.gemm, alpha, a + call.a_offset as u64 * elem, b + call.b_offset as u64 * elem, (c.0 + call.c_offset as u64 * elem, c.1)))
    }

    /// `alpha (lhs @ rhs)` with burn's batch broadcasting into a contiguous tensor, by the
    /// calls of [`matmul_calls`] (operands it cannot read as they lie are copied first); the
    /// scale is cuBLAS's own (attention's `1 / sqrt(d)` costs no pass over the queries). `Err`
    /// hands the inputs back with the reason (a problem it refuses, a failed call), for burn's
    /// matmul.
    #[allow(clippy::type_complexity)]
    pub(crate) fn matmul(lhs: Cube, rhs: Cube, alpha: f32) -> Result<Cube, Box<((Cube, Cube), String)>> {
        let refuse = |lhs, rhs, why: String| Err(Box::new(((lhs, rhs), why)));
        if lhs.dtype != rhs.dtype {
            let why = format!("{:?} x {:?}", lhs.dtype, rhs.dtype);
            return refuse(lhs, rhs, why);
        }
        let (lhs, rhs, planned) = match matmul_calls(layout(&lhs), layout(&rhs)) {
            Ok(planned) => (lhs, rhs, planned),
            Err(Unplanned::Refuse(why)) => return refuse(lhs, rhs, why),
            Err(Unplanned::Copy(copy_lhs, copy_rhs)) => {
                let copy = |t: Cube, yes: bool| if yes { burn_cubecl::kernel::into_contiguous(t) } else { t };
                let (lhs, rhs) = (copy(lhs, copy_lhs), copy(rhs, copy_rhs));
                match matmul_calls(layout(&lhs), layout(&rhs)) {
                    Ok(planned) => (lhs, rhs, planned),
                    Err(e) => return refuse(lhs, rhs, format!("{e:?}")),
                }
            }
        };
        let out = empty_device_dtype(lhs.client.clone(), lhs.device.clone(), Shape::from(planned.out_dims), lhs.dtype);
        match run(lhs.dtype, &planned.calls, alpha, pointer(&lhs).0, pointer(&rhs).0, pointer(&out)) {
            Ok(()) => Ok(out),
            Err(e) => refuse(lhs, rhs, e),
        }
    }

    /// `alpha (lhs @ rhs)` written into rows `row0..row0 + m` (along the second-to-last axis)
    /// of `out`, a tensor whose memory the caller owns alone (made for this, e.g. `[n, L, h,
    /// d]` memory viewed `[n, h, L, d]`), by the calls of [`matmul_calls_into`]: attention's
    /// blocks of `P V` land with their heads merged, with no copy after. `Err` hands the
    /// operands back with the reason (a layout or problem it refuses, a failed call); `out` is
    /// then not written.
    #[allow(clippy::type_complexity)]
    pub(crate) fn matmul_into(lhs: Cube, rhs: Cube, out: &Cube, row0: usize, alpha: f32) -> Result<(), Box<((Cube, Cube), String)>> {
        let refuse = |lhs, rhs, why: String| Err(Box::new(((lhs, rhs), why)));
        let d = out.shape.num_dims();
        if lhs.dtype != rhs.dtype || lhs.dtype != out.dtype || d < 2 || lhs.shape.num_dims() != d {
            let why = format!("{:?} x {:?} into {:?}", lhs.dtype, rhs.dtype, out.dtype);
            return refuse(lhs, rhs, why);
        }
        let m = lhs.shape.dims[d - 2];
        if row0 + m > out.shape.dims[d - 2] {
            let why = format!("rows {row0}..{} of {:?}", row0 + m, out.shape.dims);
            return refuse(lhs, rhs, why);
        }
        let planned = match matmul_calls_into(layout(&lhs), layout(&rhs), Some(&out.strides)) {
            Ok(planned) => planned,
            Err(e) => return refuse(lhs, rhs, format!("{e:?}")),
        };
        let mut block = out.shape.dims.clone();
        block[d - 2] = m;
        if planned.out_dims != block {
            let why = format!("a product of {:?} into rows of {:?}", planned.out_dims, out.shape.dims);
            return refuse(lhs, rhs, why);
        }
        let (c, stream) = pointer(out);
        let c = c + (row0 * out.strides[d - 2] * out.dtype.size()) as u64;
        match run(lhs.dtype, &planned.calls, alpha, pointer(&lhs).0, pointer(&rhs).0, (c, stream)) {
            Ok(()) => Ok(()),
            Err(e) => refuse(lhs, rhs, e),
        }
    }

    /// `x` (`[N, C, H, W]`, any strides) convolved with `w` (`[O, C, k, k]`), without bias, by
    /// the calls of [`conv_plan`], into NHWC memory viewed as `[N, O, Ho, Wo]`: im2col rows
    /// ([`im2col_into`]) at most [`IM2COL_SCRATCH_BYTES`] at a time. A weight that is not
    /// channels-last, or a 1x1 input cuBLAS cannot read, is copied first (at every call: the
    /// `Conv2d` loader stores weights channels-last). `Err` hands `x` back with the reason.
    pub(crate) fn conv2d(x: Cube, w: &Cube, stride: usize, padding: usize) -> Result<Cube, Box<(Cube, String)>> {
        let refuse = |x, why: String| Err(Box::new((x, why)));
        // Shapes are conv_plan's to check.
        if x.dtype != w.dtype {
            let why = format!("input {:?} {:?}, weight {:?} {:?}", x.shape.dims, x.dtype, w.shape.dims, w.dtype);
            return refuse(x, why);
        }
        let scratch_elems = IM2COL_SCRATCH_BYTES / x.dtype.size();
        let (mut x, mut w) = (x, w.clone());
        let mut planned = conv_plan(layout(&x), layout(&w), stride, padding, scratch_elems);
        for _ in 0..2 {
            match planned {
                // A channels-last copy, viewed `[O, C, k, k]` again.
                Err(ConvUnplanned::WeightLayout) => {
                    use burn_cubecl::ops::{permute_nchw_to_nhwc, permute_nhwc_to_nchw};
                    w = permute_nhwc_to_nchw(burn_cubecl::kernel::into_contiguous(permute_nchw_to_nhwc(w)));
                }
                Err(ConvUnplanned::InputLayout) => x = burn_cubecl::kernel::into_contiguous(x),
                _ => break,
            }
            planned = conv_plan(layout(&x), layout(&w), stride, padding, scratch_elems);
        }
        let Planned { out_dims, calls: plan } = match planned {
            Ok(planned) => planned,
            Err(e) => return refuse(x, format!("{e:?}")),
        };
        let ([n, oh, ow, o], k) = (<[usize; 4]>::try_from(out_dims).expect("NHWC dims"), w.shape.dims[3]);
        let nhwc = empty_device_dtype(x.client.clone(), x.device.clone(), Shape::new([n, oh, ow, o]), x.dtype);
        let out = CubeTensor::new(nhwc.client, nhwc.handle, Shape::new([n, o, oh, ow]), nhwc.device, vec![oh * ow * o, 1, ow * o, o], nhwc.dtype);
        let (c_ptr, w_ptr) = (pointer(&out), pointer(&w).0);
        let done = match plan {
            ConvPlan::Direct(calls) => run(x.dtype, &calls, 1.0, pointer(&x).0, w_ptr, c_ptr),
            ConvPlan::Im2col { chunk_rows, cols, chunks } => {
                let scratch = empty_device_dtype(x.client.clone(), x.device.clone(), Shape::new([chunk_rows, cols]), x.dtype);
                let scratch_ptr = pointer(&scratch).0;
                let geometry = Im2col { k, stride, padding, out_h: oh, out_w: ow };
                chunks.iter().try_for_each(|&(row0, rows, call)| {
                    let block = CubeTensor::new(scratch.client.clone(), scratch.handle.clone(), Shape::new([rows, cols]), scratch.device.clone(), vec![cols, 1], scratch.dtype);
                    im2col_into(&x, &block, geometry, row0).and_then(|()| run(x.dtype, &[call], 1.0, scratch_ptr, w_ptr, c_ptr))
                })
            }
        };
        match done {
            Ok(()) => Ok(out),
            Err(e) => refuse(x, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `cublasGemmStridedBatchedEx` as its documentation states it, on host slices: column-major
    /// `C_b = op(A_b) op(B_b)`, `op(X)(i, j)` = `X[i + j * ld]` untransposed and `X[j + i * ld]`
    /// transposed, matrices `stride` elements apart.
    fn cublas_reference(call: &GemmCall, first: &[f64], second: &[f64], c: &mut [f64]) {
        let read = |x: &[f64], op: ColMajor, b: usize, i: usize, j: usize| {
            let base = b as i64 * op.batch_stride;
            let at = if op.transpose { j + i * op.ld as usize } else { i + j * op.ld as usize };
            x[(base + at as i64) as usize]
        };
        for b in 0..call.batch as usize {
            for i in 0..call.m as usize {
                for j in 0..call.n as usize {
                    let s: f64 = (0..call.k as usize).map(|l| read(first, call.first, b, i, l) * read(second, call.second, b, l, j)).sum();
                    c[b * call.stride_c as usize + i + j * call.ldc as usize] = s;
                }
            }
        }
    }

    /// The element of `op` at `(b, i, j)` in `mem`.
    fn at(mem: &[f64], op: Operand, b: usize, i: usize, j: usize) -> f64 {
        mem[b * op.batch_stride + i * op.row_stride + j * op.col_stride]
    }

    /// Row-major operands in every layout ddrep hands cuBLAS (plain, transposed views, padded
    /// rows, broadcast batches, length-1 axes) give `C = A B` through [`plan`] and the
    /// emulated call, to rounding; the output's padding between rows is left alone.
    #[test]
    fn plan_computes_row_major_products() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut cases = 0;
        for &(m, k, n) in &[(3, 4, 5), (1, 4, 5), (3, 1, 5), (3, 4, 1), (1, 1, 1), (6, 2, 7)] {
            for a_t in [false, true] {
                for b_t in [false, true] {
                    for (batch, a_bcast, b_bcast) in [(1, false, false), (3, false, false), (3, true, false), (3, false, true)] {
                        for pad in [0, 2] {
                            // A layout: transposed means the rows are the unit-stride axis.
                            let layout = |rows: usize, cols: usize, t: bool, bcast: bool| {
                                let (row_stride, col_stride, size) = if t { (1, rows + pad, cols * (rows + pad)) } else { (cols + pad, 1, rows * (cols + pad)) };
                                let batch_stride = if bcast || batch == 1 { 0 } else { size + pad };
                                Operand { rows, cols, row_stride, col_stride, batch_stride }
                            };
                            let (a, b) = (layout(m, k, a_t, a_bcast), layout(k, n, b_t, b_bcast));
                            let len = |op: Operand| op.batch_stride * batch + op.rows * op.row_stride + op.cols * op.col_stride + 1;
                            let a_mem: Vec<f64> = (0..len(a)).map(|_| rng.random_range(-1.0..1.0)).collect();
                            let b_mem: Vec<f64> = (0..len(b)).map(|_| rng.random_range(-1.0..1.0)).collect();
                            let (ldc, stride_c) = (n + pad, m * (n + pad) + pad);
                            let call = plan(a, b, ldc, stride_c, batch).unwrap_or_else(|| panic!("no plan for {a:?} {b:?}"));
                            let mut c = vec![f64::NAN; stride_c * batch];
                            cublas_reference(&call, &b_mem, &a_mem, &mut c);
                            for bi in 0..batch {
                                for i in 0..m {
                                    for j in 0..n {
                                        let want: f64 = (0..k).map(|l| at(&a_mem, a, bi, i, l) * at(&b_mem, b, bi, l, j)).sum();
                                        let got = c[bi * stride_c + i * ldc + j];
                                        assert!((got - want).abs() < 1e-12, "C[{bi},{i},{j}] = {got}, want {want} ({a:?} x {b:?})");
                                    }
                                    for j in n..ldc.min(stride_c - i * ldc) {
                                        assert!(c[bi * stride_c + i * ldc + j].is_nan(), "padding written");
                                    }
                                }
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 6 * 2 * 2 * 4 * 2);
    }

    /// Layouts cuBLAS cannot read as they are, and sizes it does not take, get no plan.
    #[test]
    fn plan_refuses_what_cublas_cannot_read() {
        let a = Operand { rows: 3, cols: 4, row_stride: 4, col_stride: 1, batch_stride: 0 };
        let b = Operand { rows: 4, cols: 5, row_stride: 5, col_stride: 1, batch_stride: 0 };
        assert!(plan(a, b, 5, 15, 1).is_some());
        // No unit-stride axis (every other element of a row).
        assert_eq!(plan(Operand { col_stride: 2, row_stride: 8, ..a }, b, 5, 15, 1), None);
        // Rows that overlap (a leading dimension below the row length).
        assert_eq!(plan(a, Operand { row_stride: 3, ..b }, 5, 15, 1), None);
        // Inner sizes that disagree; output rows shorter than n; empty; a repeated output.
        assert_eq!(plan(a, Operand { rows: 5, ..b }, 5, 15, 1), None);
        assert_eq!(plan(a, b, 4, 15, 1), None);
        assert_eq!(plan(Operand { rows: 0, ..a }, b, 5, 15, 1), None);
        assert_eq!(plan(a, b, 5, 0, 2), None);
        // Beyond 32-bit arguments.
        assert_eq!(plan(a, Operand { cols: 1 << 31, row_stride: 1 << 31, ..b }, 1 << 31, 0, 1), None);
    }

    /// Runs planned calls on host memory through [`cublas_reference`].
    fn run_calls(calls: &[Call], a: &[f64], b: &[f64], c: &mut [f64]) {
        for call in calls {
            cublas_reference(&call.gemm, &b[call.b_offset..], &a[call.a_offset..], &mut c[call.c_offset..]);
        }
    }

    /// Logical element `idx` of a strided tensor.
    fn get(mem: &[f64], t: Layout, idx: &[usize]) -> f64 {
        mem[idx.iter().zip(t.strides).map(|(i, s)| i * s).sum::<usize>()]
    }

    /// Memory for a layout (one past its last element) filled with noise.
    fn noise(t: Layout, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f64> {
        let len = 1 + t.dims.iter().zip(t.strides).map(|(d, s)| d.saturating_sub(1) * s).sum::<usize>();
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Contiguous strides of `dims`.
    fn contiguous(dims: &[usize]) -> Vec<usize> {
        let mut s = vec![1; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * dims[i + 1];
        }
        s
    }

    /// The matmuls SD1.5 hands cuBLAS, each in the layout the model gives it (contiguous,
    /// a linear layer's shared weight, attention's head-split queries, keys (transposed) and
    /// values, a rank-2 product), planned and run through the emulated cuBLAS, equal burn's
    /// broadcasting matmul.
    #[test]
    fn matmul_calls_compute_broadcast_batched_products() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (n, h, l, d, lk) = (2, 3, 5, 4, 6);
        // [n, L, h, d] viewed [n, h, L, d]; keys [n, Lk, h, d] viewed [n, h, d, Lk].
        let heads = vec![l * h * d, d, h * d, 1];
        let keys_t = vec![lk * h * d, d, 1, h * d];
        // (lhs dims, lhs strides, rhs dims, rhs strides, calls)
        type Case = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>, usize);
        let cases: Vec<Case> = vec![
            (vec![2, 3, 4, 5], contiguous(&[2, 3, 4, 5]), vec![2, 3, 5, 6], contiguous(&[2, 3, 5, 6]), 1),
            (vec![2, 7, 5], contiguous(&[2, 7, 5]), vec![1, 5, 6], contiguous(&[1, 5, 6]), 1),
            (vec![2, 7, 5], contiguous(&[2, 7, 5]), vec![1, 5, 6], vec![30, 1, 5], 1),
            (vec![n, h, l, d], heads.clone(), vec![n, h, d, lk], keys_t, n),
            (vec![n, h, l, lk], contiguous(&[n, h, l, lk]), vec![n, h, lk, d], vec![lk * h * d, d, h * d, 1], n),
            (vec![1, h, l, d], contiguous(&[1, h, l, d]), vec![n, h, d, lk], contiguous(&[n, h, d, lk]), n),
            (vec![n, 1, l, d], contiguous(&[n, 1, l, d]), vec![1, h, d, lk], contiguous(&[1, h, d, lk]), n),
            (vec![7, 5], vec![1, 7], vec![5, 6], contiguous(&[5, 6]), 1),
        ];
        for (ad, a_s, bd, b_s, loops) in cases {
            let (a, b) = (Layout { dims: &ad, strides: &a_s }, Layout { dims: &bd, strides: &b_s });
            let Planned { out_dims, calls } = matmul_calls(a, b).unwrap_or_else(|e| panic!("{ad:?} x {bd:?}: {e:?}"));
            assert_eq!(calls.len(), loops, "{ad:?} x {bd:?}: calls");
            let (am, bm) = (noise(a, &mut rng), noise(b, &mut rng));
            let r = ad.len();
            let mut od: Vec<usize> = ad[..r - 2].iter().zip(&bd[..r - 2]).map(|(&x, &y)| x.max(y)).collect();
            od.extend([ad[r - 2], bd[r - 1]]);
            assert_eq!(out_dims, od, "{ad:?} x {bd:?}: output dims");
            let total: usize = od.iter().product();
            let mut c = vec![f64::NAN; total];
            run_calls(&calls, &am, &bm, &mut c);
            let os = contiguous(&od);
            for (flat, &got) in c.iter().enumerate() {
                let idx: Vec<usize> = os.iter().zip(&od).map(|(s, dim)| flat / s % dim).collect();
                // An operand's index: its length-1 batch axes broadcast.
                let pick = |dims: &[usize], last2: [usize; 2]| -> Vec<usize> {
                    let mut v: Vec<usize> = dims[..r - 2].iter().zip(&idx[..r - 2]).map(|(&dim, &x)| if dim == 1 { 0 } else { x }).collect();
                    v.extend(last2);
                    v
                };
                let want: f64 = (0..ad[r - 1]).map(|kk| get(&am, a, &pick(&ad, [idx[r - 2], kk])) * get(&bm, b, &pick(&bd, [kk, idx[r - 1]]))).sum();
                assert!((got - want).abs() < 1e-12, "{ad:?} x {bd:?} at {idx:?}: {got} vs {want}");
            }
        }
        // Copies and refusals.
        let (ad, bd) = ([3, 4], [4, 5]);
        let b = Layout { dims: &bd, strides: &[5, 1] };
        assert_eq!(matmul_calls(Layout { dims: &ad, strides: &[8, 2] }, b), Err(Unplanned::Copy(true, false)));
        let (ad3, bd3) = ([2, 3, 4], [3, 4, 5]);
        // Batch axes of different lengths, neither 1.
        assert!(matches!(matmul_calls(Layout { dims: &ad3, strides: &contiguous(&ad3) }, Layout { dims: &bd3, strides: &contiguous(&bd3) }), Err(Unplanned::Refuse(_))));
        let (ad4, bd4) = ([2, 3, 2, 4], [2, 3, 4, 5]);
        // Batch axes that merge in no split: the image stride neither follows the heads'
        // nor lies in one level with them.
        assert_eq!(matmul_calls(Layout { dims: &ad4, strides: &[1000, 100, 4, 1] }, Layout { dims: &bd4, strides: &contiguous(&bd4) }).map(|p| p.calls.len()), Ok(2));
        let (ad5, bd5) = ([2, 3, 2, 2, 4], [2, 3, 2, 4, 5]);
        assert_eq!(matmul_calls(Layout { dims: &ad5, strides: &[1000, 100, 10, 4, 1] }, Layout { dims: &bd5, strides: &contiguous(&bd5) }), Err(Unplanned::Copy(true, true)));
    }

    /// Attention's `P V` in blocks of query rows, written straight into `[n, L, heads, d]`
    /// memory viewed `[n, heads, L, d]` (each block at its rows' offset) with the values
    /// head-split: the heads come out merged, every element written once, nothing else touched;
    /// and the strides a cuBLAS output cannot have are refused.
    #[test]
    fn matmul_into_writes_head_merged_blocks() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let (n, h, l, d, lk) = (2, 3, 7, 4, 5);
        let out_strides = [l * h * d, d, h * d, 1];
        let v_dims = [n, h, lk, d];
        let v = Layout { dims: &v_dims, strides: &[lk * h * d, d, h * d, 1] };
        let vm = noise(v, &mut rng);
        let mut mem = vec![f64::NAN; n * l * h * d];
        let mut want = vec![f64::NAN; n * l * h * d];
        for (row0, rows) in [(0, 3), (3, 3), (6, 1)] {
            let p_dims = [n, h, rows, lk];
            let p = Layout { dims: &p_dims, strides: &contiguous(&p_dims) };
            let pm = noise(p, &mut rng);
            let Planned { out_dims, calls } = matmul_calls_into(p, v, Some(&out_strides)).unwrap_or_else(|e| panic!("rows {row0}..: {e:?}"));
            assert_eq!(out_dims, [n, h, rows, d]);
            assert_eq!(calls.len(), n, "one strided batch over the heads per image");
            run_calls(&calls, &pm, &vm, &mut mem[row0 * h * d..]);
            for (ni, hi, i, j) in (0..n).flat_map(|ni| (0..h).flat_map(move |hi| (0..rows).flat_map(move |i| (0..d).map(move |j| (ni, hi, i, j))))) {
                let at = ni * out_strides[0] + hi * out_strides[1] + (row0 + i) * out_strides[2] + j;
                want[at] = (0..lk).map(|kk| get(&pm, p, &[ni, hi, i, kk]) * get(&vm, v, &[ni, hi, kk, j])).sum();
            }
        }
        for (at, (&got, &w)) in mem.iter().zip(&want).enumerate() {
            assert!((got - w).abs() < 1e-12, "element {at}: {got} vs {w}");
        }
        // A linear layer's rows merge into one GEMM only where the output's rows lie evenly.
        let (x_dims, w_dims) = ([2, 3, 4], [1, 4, 5]);
        let (x, w) = (Layout { dims: &x_dims, strides: &contiguous(&x_dims) }, Layout { dims: &w_dims, strides: &contiguous(&w_dims) });
        let merged = matmul_calls_into(x, w, Some(&[15, 5, 1])).unwrap();
        assert_eq!((merged.calls.len(), merged.calls[0].gemm.batch, merged.calls[0].gemm.n), (1, 1, 6));
        let padded = matmul_calls_into(x, w, Some(&[40, 8, 1])).unwrap();
        assert_eq!((padded.calls.len(), padded.calls[0].gemm.batch, padded.calls[0].gemm.ldc), (1, 2, 8));
        let (mut cm, mut want) = (vec![f64::NAN; 80], vec![f64::NAN; 80]);
        let (xm, wm) = (noise(x, &mut rng), noise(w, &mut rng));
        run_calls(&padded.calls, &xm, &wm, &mut cm);
        for (b, i, j) in (0..2).flat_map(|b| (0..3).flat_map(move |i| (0..5).map(move |j| (b, i, j)))) {
            want[b * 40 + i * 8 + j] = (0..4).map(|kk| get(&xm, x, &[b, i, kk]) * get(&wm, w, &[0, kk, j])).sum();
        }
        assert!(cm.iter().zip(&want).all(|(g, w)| (g.is_nan() && w.is_nan()) || (g - w).abs() < 1e-12), "padded rows: only the output's elements written");
        // Columns not contiguous, rows overlapping: no cuBLAS output.
        assert!(matches!(matmul_calls_into(x, w, Some(&[15, 1, 3])), Err(Unplanned::Refuse(_))));
        assert!(matches!(matmul_calls_into(x, w, Some(&[15, 4, 1])), Err(Unplanned::Refuse(_))));
    }

    /// Convolutions as cuBLAS calls (1x1 on NCHW and channels-last inputs; 3x3 "same"; the
    /// stride-2 downsampler; im2col in chunks that split images) equal the direct definition,
    /// written NHWC.
    #[test]
    fn conv_plans_compute_convolutions() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let nhwc_view = |[_, c, h, w]: [usize; 4]| vec![h * w * c, 1, w * c, c];
        for &(dims, o, k, stride, padding, channels_last, scratch, chunks) in &[
            ([2, 3, 4, 5], 6, 1, 1, 0, false, 1000, 1),
            ([2, 3, 4, 5], 6, 1, 1, 0, true, 1000, 1),
            ([2, 3, 5, 4], 4, 3, 1, 1, false, 1 << 20, 1),
            ([2, 3, 5, 4], 4, 3, 1, 1, true, 27 * 7, 6),
            ([1, 2, 7, 6], 3, 3, 2, 1, true, 18 * 5, 3),
            ([1, 2, 7, 6], 3, 3, 2, 0, false, 1 << 20, 1),
        ] {
            let [n, c, h, w] = dims;
            let xs = if channels_last { nhwc_view(dims) } else { contiguous(&dims) };
            let x = Layout { dims: &dims, strides: &xs };
            let wdims = [o, c, k, k];
            let ws = if k == 1 { contiguous(&wdims) } else { vec![k * k * c, 1, k * c, c] };
            let wl = Layout { dims: &wdims, strides: &ws };
            let (xm, wm) = (noise(x, &mut rng), noise(wl, &mut rng));
            let (oh, ow) = ((h + 2 * padding - k) / stride + 1, (w + 2 * padding - k) / stride + 1);
            let mut out = vec![f64::NAN; n * oh * ow * o];
            let what = format!("{dims:?} k {k} stride {stride} padding {padding} channels_last {channels_last}");
            let planned = conv_plan(x, wl, stride, padding, scratch).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(planned.out_dims, [n, oh, ow, o], "{what}: output dims");
            match planned.calls {
                ConvPlan::Direct(calls) => {
                    assert_eq!(k, 1);
                    run_calls(&calls, &xm, &wm, &mut out);
                }
                ConvPlan::Im2col { chunk_rows, cols, chunks: list } => {
                    assert_eq!((cols, list.len()), (k * k * c, chunks), "{what}");
                    for (row0, rows, call) in list {
                        assert!(rows <= chunk_rows);
                        // The rows im2col_into writes: (n, oy, ox) by (ky, kx, c).
                        let mut col = vec![0.0; rows * cols];
                        for r in 0..rows {
                            let (ni, oy, ox) = ((row0 + r) / (oh * ow), (row0 + r) / ow % oh, (row0 + r) % ow);
                            for (j, v) in col[r * cols..(r + 1) * cols].iter_mut().enumerate() {
                                let (ky, kx, ci) = (j / c / k, j / c % k, j % c);
                                let (py, px) = ((oy * stride + ky) as isize - padding as isize, (ox * stride + kx) as isize - padding as isize);
                                if py >= 0 && px >= 0 && (py as usize) < h && (px as usize) < w {
                                    *v = get(&xm, x, &[ni, ci, py as usize, px as usize]);
                                }
                            }
                        }
                        run_calls(&[call], &col, &wm, &mut out);
                    }
                }
            }
            for ni in 0..n {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for oc in 0..o {
                            let mut want = 0.0;
                            for ci in 0..c {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (py, px) = ((oy * stride + ky) as isize - padding as isize, (ox * stride + kx) as isize - padding as isize);
                                        if py >= 0 && px >= 0 && (py as usize) < h && (px as usize) < w {
                                            want += get(&xm, x, &[ni, ci, py as usize, px as usize]) * get(&wm, wl, &[oc, ci, ky, kx]);
                                        }
                                    }
                                }
                            }
                            let got = out[((ni * oh + oy) * ow + ox) * o + oc];
                            assert!((got - want).abs() < 1e-12, "{what} at ({ni},{oc},{oy},{ox}): {got} vs {want}");
                        }
                    }
                }
            }
        }
        // A 3x3 weight that is not channels-last, and a 1x1 input with no unit-stride axis.
        let (dims, wdims) = ([1, 2, 4, 4], [3, 2, 3, 3]);
        let x = Layout { dims: &dims, strides: &[32, 16, 4, 1] };
        assert_eq!(conv_plan(x, Layout { dims: &wdims, strides: &contiguous(&wdims) }, 1, 1, 1000), Err(ConvUnplanned::WeightLayout));
        let w1 = [3, 2, 1, 1];
        assert_eq!(conv_plan(Layout { dims: &dims, strides: &[64, 32, 8, 2] }, Layout { dims: &w1, strides: &contiguous(&w1) }, 1, 0, 1000), Err(ConvUnplanned::InputLayout));
        assert!(matches!(conv_plan(x, Layout { dims: &[3, 5, 3, 3], strides: &[45, 1, 15, 5] }, 1, 1, 1000), Err(ConvUnplanned::Refuse(_))));
    }

    #[test]
    fn batch_splits_where_heads_do_not_merge() {
        // Contiguous operands and a broadcast weight: one call.
        assert_eq!(split_batch(&[2, 8], &[&[8 * 4096 * 40, 4096 * 40], &[0, 0]]), Some(0));
        // Heads split from a [2, 4096, 8, 40] sequence: loop over the images, batch the heads.
        let heads = [4096 * 320, 40];
        assert_eq!(split_batch(&[2, 8], &[&heads, &heads]), Some(1));
        assert_eq!(split_batch(&[2, 8], &[&[8 * 4096 * 4096, 4096 * 4096], &heads]), Some(1));
        // Axes whose strides merge in neither grouping: a 3-level batch.
        assert_eq!(split_batch(&[2, 3, 4], &[&[1000, 100, 1]]), None);
        assert_eq!(split_batch(&[], &[&[], &[]]), Some(0));
    }

    #[test]
    fn batch_axes_merge_into_one_stride() {
        assert_eq!(merged_batch(&[], &[]), Some((1, 0)));
        assert_eq!(merged_batch(&[1, 1], &[7, 9]), Some((1, 0)));
        assert_eq!(merged_batch(&[2, 8], &[8 * 60, 60]), Some((16, 60)));
        assert_eq!(merged_batch(&[2, 1, 8], &[8 * 60, 5, 60]), Some((16, 60)));
        // Heads split from a sequence ([n, L, h, d] viewed [n, h, L, d]) do not merge.
        assert_eq!(merged_batch(&[2, 8], &[4096 * 320, 40]), None);
        assert_eq!(merged_batch(&[5], &[3]), Some((5, 3)));
    }
}
