//! SD1.5 on another backend than the sampler (`CastSd15`, what `--precision f16|bf16` uses on
//! CUDA), checked on the CPU with the model on `NdArray<f64>` and the sampler on the f32
//! backend: the casts in and out, the denoiser and the decode match the diffusers fixture.
//! The same model code in real f16 arithmetic runs here on burn-candle's CPU backend
//! (burn-ndarray has no half types): every parity check within the tolerance `ddrep parity`
//! applies on CUDA (candle's CPU matmul has no bf16, so bf16 is checked on a GPU only). On a
//! CPU build the `--precision` flag is refused with a one-line error, tested here too.

mod common;
mod sd15_common;

use std::process::Command;

use burn::backend::NdArray;
use burn::tensor::Tensor;
use ddrep::diffusion::Denoiser;
use ddrep::models::sd15::precision::{CastSd15, Precision};
use ddrep::models::sd15::LoadOptions;
use ddrep::pipeline::{CastModel, Model};
use sd15_common::{check, model_dir, Expected, B};

type F64 = NdArray<f64>;

/// Every `ddrep parity` check with the model in half precision `L` on the CPU, within the
/// tolerance the command uses for that precision.
fn half_precision_parity<L: burn::tensor::backend::Backend>(precision: Precision) {
    let fixtures = sd15_common::fixture("");
    let checks = ddrep::parity::run_checks::<L>(&fixtures, &Default::default()).unwrap();
    let tol = ddrep::parity::default_tol("cpu", precision);
    assert_eq!(checks.len(), 8);
    let mut worst = 0f64;
    for c in &checks {
        eprintln!("{precision} {:<36} {:.2e}", c.name, c.rel_err);
        assert!(c.rel_err <= tol, "{precision}: {} has relative error {:.3e} > {tol:.0e}", c.name, c.rel_err);
        worst = worst.max(c.rel_err);
    }
    // Half precision must really be in use: f32 arithmetic would be far below 1e-4.
    assert!(worst > 1e-4, "{precision}: worst error {worst:.2e} looks like f32 arithmetic");
}

#[test]
fn f16_model_code_matches_the_fixture_within_the_f16_tolerance() {
    half_precision_parity::<burn_candle::Candle<half::f16>>(Precision::F16);
}

/// The cast path `--precision f16` takes (sampler in f32, model in f16) on the CFG batch.
#[test]
fn f16_cast_denoiser_matches_the_fixture() {
    let m = CastSd15::<burn_candle::Candle<half::f16>, B>::load(&model_dir(), Precision::F16, &Default::default(), LoadOptions::default()).unwrap();
    let exp = Expected::open("unet_cfg.safetensors");
    let x: Tensor<B, 4> = exp.get::<4>("sample");
    let both = m.eps(Tensor::cat(vec![x.clone(), x], 0), &[500, 500], &[None, Some("a photo of an astronaut riding a horse")]).unwrap();
    check("f16 cast eps_uncond", both.clone().narrow(0, 0, 1), exp.get::<4>("eps_uncond"), 1e-2);
    check("f16 cast eps_cond", both.narrow(0, 1, 1), exp.get::<4>("eps_cond"), 1e-2);
    assert!(m.describe().ends_with("[f16]"), "{}", m.describe());
}

#[test]
fn model_on_another_backend_matches_the_fixture() {
    let device = Default::default();
    let m = CastSd15::<F64, B>::load(&model_dir(), Precision::F32, &device, LoadOptions::default()).unwrap();
    let exp = Expected::open("unet_cfg.safetensors");
    let x: Tensor<B, 4> = exp.get::<4>("sample");
    let prompt = "a photo of an astronaut riding a horse";
    let both = m.eps(Tensor::cat(vec![x.clone(), x], 0), &[500, 500], &[None, Some(prompt)]).unwrap();
    check("cast eps_uncond", both.clone().narrow(0, 0, 1), exp.get::<4>("eps_uncond"), 1e-4);
    check("cast eps_cond", both.narrow(0, 1, 1), exp.get::<4>("eps_cond"), 1e-4);
    assert_eq!(m.sample_shape(), [4, 16, 16]);
    assert!(m.describe().ends_with("[f32]"), "{}", m.describe());

    let vae = Expected::open("vae.safetensors");
    check("cast decode", m.decode(vae.get::<4>("decode_latents")), vae.get::<4>("decode_image"), 1e-4);

    // Through the pipeline's model enum, as `ddrep sample` uses it.
    let lat = vae.get::<4>("decode_latents");
    let [n, c, h, w] = lat.dims();
    let flat: Vec<f32> = lat.into_data().into_vec().unwrap();
    let samples: Vec<Vec<f32>> = flat.chunks(c * h * w).map(|s| s.to_vec()).collect();
    let record = CastModel::<B>::record(&m).unwrap();
    assert_eq!(record["precision"], "f32");
    let model: Model<B> = Model::Sd15Cast(Box::new(m));
    let (images, shape) = model.to_images(&samples, [c, h, w], &Default::default()).unwrap();
    assert_eq!(images.len(), n);
    let want: Vec<f32> = vae.get::<4>("decode_image").into_data().into_vec().unwrap();
    let got: Vec<f32> = images.concat();
    assert_eq!(got.len(), want.len(), "{shape:?}");
    let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
    let err = got.iter().zip(&want).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
    assert!(err < 1e-4, "decode through Model::Sd15Cast: {err}");
}

#[test]
fn precision_names_parse() {
    for (s, p) in [("f32", Precision::F32), ("fp16", Precision::F16), ("F16", Precision::F16), ("bf16", Precision::Bf16), ("bfloat16", Precision::Bf16)] {
        assert_eq!(s.parse::<Precision>().unwrap(), p);
    }
    assert!("f8".parse::<Precision>().unwrap_err().to_string().contains("expected f32, f16 or bf16"));
    assert!(Precision::F16.check_device("cpu").is_err());
    assert!(Precision::F32.check_device("cpu").is_ok());
}

#[test]
fn half_precision_on_the_cpu_is_a_one_line_error() {
    let weights = model_dir();
    let out = std::env::temp_dir().join(format!("ddrep-precision-{}", std::process::id()));
    let run = |extra: &[&str]| {
        let mut args = vec!["sample", "--prompt", "a cat", "--out", out.to_str().unwrap(), "--steps", "1", "--solver-steps", "1"];
        args.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_ddrep")).args(&args).env_remove("DDREP_SD15").output().unwrap()
    };
    let sd = ["--model", "sd15", "--weights", weights.to_str().unwrap()];
    common::assert_one_line_error(&run(&[&sd[..], &["--precision", "f16"]].concat()), "runs on the GPU only");
    common::assert_one_line_error(&run(&[&sd[..], &["--precision", "bf16"]].concat()), "--device cuda");
    common::assert_one_line_error(&run(&[&sd[..], &["--precision", "f8"]].concat()), "unknown precision 'f8'");
    common::assert_one_line_error(&run(&["--precision", "f16", "--device", "cpu"]), "runs on the GPU only");
    let dec = Command::new(env!("CARGO_BIN_EXE_ddrep"))
        .args(["decode", "--weights", weights.to_str().unwrap(), "--latents", "x.safetensors", "--precision", "bf16", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    common::assert_one_line_error(&dec, "runs on the GPU only");
    assert!(!out.exists(), "nothing may be written on a refused run");
}

/// `ddrep parity` (the command carried to the GPU machine) on the CPU: all checks pass at the
/// f32 tolerance, fail at an impossible one, and a missing fixture folder is a one-line error;
/// `--precision f16` runs in real f16 on burn-candle.
#[test]
fn parity_command_checks_every_part() {
    let fixtures = model_dir().parent().unwrap().to_path_buf();
    let json = std::env::temp_dir().join(format!("ddrep-parity-{}.json", std::process::id()));
    let run_env = |extra: &[&str], envs: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_ddrep"))
            .args(["parity", "--fixtures", fixtures.to_str().unwrap()])
            .args(extra)
            .envs(envs.iter().copied())
            .output()
            .unwrap()
    };
    let run = |extra: &[&str]| run_env(extra, &[]);
    let o = run(&["--json", json.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("all 8 checks within 1e-4"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 8);
    for c in checks {
        let e = c["rel_err"].as_f64().unwrap();
        assert!(e > 0.0 && e < 1e-4, "{c}");
    }
    let _ = std::fs::remove_file(&json);

    common::assert_one_line_error(&run(&["--tol", "1e-12"]), "8 check(s) above 1e-12: text_encoder last_hidden_state, unet eps t=999");
    let o = Command::new(env!("CARGO_BIN_EXE_ddrep")).args(["parity", "--fixtures", "/nonexistent/fixtures"]).output().unwrap();
    common::assert_one_line_error(&o, "/nonexistent/fixtures/model");

    // f16 on the CPU runs on burn-candle within the f16 tolerance; bf16 there is refused.
    let o = run(&["--precision", "f16", "--json", json.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("all 8 checks within 1e-2") && stdout.contains("| check (cpu f16)"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["precision"], "f16");
    assert!(v["checks"].as_array().unwrap().iter().all(|c| c["rel_err"].as_f64().unwrap() > 1e-4), "f16 arithmetic, not f32: {v}");
    let _ = std::fs::remove_file(&json);
    common::assert_one_line_error(&run(&["--precision", "bf16"]), "no bf16 matmul");

    // DDREP_GPU_CONV=im2col (the GPU backends' alternative convolution path) on burn-candle:
    // within the f16 tolerance too; an unknown value is a one-line error before any work.
    let with_conv = |v: &str| run_env(&["--precision", "f16"], &[("DDREP_GPU_CONV", v)]);
    let o = with_conv("im2col");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && stdout.contains("all 8 checks within 1e-2"), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    common::assert_one_line_error(&with_conv("fast"), "DDREP_GPU_CONV=\"fast\": expected `implicit-gemm` (the default), `implicit-gemm-mma`");

    // DDREP_GPU_MATMUL other than `auto` splits the linear layers into matmul + bias (the path
    // burn-cuda's routines take); off CUDA the matmul is burn's, so this checks the split.
    let o = run_env(&["--precision", "f16"], &[("DDREP_GPU_MATMUL", "double")]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && stdout.contains("all 8 checks within 1e-2"), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
}
