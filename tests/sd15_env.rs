//! `DDREP_GPU_CONV` through the library (no CLI): the environment is process-wide, so this
//! file holds the one test that sets it.

mod sd15_common;

use ddrep::models::sd15::Sd15;
use sd15_common::{model_dir, B};

#[test]
fn unknown_gpu_conv_value_fails_the_load_with_one_line() {
    let device = Default::default();
    std::env::set_var("DDREP_GPU_CONV", "fast");
    let err = Sd15::<B>::load(model_dir(), &device).err().expect("an unknown DDREP_GPU_CONV must fail the load");
    let msg = format!("{err:#}");
    assert_eq!(msg, "DDREP_GPU_CONV=\"fast\": expected `native` (the default), `im2col` or `implicit-gemm`");
    // The known values load (on the CPU backend they change nothing).
    for ok in ["native", "im2col", "implicit-gemm", ""] {
        std::env::set_var("DDREP_GPU_CONV", ok);
        Sd15::<B>::load(model_dir(), &device).unwrap_or_else(|e| panic!("DDREP_GPU_CONV={ok:?}: {e:#}"));
    }
    std::env::remove_var("DDREP_GPU_CONV");
}
