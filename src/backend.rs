//! Backend choices: the CPU (ndarray) backend by default, CUDA with the `cuda` feature.

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

/// Where cubecl (burn's GPU kernels) keeps its autotune picks. Its default is a `target/`
/// folder beside the nearest `Cargo.toml` above the working directory, else in the working
/// directory itself: a research run would leave a `target/` wherever it was started. Unless a
/// `cubecl.toml` (cubecl's own config file, looked up the same way) says otherwise, the picks go
/// to `<ddrep cache dir>/cubecl` instead. Call before the first GPU tensor (cubecl reads its
/// config once); later calls do nothing.
#[cfg(feature = "cuda")]
pub fn configure_gpu_kernels() {
    use burn::cubecl::config::{cache::CacheConfig, GlobalConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let has_toml = std::env::current_dir().ok().is_some_and(|d| {
            d.ancestors().any(|a| a.join("cubecl.toml").is_file() || a.join("CubeCL.toml").is_file())
        });
        let Some(dir) = crate::io::cache_dir().filter(|_| !has_toml) else { return };
        let mut config = GlobalConfig::default().override_from_env();
        config.autotune.cache = CacheConfig::File(dir.join("cubecl"));
        GlobalConfig::set(config);
    });
}

/// Checks a `--device` name against this build and, for `cuda`, that the NVIDIA driver
/// library can be loaded: cudarc panics at the first tensor when it cannot, so a machine
/// without a driver gets this one-line error instead.
pub fn check_device(device: &str) -> anyhow::Result<()> {
    match device {
        "cpu" => Ok(()),
        #[cfg(feature = "cuda")]
        "cuda" => {
            for name in ["libcuda.so.1", "libcuda.so"] {
                // SAFETY: loading the driver library runs its initialisers, as cudarc would.
                if unsafe { libloading::Library::new(name) }.is_ok() {
                    return Ok(());
                }
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
