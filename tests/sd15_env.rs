//! `DDREP_GPU_CONV`, `DDREP_GPU_ATTENTION`, `DDREP_GPU_MATMUL` and `DDREP_GPU_OPS` through the library (no CLI): the environment is
//! process-wide, so this file holds the one test that sets them.

mod sd15_common;

use ddrep::models::sd15::Sd15;
use sd15_common::{model_dir, B};

#[test]
fn unknown_gpu_kernel_values_fail_the_load_with_one_line() {
    let device = Default::default();
    let cases = [
        (
            "DDREP_GPU_CONV",
            "DDREP_GPU_CONV=\"fast\": expected `implicit-gemm` (the default), `implicit-gemm-mma`, `implicit-gemm-async`, `implicit-gemm-async-mma`, `implicit-gemm-tma`, `implicit-gemm-tma-mma`, `native`, `im2col` or `cublas`",
            &["native", "im2col", "implicit-gemm", "implicit-gemm-mma", "implicit-gemm-async", "implicit-gemm-async-mma", "implicit-gemm-tma", "implicit-gemm-tma-mma", "cublas", ""][..],
        ),
        ("DDREP_GPU_ATTENTION", "DDREP_GPU_ATTENTION=\"fast\": expected `blocked` (the default) or `flash`", &["blocked", "flash", ""][..]),
        ("DDREP_GPU_OPS", "DDREP_GPU_OPS=\"fast\": expected `ddrep` (the default) or `burn`", &["ddrep", "burn", ""][..]),
        (
            "DDREP_GPU_MATMUL",
            "DDREP_GPU_MATMUL=\"fast\": expected `auto` (the default), `simple-mma`, `multi-rows`, `mma-multi-rows`, `double`, `double-mma`, `ordered-double`, `specialized-tma-mma` or `cublas`",
            &["auto", "simple-mma", "multi-rows", "mma-multi-rows", "double", "double-mma", "ordered-double", "specialized-tma-mma", "cublas", ""][..],
        ),
    ];
    for (var, expected, known) in cases {
        std::env::set_var(var, "fast");
        let err = Sd15::<B>::load(model_dir(), &device).err().unwrap_or_else(|| panic!("an unknown {var} must fail the load"));
        assert_eq!(format!("{err:#}"), expected);
        // The known values load (on the CPU backend they change nothing).
        for ok in known {
            std::env::set_var(var, ok);
            Sd15::<B>::load(model_dir(), &device).unwrap_or_else(|e| panic!("{var}={ok:?}: {e:#}"));
            // Reports (`ddrep bench unet`) name the value in force.
            let switches = ddrep::models::sd15::layers::gpu_switches();
            assert!(ok.is_empty() || switches.contains(&format!("{var}={ok} ")) || switches.ends_with(&format!("{var}={ok}")), "{switches}");
        }
        std::env::remove_var(var);
    }
}
