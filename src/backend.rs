//! Backend choices: the CPU (ndarray) backend by default, CUDA with the `cuda` feature.

#[cfg(feature = "cuda")]
use std::sync::atomic::AtomicBool;

/// The CPU tensor backend.
pub type Cpu = burn::backend::NdArray<f32>;
/// The CPU backend with autodiff, for diffrep fits.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;

#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;
/// SD1.5 in half precision on the GPU (`--precision f16`): weights and activations in fp16.
#[cfg(feature = "cuda")]
pub type CudaF16 = burn::backend::Cuda<half::f16, i32>;
/// SD1.5 in bfloat16 on the GPU (`--precision bf16`).
#[cfg(feature = "cuda")]
pub type CudaBf16 = burn::backend::Cuda<half::bf16, i32>;

/// Where cubecl (burn's GPU kernels) keeps its autotune picks and its compiled kernels.
/// cubecl's defaults: autotune picks in a `target/` folder beside the nearest `Cargo.toml` above
/// the working directory (else in the working directory: a research run would leave a
/// `target/` wherever it was started), and no cache of compiled kernels at all, so every
/// process JIT-compiles every kernel again (NVRTC, about 0.8 s of one CPU core per kernel on
/// the lent H200; autotune compiles every candidate of every new shape). Unless a `cubecl.toml`
/// (cubecl's own config file, looked up the same way) says otherwise, both go to
/// `<ddrep cache dir>/cubecl`: `autotune/<cubecl version>/<device>/*.json.log` and
/// `<gpu tag>/cuda/<cubecl version>/ptx.json.log`, append-only files that cubecl locks per
/// write, so concurrent runs share them and a killed run keeps what it had finished. cubecl
/// keys compiled kernels by kernel alone, so the PTX goes under a folder named for the GPU's
/// architecture and the driver ([`gpu_tag`]): PTX built for one would not load on another; no
/// PTX cache when that cannot be read. [`check_device`] calls this once it has found the
/// driver, before the first GPU tensor (cubecl reads its config once), so CPU runs of a cuda
/// build never touch the driver; later calls do nothing.
#[cfg(feature = "cuda")]
fn configure_gpu_kernels(driver: &libloading::Library) {
    use burn::cubecl::config::{cache::CacheConfig, GlobalConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let has_toml = std::env::current_dir().ok().is_some_and(|d| {
            d.ancestors().any(|a| a.join("cubecl.toml").is_file() || a.join("CubeCL.toml").is_file())
        });
        let Some(dir) = crate::io::cache_dir().filter(|_| !has_toml) else { return };
        let mut config = GlobalConfig::default().override_from_env();
        config.autotune.cache = CacheConfig::File(dir.join("cubecl"));
        config.compilation.cache = gpu_tag(driver).map(|tag| CacheConfig::File(dir.join("cubecl").join(tag)));
        // DDREP_GPU_PROFILE=FILE: cubecl's kernel profiler appends a table of time per kernel
        // to FILE at each device sync (`ddrep bench unet` syncs once per eval).
        if let Some(file) = std::env::var_os("DDREP_GPU_PROFILE").filter(|f| !f.is_empty()) {
            config.profiling.logger.level = burn::cubecl::config::profiling::ProfilingLogLevel::Basic;
            config.profiling.logger.file = Some(file.into());
        }
        GlobalConfig::set(config);
    });
}

/// `ptx-sm<major><minor>-driver<version>` for CUDA device 0 (the one `--device cuda` uses),
/// read from the driver library directly, before cubecl starts; `None` without a GPU.
#[cfg(feature = "cuda")]
fn gpu_tag(lib: &libloading::Library) -> Option<String> {
    use libloading::Symbol;
    type Init = unsafe extern "C" fn(u32) -> i32;
    type DriverVersion = unsafe extern "C" fn(*mut i32) -> i32;
    type DeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type DeviceAttribute = unsafe extern "C" fn(*mut i32, i32, i32) -> i32;
    // CUdevice_attribute values of the compute capability (cuda.h).
    const MAJOR: i32 = 75;
    const MINOR: i32 = 76;
    // SAFETY: the CUDA driver API's documented signatures; every call is checked for
    // CUDA_SUCCESS (0) before its output is read.
    unsafe {
        let init: Symbol<Init> = lib.get(b"cuInit\0").ok()?;
        let driver_version: Symbol<DriverVersion> = lib.get(b"cuDriverGetVersion\0").ok()?;
        let device_get: Symbol<DeviceGet> = lib.get(b"cuDeviceGet\0").ok()?;
        let attribute: Symbol<DeviceAttribute> = lib.get(b"cuDeviceGetAttribute\0").ok()?;
        let (mut version, mut device, mut major, mut minor) = (0, 0, 0, 0);
        let ok = init(0) == 0
            && driver_version(&mut version) == 0
            && device_get(&mut device, 0) == 0
            && attribute(&mut major, MAJOR, device) == 0
            && attribute(&mut minor, MINOR, device) == 0;
        ok.then(|| format!("ptx-sm{major}{minor}-driver{version}"))
    }
}

/// `x` convolved by one of the implicit-GEMM tensor-core kernels that `kernel` names (see
/// `layers::GPU_CONV_ENV`): `ImplicitGemm` through burn-cubecl's `conv_forward`
/// (`ConvStrategy::ImplicitGemm`: `simple_sync`, cyclic reading, cmma tiles), the others
/// through cubek-convolution's `launch_ref` with their reading strategy and tile kind, as
/// burn-cubecl's autotune launches its candidates. `Err(x)` hands the input back when `B` is
/// not burn-cuda (the CPU, candle), so that the caller runs burn's conv2d. A kernel that
/// refuses a problem (a shape its tiles do not take, a kernel that does not compile) is said
/// once on stderr; a refused sibling is then replaced by `ImplicitGemm` for the rest of the
/// process, and a refused `ImplicitGemm` hands the input back for that conv.
#[cfg(feature = "cuda")]
pub fn cuda_conv2d_implicit_gemm<B: burn::tensor::backend::Backend>(
    x: burn::tensor::Tensor<B, 4>,
    w: &burn::tensor::Tensor<B, 4>,
    b: Option<&burn::tensor::Tensor<B, 1>>,
    options: burn::tensor::ops::ConvOptions<2>,
    kernel: crate::models::sd15::layers::GpuConv,
) -> Result<burn::tensor::Tensor<B, 4>, burn::tensor::Tensor<B, 4>> {
    use crate::models::sd15::layers::GpuConv;
    use burn_cubecl::kernel::conv::{conv_forward, ConvStrategy};
    use cubek::convolution::{AcceleratedTileKind as Tile, ReadingStrategy as Read};
    if !cube_tensors::<B>() {
        return Err(x);
    }
    let (input, weight, bias) = (to_cube(x), to_cube(w.clone()), b.map(|b| to_cube(b.clone())));
    let sibling = match kernel {
        GpuConv::ImplicitGemmMma => Some((Read::Strided, Tile::Mma)),
        GpuConv::ImplicitGemmAsync => Some((Read::AsyncCyclic, Tile::Cmma)),
        GpuConv::ImplicitGemmAsyncMma => Some((Read::AsyncStrided, Tile::Mma)),
        GpuConv::ImplicitGemmTma => Some((Read::Tma, Tile::Cmma)),
        GpuConv::ImplicitGemmTmaMma => Some((Read::Tma, Tile::Mma)),
        _ => None,
    };
    if let Some((read, tile)) = sibling.filter(|_| !CONV_SIBLING_REFUSED.load(std::sync::atomic::Ordering::Relaxed)) {
        match conv_forward_with(input.clone(), weight.clone(), bias.clone(), options.clone(), read, tile) {
            Ok(y) => return Ok(from_cube(y)),
            Err(e) => say_once(&CONV_SIBLING_REFUSED, || format!("DDREP_GPU_CONV={}: cubek refused a conv of input {:?} ({}); convs run the default implicit-gemm kernel from now on in this process", kernel.name(), input.shape.dims, brief_error(&e))),
        }
    }
    match conv_forward::<burn::cubecl::cuda::CudaRuntime, 2>(input.clone(), weight, bias, options, ConvStrategy::ImplicitGemm) {
        Ok(y) => Ok(from_cube(y)),
        Err(e) => {
            static SAID: AtomicBool = AtomicBool::new(false);
            say_once(&SAID, || format!("DDREP_GPU_CONV=implicit-gemm: burn-cubecl refused a conv of input {:?} ({}); such convs run burn's conv2d", input.shape.dims, brief_error(&format!("{e:?}"))));
            Err(from_cube(input))
        }
    }
}

/// Whether `B` runs ddrep's own kernels: burn-cuda, with `layers::GPU_OPS_ENV` read once (an
/// unknown value counts as the default; the CLI and the model load refuse it already).
#[cfg(feature = "cuda")]
fn own_kernels<B: burn::tensor::backend::Backend>() -> bool {
    use crate::models::sd15::layers::{gpu_ops, GpuOps};
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cube_tensors::<B>() && *ON.get_or_init(|| gpu_ops().unwrap_or_default() == GpuOps::Ddrep)
}

/// Set once one of [`crate::gpu_kernels`] has not run (a launch or compile error): burn's ops
/// serve the rest of the process, and the reason is said once on stderr.
#[cfg(feature = "cuda")]
static OPS_REFUSED: AtomicBool = AtomicBool::new(false);

/// Runs one of [`crate::gpu_kernels`] on a burn-cuda tensor, or hands `x` back (`Err`) where
/// they do not apply (other backends, `DDREP_GPU_OPS=burn`, after a refusal) or the kernel
/// did not run (then said once, and [`OPS_REFUSED`] set).
#[cfg(feature = "cuda")]
fn own_kernel<B: burn::tensor::backend::Backend, const D: usize, const E: usize>(
    x: burn::tensor::Tensor<B, D>,
    name: &str,
    kernel: impl FnOnce(Cube) -> crate::gpu_kernels::KernelResult<burn::cubecl::cuda::CudaRuntime>,
) -> Result<burn::tensor::Tensor<B, E>, burn::tensor::Tensor<B, D>> {
    if !own_kernels::<B>() || OPS_REFUSED.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(x);
    }
    match kernel(to_cube(x)) {
        Ok(y) => Ok(from_cube(y)),
        Err(refused) => {
            let (x, reason) = *refused;
            say_once(&OPS_REFUSED, || format!("{}=ddrep: the {name} kernel did not run ({}); burn's ops run the norms, softmax, GEGLU and adds from now on in this process", crate::models::sd15::layers::GPU_OPS_ENV, brief_error(&reason)));
            Err(from_cube(x))
        }
    }
}

/// `[N, C, H, W]` group norm (+ SiLU) by [`crate::gpu_kernels::group_norm`]; see [`own_kernel`].
#[cfg(feature = "cuda")]
pub fn cuda_group_norm<B: burn::tensor::backend::Backend>(
    x: burn::tensor::Tensor<B, 4>,
    gamma: &burn::tensor::Tensor<B, 1>,
    beta: &burn::tensor::Tensor<B, 1>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<burn::tensor::Tensor<B, 4>, burn::tensor::Tensor<B, 4>> {
    own_kernel(x, "group norm", |x| crate::gpu_kernels::group_norm(x, to_cube(gamma.clone()), to_cube(beta.clone()), groups, eps, silu))
}

/// Layer norm over the last axis of `[n, L, C]` by [`crate::gpu_kernels::layer_norm`]; see
/// [`own_kernel`].
#[cfg(feature = "cuda")]
pub fn cuda_layer_norm<B: burn::tensor::backend::Backend>(
    x: burn::tensor::Tensor<B, 3>,
    gamma: &burn::tensor::Tensor<B, 1>,
    beta: &burn::tensor::Tensor<B, 1>,
    eps: f64,
) -> Result<burn::tensor::Tensor<B, 3>, burn::tensor::Tensor<B, 3>> {
    own_kernel(x, "layer norm", |x| crate::gpu_kernels::layer_norm(x, to_cube(gamma.clone()), to_cube(beta.clone()), eps))
}

/// Softmax over the last axis by [`crate::gpu_kernels::softmax_last`]; see [`own_kernel`].
#[cfg(feature = "cuda")]
pub fn cuda_softmax<B: burn::tensor::backend::Backend, const D: usize>(x: burn::tensor::Tensor<B, D>) -> Result<burn::tensor::Tensor<B, D>, burn::tensor::Tensor<B, D>> {
    own_kernel(x, "softmax", crate::gpu_kernels::softmax_last)
}

/// GEGLU on `[n, L, 2 * inner]` (plus `bias`, `[2 * inner]`, first) by
/// [`crate::gpu_kernels::geglu`]; see [`own_kernel`].
#[cfg(feature = "cuda")]
pub fn cuda_geglu<B: burn::tensor::backend::Backend>(h: burn::tensor::Tensor<B, 3>, bias: Option<&burn::tensor::Tensor<B, 1>>) -> Result<burn::tensor::Tensor<B, 3>, burn::tensor::Tensor<B, 3>> {
    // The bias becomes a cube tensor only once `own_kernel` has found a burn-cuda backend.
    own_kernel(h, "GEGLU", |h| crate::gpu_kernels::geglu(h, bias.map(|b| to_cube(b.clone())).as_ref()))
}

/// Whether `B`'s float tensors are burn-cuda's own (not fusion's, whose element-wise ops fuse).
#[cfg(feature = "cuda")]
fn plain_cube<B: burn::tensor::backend::Backend>() -> bool {
    std::any::TypeId::of::<B::FloatTensorPrimitive>() == std::any::TypeId::of::<Cube>()
}

/// Whether [`add`], [`add_channels`], [`add_channels_residual`] and [`add_bias_residual`] may take their kernels: plain burn-cuda tensors (the
/// layout checks convert them) and ddrep's kernels on and not yet refused ([`own_kernel`]).
#[cfg(feature = "cuda")]
fn lined_adds<B: burn::tensor::backend::Backend>() -> bool {
    plain_cube::<B>() && own_kernels::<B>() && !OPS_REFUSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// `x` through one of ddrep's add kernels, `kernel`, where [`lined_adds`] holds and `takes`
/// says the layouts suit it, else (and where the kernel does not run) `burn_adds(x)`: the
/// shared course of the adds below. The other operands stay burn tensors in the closures and
/// become cube tensors only on the kernel's path (under fusion [`lined_adds`] is false, so
/// nothing is resolved out of fusion's stream).
#[cfg(feature = "cuda")]
fn lined_add<B: burn::tensor::backend::Backend, const D: usize>(
    x: burn::tensor::Tensor<B, D>,
    name: &str,
    takes: impl FnOnce(&Cube) -> bool,
    kernel: impl FnOnce(Cube) -> crate::gpu_kernels::KernelResult<burn::cubecl::cuda::CudaRuntime>,
    burn_adds: impl FnOnce(burn::tensor::Tensor<B, D>) -> burn::tensor::Tensor<B, D>,
) -> burn::tensor::Tensor<B, D> {
    if !lined_adds::<B>() {
        return burn_adds(x);
    }
    let xc = to_cube(x);
    if !takes(&xc) {
        return burn_adds(from_cube(xc));
    }
    match own_kernel(from_cube::<B, D>(xc), name, kernel) {
        Ok(y) => y,
        Err(x) => burn_adds(x),
    }
}

/// `a + b`: on burn-cuda, where both are laid out alike off the contiguous layout (the
/// channels-last residuals of the UNet under `DDREP_GPU_CONV=cublas`), one pass in lines
/// ([`crate::gpu_kernels::add_same_layout`]) instead of burn's element-wise kernel, which reads
/// such tensors one element at a time; anything else is burn's add.
#[cfg(feature = "cuda")]
pub fn add<B: burn::tensor::backend::Backend, const D: usize>(a: burn::tensor::Tensor<B, D>, b: burn::tensor::Tensor<B, D>) -> burn::tensor::Tensor<B, D> {
    let bc = || to_cube(b.clone());
    lined_add(a, "add", |a| crate::gpu_kernels::adds_alike(a, &bc()), |a| crate::gpu_kernels::add_same_layout(a, &bc()), |a| a + b.clone())
}

/// `x + v` per channel, `x` `[N, C, H, W]` and `v` `[1, C]` or `[N, C]`: on burn-cuda, where
/// `x` is channels-last (the cuBLAS convs' outputs: their bias, the resnets' time embedding),
/// one pass in lines along the channels ([`crate::gpu_kernels::add_channels`]); anything else
/// is burn's broadcast add.
#[cfg(feature = "cuda")]
pub fn add_channels<B: burn::tensor::backend::Backend>(x: burn::tensor::Tensor<B, 4>, v: burn::tensor::Tensor<B, 2>) -> burn::tensor::Tensor<B, 4> {
    let vc = || to_cube(v.clone());
    let [n, c] = v.dims();
    lined_add(x, "channel add", |x| crate::gpu_kernels::adds_channels(x, &vc()), |x| crate::gpu_kernels::add_channels(x, vc()), |x| x + v.clone().reshape([n, c, 1, 1]))
}

/// `r + (y + bias)`, `y` a linear layer's output `[.., C]` and `bias` its `[C]`: on burn-cuda,
/// where `y` is contiguous and `r` laid out alike, one pass
/// ([`crate::gpu_kernels::add_bias_residual`]) instead of two adds; anything else is burn's
/// two adds, as the layer and the residual would run them.
#[cfg(feature = "cuda")]
pub fn add_bias_residual<B: burn::tensor::backend::Backend, const D: usize>(y: burn::tensor::Tensor<B, D>, bias: &burn::tensor::Tensor<B, 1>, r: burn::tensor::Tensor<B, D>) -> burn::tensor::Tensor<B, D> {
    let (bc, rc) = (|| to_cube(bias.clone()), || to_cube(r.clone()));
    lined_add(
        y,
        "bias and residual add",
        |y| crate::gpu_kernels::adds_bias_residual(y, &bc(), &rc()),
        |y| crate::gpu_kernels::add_bias_residual(y, &bc(), &rc()),
        |y| r.clone() + (y + bias.clone().unsqueeze()),
    )
}

/// `r + (x + v)` per channel, `x` `[N, C, H, W]`, `v` `[1, C]` and `r` of `x`'s shape: on
/// burn-cuda, where `x` is channels-last and `r` laid out alike (the resnets' second conv and
/// their skip, the transformers' `proj_out` and their input, under the cuBLAS and
/// implicit-GEMM convs), one pass ([`crate::gpu_kernels::add_channels_residual`]); anything
/// else is burn's two adds.
#[cfg(feature = "cuda")]
pub fn add_channels_residual<B: burn::tensor::backend::Backend>(x: burn::tensor::Tensor<B, 4>, v: burn::tensor::Tensor<B, 2>, r: burn::tensor::Tensor<B, 4>) -> burn::tensor::Tensor<B, 4> {
    let (vc, rc) = (|| to_cube(v.clone()), || to_cube(r.clone()));
    let [n, c] = v.dims();
    lined_add(
        x,
        "channel and residual add",
        |x| crate::gpu_kernels::adds_channels_residual(x, &vc(), &rc()),
        |x| crate::gpu_kernels::add_channels_residual(x, vc(), &rc()),
        |x| r.clone() + (x + v.clone().reshape([n, c, 1, 1])),
    )
}

/// A conv weight `[out, in, kh, kw]` whose memory is laid out `[out, kh, kw, in]` (the same
/// tensor to every op; a view with permuted strides), when `B` is burn-cuda; else `w` as it is.
/// cubek's implicit-GEMM kernels take NHWC-ordered operands and copy a weight whose channels
/// are not contiguous at every call: 98 copies per SD1.5 UNet eval otherwise.
#[cfg(feature = "cuda")]
pub fn channels_last<B: burn::tensor::backend::Backend>(w: burn::tensor::Tensor<B, 4>) -> burn::tensor::Tensor<B, 4> {
    if !cube_tensors::<B>() {
        return w;
    }
    let ohwi = burn_cubecl::kernel::into_contiguous(to_cube(w.permute([0, 2, 3, 1])));
    from_cube::<B, 4>(ohwi).permute([0, 3, 1, 2])
}

/// Set once a sibling implicit-GEMM conv kernel has been refused (see
/// [`cuda_conv2d_implicit_gemm`]): cubecl keeps no record of a failed compile, so it would be
/// compiled again at every call.
#[cfg(feature = "cuda")]
static CONV_SIBLING_REFUSED: AtomicBool = AtomicBool::new(false);

/// burn-cubecl's `launch_convolution_forward` (not public) with a chosen reading strategy and
/// tile kind: NCHW tensors viewed as NHWC (cubek makes them channel-contiguous if they are
/// not), an NHWC output viewed back as NCHW.
#[cfg(feature = "cuda")]
fn conv_forward_with(
    input: Cube,
    weight: Cube,
    bias: Option<Cube>,
    options: burn::tensor::ops::ConvOptions<2>,
    read_strategy: cubek::convolution::ReadingStrategy,
    tile_kind: cubek::convolution::AcceleratedTileKind,
) -> Result<Cube, String> {
    use burn::tensor::ops::conv::calculate_conv_output_size;
    use burn_cubecl::ops::{numeric::empty_device_optimized_dtype, permute_nchw_to_nhwc, permute_nhwc_to_nchw};
    use cubek::convolution::{forward, ConvolutionArgs, Strategy};
    use cubek::matmul::{
        definition::{MatmulElems, MatmulGlobalElems},
        launch::MatmulInputHandleRef,
    };
    if options.groups != 1 || options.dilation != [1, 1] {
        return Err(format!("groups {} / dilation {:?}: only plain convolutions", options.groups, options.dilation));
    }
    let (input, weight) = (permute_nchw_to_nhwc(input), permute_nchw_to_nhwc(weight));
    let [n, h, w, _] = input.shape.dims::<4>();
    let [o, kh, kw, _] = weight.shape.dims::<4>();
    let out_size = |len: usize, k: usize, d: usize| calculate_conv_output_size(k, options.stride[d], options.padding[d], 1, len);
    let out = empty_device_optimized_dtype(
        input.client.clone(),
        input.device.clone(),
        burn::tensor::Shape::new([n, out_size(h, kh, 0), out_size(w, kw, 1), o]),
        input.dtype,
    );
    let dtypes = MatmulElems::from_globals(&MatmulGlobalElems { lhs: input.dtype.into(), rhs: weight.dtype.into(), out: input.dtype.into() });
    let bias = bias.as_ref().map(|bias| MatmulInputHandleRef::Normal(bias.as_handle_ref(), bias.dtype.into()));
    forward::launch_ref::<burn::cubecl::cuda::CudaRuntime, 2>(
        &Strategy::Simple { read_strategy, tile_kind },
        &input.client,
        &MatmulInputHandleRef::new(input.as_handle_ref(), input.dtype.into()),
        &MatmulInputHandleRef::new(weight.as_handle_ref(), weight.dtype.into()),
        &bias,
        &out.as_handle_ref(),
        ConvolutionArgs { stride: options.stride, padding: options.padding, dilation: options.dilation },
        dtypes,
    )
    .map_err(|e| format!("{e:?}"))?;
    Ok(permute_nhwc_to_nchw(out))
}

/// `a @ b` (batch dims broadcast) by the cubek-matmul routine `kernel` names (see
/// `layers::GPU_MATMUL_ENV`), launched as burn-cubecl's matmul launches its default. `Err`
/// hands the inputs back when `B` is not burn-cuda, for `Auto`, or once a routine has been
/// refused (said once on stderr; burn's matmul then runs for the rest of the process).
#[cfg(feature = "cuda")]
#[allow(clippy::type_complexity)]
pub fn cuda_matmul<B: burn::tensor::backend::Backend, const D: usize>(
    a: burn::tensor::Tensor<B, D>,
    b: burn::tensor::Tensor<B, D>,
    kernel: crate::models::sd15::layers::GpuMatmul,
) -> Result<burn::tensor::Tensor<B, D>, (burn::tensor::Tensor<B, D>, burn::tensor::Tensor<B, D>)> {
    use crate::models::sd15::layers::GpuMatmul;
    use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
    use cubek::matmul::launch::{MatmulInputHandleRef, Strategy};
    use cubek::matmul::routines::{double_buffering::DoubleBufferingArgs, ordered_double_buffering::OrderedSelectionArgs, simple::SimpleArgs, BlueprintStrategy};
    let strategy = match kernel {
        GpuMatmul::Auto | GpuMatmul::Cublas => None,
        GpuMatmul::SimpleMma => Some(Strategy::SimpleCyclicMma(BlueprintStrategy::Inferred(SimpleArgs { multi_rows: false }))),
        GpuMatmul::MultiRows => Some(Strategy::SimpleCyclicCmma(BlueprintStrategy::Inferred(SimpleArgs { multi_rows: true }))),
        GpuMatmul::MmaMultiRows => Some(Strategy::SimpleCyclicMma(BlueprintStrategy::Inferred(SimpleArgs { multi_rows: true }))),
        GpuMatmul::Double => Some(Strategy::DoubleCyclicCmma(BlueprintStrategy::Inferred(DoubleBufferingArgs { specialized: false }))),
        GpuMatmul::DoubleMma => Some(Strategy::DoubleCyclicMma(BlueprintStrategy::Inferred(DoubleBufferingArgs { specialized: false }))),
        GpuMatmul::OrderedDouble => Some(Strategy::OrderedDoubleCmma(BlueprintStrategy::Inferred(OrderedSelectionArgs {
            partition_k: Some(2),
            row_count: Some(8),
            rows_per_plane: Some(2),
        }))),
        GpuMatmul::SpecializedTmaMma => Some(Strategy::SpecializedTmaMma(BlueprintStrategy::Inferred(().into()))),
    };
    let Some(strategy) = strategy.filter(|_| cube_tensors::<B>() && !MATMUL_REFUSED.load(std::sync::atomic::Ordering::Relaxed)) else {
        return Err((a, b));
    };
    let inputs = (a.clone(), b.clone());
    let (lhs, rhs) = (to_cube(a), to_cube(b));
    let out = burn_cubecl::kernel::matmul::init_matmul_output(&lhs, &rhs, lhs.dtype);
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems { lhs: lhs.dtype.into(), rhs: lhs.dtype.into(), out: out.dtype.into() });
    let launched = cubek::matmul::launch::launch_ref(
        &strategy,
        &lhs.client,
        &MatmulInputHandleRef::new(lhs.as_handle_ref(), lhs.dtype.into()),
        &MatmulInputHandleRef::new(rhs.as_handle_ref(), lhs.dtype.into()),
        &out.as_handle_ref(),
        &mut dtypes,
    );
    match launched {
        Ok(()) => Ok(from_cube(out)),
        Err(e) => {
            say_once(&MATMUL_REFUSED, || format!("DDREP_GPU_MATMUL={}: cubek refused a matmul of {:?} x {:?} ({}); burn's matmul runs from now on in this process", kernel.name(), lhs.shape.dims, rhs.shape.dims, brief_error(&format!("{e:?}"))));
            Err(inputs)
        }
    }
}

/// `alpha (a @ b)` (batch dims broadcast) by cuBLAS ([`crate::cublas::matmul`]) for
/// `DDREP_GPU_MATMUL=cublas`. `Err` hands the inputs back, for burn's matmul, when `B` is not
/// burn-cuda or cuBLAS did not take the problem (said once on stderr; when cuBLAS itself is
/// missing, every later call goes straight to burn's matmul).
#[cfg(feature = "cuda")]
#[allow(clippy::type_complexity)]
pub fn cuda_cublas_matmul<B: burn::tensor::backend::Backend, const D: usize>(
    a: burn::tensor::Tensor<B, D>,
    b: burn::tensor::Tensor<B, D>,
    alpha: f32,
) -> Result<burn::tensor::Tensor<B, D>, (burn::tensor::Tensor<B, D>, burn::tensor::Tensor<B, D>)> {
    if !cube_tensors::<B>() || crate::cublas::unavailable() {
        return Err((a, b));
    }
    crate::cublas::matmul(to_cube(a), to_cube(b), alpha).map(from_cube).map_err(|refused| {
        let ((a, b), reason) = *refused;
        static SAID: AtomicBool = AtomicBool::new(false);
        say_once(&SAID, || format!("DDREP_GPU_MATMUL=cublas: cuBLAS did not run a matmul of {:?} x {:?} ({reason}); burn's matmul runs such matmuls", a.shape.dims, b.shape.dims));
        (from_cube(a), from_cube(b))
    })
}

/// An uninitialised `[n, heads, L, d]` tensor laid out `[n, L, heads, d]` in memory, for
/// [`cuda_cublas_matmul_into`] to fill block by block with attention's output (whose
/// `swap_dims(1, 2)` is then contiguous: the heads merge without a copy), when `B` is plain
/// burn-cuda and cuBLAS has not been found missing; `None` otherwise.
#[cfg(feature = "cuda")]
pub fn heads_merged_output<B: burn::tensor::backend::Backend>([n, heads, l, d]: [usize; 4], device: &B::Device) -> Option<burn::tensor::Tensor<B, 4>> {
    (plain_cube::<B>() && !crate::cublas::unavailable()).then(|| burn::tensor::Tensor::<B, 4>::empty([n, l, heads, d], device).swap_dims(1, 2))
}

/// `alpha (a @ b)` written by cuBLAS into rows `row0..` (second-to-last axis) of `out`, a
/// tensor from [`heads_merged_output`] that no one else holds (its memory is written in place,
/// [`crate::cublas::matmul_into`]). `Err` hands the operands back, `out` unwritten, when cuBLAS
/// did not take the product (said once on stderr).
#[cfg(feature = "cuda")]
#[allow(clippy::type_complexity)]
pub fn cuda_cublas_matmul_into<B: burn::tensor::backend::Backend, const D: usize>(
    a: burn::tensor::Tensor<B, D>,
    b: burn::tensor::Tensor<B, D>,
    out: &burn::tensor::Tensor<B, D>,
    row0: usize,
    alpha: f32,
) -> Result<(), (burn::tensor::Tensor<B, D>, burn::tensor::Tensor<B, D>)> {
    if !plain_cube::<B>() || crate::cublas::unavailable() {
        return Err((a, b));
    }
    crate::cublas::matmul_into(to_cube(a), to_cube(b), &to_cube(out.clone()), row0, alpha).map_err(|refused| {
        let ((a, b), reason) = *refused;
        static SAID: AtomicBool = AtomicBool::new(false);
        say_once(&SAID, || format!("DDREP_GPU_MATMUL=cublas: cuBLAS did not write an attention block of {:?} x {:?} into its head-merged output ({reason}); such blocks are computed apart and copied in", a.shape.dims, b.shape.dims));
        (from_cube(a), from_cube(b))
    })
}

/// `x` convolved with `w` plus `b` (when there is one) by cuBLAS ([`crate::cublas::conv2d`],
/// the output in NHWC memory viewed as NCHW) for `DDREP_GPU_CONV=cublas`; `Err` hands `x` back
/// as [`cuda_cublas_matmul`] does.
#[cfg(feature = "cuda")]
pub fn cuda_cublas_conv2d<B: burn::tensor::backend::Backend>(
    x: burn::tensor::Tensor<B, 4>,
    w: &burn::tensor::Tensor<B, 4>,
    b: Option<&burn::tensor::Tensor<B, 1>>,
    stride: usize,
    padding: usize,
) -> Result<burn::tensor::Tensor<B, 4>, burn::tensor::Tensor<B, 4>> {
    if !cube_tensors::<B>() || crate::cublas::unavailable() {
        return Err(x);
    }
    let o = w.dims()[0];
    match crate::cublas::conv2d(to_cube(x), &to_cube(w.clone()), stride, padding) {
        Ok(y) => Ok(match b {
            Some(b) => add_channels(from_cube::<B, 4>(y), b.clone().reshape([1, o])),
            None => from_cube(y),
        }),
        Err(refused) => {
            let (x, reason) = *refused;
            static SAID: AtomicBool = AtomicBool::new(false);
            say_once(&SAID, || format!("DDREP_GPU_CONV=cublas: cuBLAS did not run a conv of input {:?} ({reason}); such convs run the implicit-gemm kernel", x.shape.dims));
            Err(from_cube(x))
        }
    }
}

/// Set once a [`cuda_matmul`] routine has been refused.
#[cfg(feature = "cuda")]
static MATMUL_REFUSED: AtomicBool = AtomicBool::new(false);

/// `softmax(q k^T / sqrt(d)) v` on `[n, heads, L, d]` by cubek's tensor-core flash-attention
/// routine (`BlackboxAccelerated`, 16x16 tiles, f32 accumulation, no causal mask), for
/// `DDREP_GPU_ATTENTION=flash`. The routine needs `d` to be a multiple of 16 (SD1.5's 40 is
/// not): `layers::attention_with_padded_head_dim` pads it.
/// `Err((q, k, v))` hands the inputs back when `B` is not burn-cuda, when `d` is above
/// [`FLASH_MAX_HEAD_DIM`], or when the routine refuses the problem (said once on stderr, and
/// then every call: [`FLASH_REFUSED`]).
#[cfg(feature = "cuda")]
#[allow(clippy::type_complexity)]
pub fn cuda_flash_attention<B: burn::tensor::backend::Backend>(
    q: burn::tensor::Tensor<B, 4>,
    k: burn::tensor::Tensor<B, 4>,
    v: burn::tensor::Tensor<B, 4>,
) -> Result<burn::tensor::Tensor<B, 4>, (burn::tensor::Tensor<B, 4>, burn::tensor::Tensor<B, 4>, burn::tensor::Tensor<B, 4>)> {
    use burn::cubecl::ir::{ElemType, FloatKind, StorageType};
    use burn::tensor::{DType, Tensor};
    use cubek::attention::definition::{AccumulatorPrecision, AttentionGlobalTypes, AttentionOptions};
    use cubek::attention::launch::{launch_ref, BlueprintStrategy, Strategy};
    if !cube_tensors::<B>() || q.dims()[3] > FLASH_MAX_HEAD_DIM || FLASH_REFUSED.load(std::sync::atomic::Ordering::Relaxed) {
        return Err((q, k, v));
    }
    let inputs = (q.clone(), k.clone(), v.clone());
    let flash = |q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>| {
        let out = Tensor::<B, 4>::empty(q.dims(), &q.device());
        let cube = |t: Tensor<B, 4>| -> Cube { burn_cubecl::kernel::into_contiguous(to_cube(t)) };
        let (qc, kc, vc, oc) = (cube(q), cube(k), cube(v), cube(out));
        let float = match qc.dtype {
            DType::F16 => FloatKind::F16,
            DType::BF16 => FloatKind::BF16,
            _ => FloatKind::F32,
        };
        launch_ref::<burn::cubecl::cuda::CudaRuntime>(
            Strategy::BlackboxAccelerated(BlueprintStrategy::Inferred(())),
            &qc.client,
            &qc.as_handle_ref(),
            &kc.as_handle_ref(),
            &vc.as_handle_ref(),
            &None,
            &oc.as_handle_ref(),
            &AttentionGlobalTypes::from_single_dtype(StorageType::Scalar(ElemType::Float(float))),
            AttentionOptions {
                causal: false,
                accumulator_precision: AccumulatorPrecision::Strict(StorageType::Scalar(ElemType::Float(FloatKind::F32))),
            },
        )
        .map(|()| from_cube::<B, 4>(oc))
    };
    crate::models::sd15::layers::attention_with_padded_head_dim(q, k, v, 16, flash).map_err(|e| {
        say_once(&FLASH_REFUSED, || format!("DDREP_GPU_ATTENTION=flash: cubek refused attention of q {:?}, k {:?} ({}); attention runs the blocked path from now on in this process", inputs.0.dims(), inputs.1.dims(), brief_error(&format!("{e:?}"))));
        inputs
    })
}

/// Set once cubek's attention has refused a problem: later calls go straight to the blocked
/// path. A refusal is usually a kernel that does not compile (on the H200, 2026-11-26, cubek
/// 0.1.1's accelerated tile declared its f32 accumulator fragments with a layout, which NVRTC
/// rejects; fixed upstream by cubecl PR #1570, and here by the patched cubecl-cpp in
/// vendor/, not yet run on a GPU), and cubecl keeps no record of a failed compile, so every
/// call would compile it again: 5 s per SD1.5 UNet eval.
#[cfg(feature = "cuda")]
static FLASH_REFUSED: AtomicBool = AtomicBool::new(false);

/// A launch error cut to one line: its first line and the first compiler diagnostic
/// (`...: error: ...`), with a count of the other diagnostics, never the kernel source that
/// cubecl appends to a compilation error.
#[cfg(any(test, feature = "cuda"))]
fn brief_error(e: &str) -> String {
    const MAX_CHARS: usize = 400;
    let lines: Vec<&str> = e.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let diagnostics: Vec<&str> = lines.iter().copied().filter(|l| l.contains("error:")).collect();
    let mut out = lines.first().copied().unwrap_or("").to_string();
    if let Some(first) = diagnostics.first().filter(|d| **d != out) {
        out = format!("{out}: {first}");
    }
    if diagnostics.len() > 1 {
        out = format!("{out} (+{} more errors)", diagnostics.len() - 1);
    }
    if out.chars().count() > MAX_CHARS {
        out = out.chars().take(MAX_CHARS).chain("...".chars()).collect();
    }
    out
}

/// The widest head that [`cuda_flash_attention`] takes: SD1.5's UNet heads are 40, 80 and 160
/// wide. cubek's inferred blueprint keeps a 16-query tile's whole output row block, `d / 16`
/// f32 accumulator tiles, in one plane's registers, so the VAE's single 512-wide head would
/// need 32 of them (256 registers a lane for the accumulators alone) and spill; it runs the
/// blocked path. (A limit from the blueprint's arithmetic, not yet measured on a GPU.)
#[cfg(feature = "cuda")]
const FLASH_MAX_HEAD_DIM: usize = 160;

/// A float tensor of plain burn-cuda (no fusion), as burn-cubecl's and cubek's kernels take it.
#[cfg(feature = "cuda")]
type Cube = burn_cubecl::tensor::CubeTensor<burn::cubecl::cuda::CudaRuntime>;

/// burn-cuda's backend under burn's fusion, used here only to move tensors in and out of its
/// stream: its float tensors hold their dtype, so the f32 parameter serves f16 and bf16 too.
#[cfg(feature = "cuda-fusion")]
type FusedInner = burn_cubecl::CubeBackend<burn::cubecl::cuda::CudaRuntime, f32, i32, u8>;
/// A float tensor of burn-cuda with fusion (`burn::backend::Cuda` in `cuda-fusion` builds).
#[cfg(feature = "cuda-fusion")]
type Fused = burn_fusion::FusionTensor<burn_cubecl::fusion::FusionCubeRuntime<burn::cubecl::cuda::CudaRuntime, u8>>;

/// Whether `B`'s float tensors are burn-cuda tensors that [`to_cube`] and [`from_cube`] take:
/// plain, or (in `cuda-fusion` builds) under burn's fusion.
#[cfg(feature = "cuda")]
fn cube_tensors<B: burn::tensor::backend::Backend>() -> bool {
    #[cfg(feature = "cuda-fusion")]
    if fused::<B>() {
        return true;
    }
    plain_cube::<B>()
}

/// Whether `B`'s float tensors are [`Fused`] tensors.
#[cfg(feature = "cuda-fusion")]
fn fused<B: burn::tensor::backend::Backend>() -> bool {
    std::any::TypeId::of::<B::FloatTensorPrimitive>() == std::any::TypeId::of::<Fused>()
}

/// A float tensor of `B` as a [`Cube`] ([`cube_tensors`] checked by the caller). Under fusion
/// this runs the operations queued before it, as any read does: a custom kernel ends a fused
/// chain.
#[cfg(feature = "cuda")]
fn to_cube<B: burn::tensor::backend::Backend, const D: usize>(t: burn::tensor::Tensor<B, D>) -> Cube {
    let p = t.into_primitive().tensor();
    #[cfg(feature = "cuda-fusion")]
    if fused::<B>() {
        let f: Fused = same_type(p);
        return f.client.clone().resolve_tensor_float::<FusedInner>(f);
    }
    same_type(p)
}

/// A [`Cube`] as a float tensor of `B`, the inverse of [`to_cube`]: under fusion it is
/// registered in the stream as an initialised tensor, as burn's `from_data` registers one.
#[cfg(feature = "cuda")]
fn from_cube<B: burn::tensor::backend::Backend, const D: usize>(c: Cube) -> burn::tensor::Tensor<B, D> {
    use burn::tensor::{Tensor, TensorPrimitive};
    #[cfg(feature = "cuda-fusion")]
    if fused::<B>() {
        use burn_fusion::{stream::OperationStreams, NoOp};
        use burn_ir::{BackendIr, InitOperationIr, OperationIr, OperationOutput};
        let client = burn_fusion::get_client::<FusedInner>(&c.device);
        let (shape, dtype) = (c.shape.clone(), c.dtype);
        let handle = <FusedInner as BackendIr>::float_tensor_handle(c);
        let init = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
        let f: Fused = client.register(OperationStreams::default(), OperationIr::Init(init), NoOp::<FusedInner>::new()).output();
        return Tensor::from_primitive(TensorPrimitive::Float(same_type(f)));
    }
    Tensor::from_primitive(TensorPrimitive::Float(same_type(c)))
}

/// Prints `message()` on stderr the first time `flag` is seen unset (a fallback worth one line,
/// not one per layer and eval).
#[cfg(feature = "cuda")]
fn say_once(flag: &AtomicBool, message: impl FnOnce() -> String) {
    if !flag.swap(true, std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{}", message());
    }
}

/// Moves a value between two names of one type; the callers check that first ([`cube_tensors`]).
#[cfg(feature = "cuda")]
fn same_type<T: 'static, U: 'static>(t: T) -> U {
    let mut slot = Some(t);
    (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<U>>().and_then(Option::take).expect("same type (TypeId checked)")
}

/// How this build picks its GPU kernels, for reports: burn's autotune (`cuda-autotune`) or
/// burn-cubecl's fixed choices (`cuda`).
pub fn gpu_kernels() -> &'static str {
    if cfg!(feature = "cuda-autotune") {
        "autotune"
    } else {
        "fixed kernels"
    }
}

/// The NVIDIA driver library, by the names cudarc loads it by.
///
/// # Safety
/// Loading it runs its initialisers.
#[cfg(feature = "cuda")]
unsafe fn driver_library() -> Option<libloading::Library> {
    ["libcuda.so.1", "libcuda.so"].iter().find_map(|n| libloading::Library::new(n).ok())
}

/// Checks a `--device` name against this build and, for `cuda`, that the NVIDIA driver
/// library can be loaded: cudarc panics at the first tensor when it cannot, so a machine
/// without a driver gets this one-line error instead.
pub fn check_device(device: &str) -> anyhow::Result<()> {
    match device {
        "cpu" => Ok(()),
        #[cfg(feature = "cuda")]
        "cuda" => {
            // SAFETY: loading the driver library runs its initialisers, as cudarc would.
            if let Some(driver) = unsafe { driver_library() } {
                configure_gpu_kernels(&driver);
                // Stays loaded: `gpu_tag` may have initialised it (cudarc loads it again for
                // cubecl; unloading an initialised driver is not something to rely on).
                std::mem::forget(driver);
                return Ok(());
            }
            anyhow::bail!("--device cuda: the NVIDIA driver library (libcuda.so.1) is not found on this machine; install the driver or set LD_LIBRARY_PATH to its folder, or use --device cpu")
        }
        other => anyhow::bail!("unknown or unavailable device '{other}' (this build has: cpu{})", if cfg!(feature = "cuda") { ", cuda" } else { "" }),
    }
}

/// Parses `--precision` and checks it together with `--device` against this build and
/// machine (half precision is for CUDA only).
pub fn check_device_precision(device: &str, precision: &str) -> anyhow::Result<crate::models::sd15::precision::Precision> {
    check_device(device)?;
    let p: crate::models::sd15::precision::Precision = precision.parse()?;
    p.check_device(device)?;
    Ok(p)
}

/// Evaluates `$body` with the type `$B` set to the backend that computes the SD1.5 model for a
/// `(device, precision)` pair that [`check_device_precision`] accepted: f32 ndarray on the
/// CPU, `Cuda<f32>`, `Cuda<f16>` or `Cuda<bf16>` on CUDA.
macro_rules! with_model_backend {
    ($device:expr, $precision:expr, |$B:ident| $body:expr) => {{
        #[allow(unused_imports)]
        use $crate::models::sd15::precision::Precision;
        match ($device, $precision) {
            ("cpu", _) => {
                type $B = $crate::backend::Cpu;
                $body
            }
            #[cfg(feature = "cuda")]
            ("cuda", Precision::F32) => {
                type $B = $crate::backend::Cuda;
                $body
            }
            #[cfg(feature = "cuda")]
            ("cuda", Precision::F16) => {
                type $B = $crate::backend::CudaF16;
                $body
            }
            #[cfg(feature = "cuda")]
            ("cuda", Precision::Bf16) => {
                type $B = $crate::backend::CudaBf16;
                $body
            }
            (other, _) => unreachable!("device '{other}' was checked by check_device_precision"),
        }
    }};
}
pub(crate) use with_model_backend;

#[cfg(test)]
mod tests {
    use super::brief_error;

    /// The shape of the refusal cubek's attention gave on the H200 (2026-11-26): a first line,
    /// `Caused by:` chains, NVRTC diagnostics with warnings among them, then the kernel source.
    #[test]
    fn a_compilation_error_is_cut_to_its_first_diagnostic() {
        let e = "A compilation error happened during launch\nCaused by:\n  An error caused the compilation to fail\nCaused by:\n  [Compilation Error] \n    default_program(62): error: incomplete type \"fragment<accumulator, 16, 16, 16, float, row_major>\" is not allowed\n      frag_acc_120;\n    default_program(63): error: incomplete type is not allowed\n    default_program(718): warning #68-D: integer conversion resulted in a change of sign\n    default_program(218): error: no instance of function template\n    4 errors detected in the compilation of \"default_program\".\n[Source]\n#include <mma.h>\nconst uint32 l_1 = 0;\n";
        assert_eq!(
            brief_error(e),
            "A compilation error happened during launch: default_program(62): error: incomplete type \"fragment<accumulator, 16, 16, 16, float, row_major>\" is not allowed (+2 more errors)"
        );
        assert_eq!(brief_error("Unable to launch: no tile fits"), "Unable to launch: no tile fits");
        let long = "x".repeat(1000);
        assert_eq!(brief_error(&long).chars().count(), 403);
        assert_eq!(brief_error(""), "");
    }
}
