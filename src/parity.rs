//! `ddrep parity`: the SD1.5 fixture comparisons of `tests/sd15_parity.rs` as a command, for
//! a backend and precision that `cargo test` cannot reach (the GPU machine has no Rust
//! toolchain: the `cuda` binary is built elsewhere and carried there with the fixtures).
//!
//! Each check runs one model part on the chosen backend, in the chosen precision, on the
//! fixture's inputs and compares with diffusers' fp32 CPU output: `max|a-b| / max|b|`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use clap::Args;
use serde_json::{json, Value};

use crate::diffusion::Denoiser;
use crate::models::sd15::precision::Precision;
use crate::models::sd15::{Sd15, WeightFile};

#[derive(Args, Debug)]
pub struct ParityArgs {
    /// The fixture folder made by tools/fixtures (model/ and expected/).
    #[arg(long, default_value = "tests/fixtures/sd15_tiny")]
    pub fixtures: PathBuf,
    /// Backend: cpu, or cuda when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, or f16 / bf16 with --device cuda; f16 also on the CPU (burn-candle, real f16).
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// Largest accepted relative error (default: 1e-4 for f32 on the CPU, 1e-2 for f16 and
    /// for f32 on CUDA (TF32 matmuls), 8e-2 for bf16).
    #[arg(long)]
    pub tol: Option<f64>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The default tolerance on `device`. 1e-4 is the fp32 CPU bound. The others scale
/// with the unit roundoff u of the matmul operands: about 20u, so 1e-2 where operands carry
/// 11 significant bits (f16; and f32 on CUDA, where burn-cubecl's accelerated matmuls and
/// convolutions read f32 operands as TF32 and burn 0.20.1 has no switch to stop it) and 8e-2
/// for bf16's 8 bits (u is 8 times f16's).
pub fn default_tol(device: &str, p: Precision) -> f64 {
    match (device, p) {
        ("cpu", Precision::F32) => 1e-4,
        (_, Precision::F32) | (_, Precision::F16) => 1e-2,
        (_, Precision::Bf16) => 8e-2,
    }
}

pub struct Check {
    pub name: String,
    pub rel_err: f64,
}

pub fn parity(a: &ParityArgs) -> Result<()> {
    // On the CPU, f16 runs on burn-candle (real f16 arithmetic, slow): a check of the
    // half-precision model code without a GPU. Candle's CPU matmul has no bf16.
    let requested: Precision = a.precision.parse()?;
    if let Some(t) = a.tol.filter(|t| !(t.is_finite() && *t > 0.0)) {
        bail!("--tol must be a positive number, got {t}");
    }
    let (precision, checks) = match (a.device.as_str(), requested) {
        ("cpu", Precision::F16) => (requested, run_checks::<burn_candle::Candle<half::f16>>(&a.fixtures, &Default::default())?),
        ("cpu", Precision::Bf16) => bail!("--precision bf16 needs --device cuda: the CPU's half-precision backend (burn-candle) has no bf16 matmul; f16 works on the CPU"),
        _ => {
            let precision = crate::backend::check_device_precision(&a.device, &a.precision)?;
            (precision, crate::backend::with_model_backend!(a.device.as_str(), precision, |M| run_checks::<M>(&a.fixtures, &Default::default())?))
        }
    };
    let tol = a.tol.unwrap_or(default_tol(&a.device, precision));
    println!("| check ({} {precision}) | max|a-b|/max|b| | tolerance | ok |", a.device);
    println!("|---|---|---|---|");
    for c in &checks {
        println!("| {} | {:.3e} | {tol:.0e} | {} |", c.name, c.rel_err, if c.rel_err < tol { "yes" } else { "NO" });
    }
    let failed: Vec<&str> = checks.iter().filter(|c| c.rel_err.is_nan() || c.rel_err >= tol).map(|c| c.name.as_str()).collect();
    if let Some(path) = &a.json {
        let v = json!({
            "device": a.device, "precision": precision, "tolerance": tol,
            "checks": checks.iter().map(|c| json!({"name": c.name, "rel_err": c.rel_err})).collect::<Vec<_>>(),
            "failed": failed,
        });
        crate::io::write_json(path, &v)?;
    }
    if !failed.is_empty() {
        bail!("parity on {} {precision}: {} check(s) above {tol:.0e}: {}", a.device, failed.len(), failed.join(", "));
    }
    println!("all {} checks within {tol:.0e}", checks.len());
    Ok(())
}

/// An expected-output file of the fixture.
struct Expected(WeightFile);

impl Expected {
    fn open(dir: &Path, name: &str) -> Result<Self> {
        let remedy = "restore the fixture folder (its expected/ outputs come from tools/fixtures/sd15_tiny/make_fixtures.py)";
        Ok(Self(WeightFile::open_with_remedy(&dir.join("expected").join(name), str::to_string, remedy)?))
    }

    fn host(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        self.0.tensor_f32(name)
    }

    fn get<B: Backend, const D: usize>(&self, name: &str, device: &B::Device) -> Result<Tensor<B, D>> {
        let (v, shape) = self.host(name)?;
        let shape: [usize; D] = shape.try_into().map_err(|s| anyhow!("{name}: rank of {s:?} is not {D}"))?;
        Ok(Tensor::from_data(TensorData::new(v, shape), device))
    }
}

/// `max|a - b| / max|b|` with `a` in any precision (compared in f64).
fn rel_err<B: Backend, const D: usize>(a: Tensor<B, D>, b: &(Vec<f32>, Vec<usize>)) -> Result<f64> {
    if a.dims().to_vec() != b.1 {
        bail!("shape {:?} != expected {:?}", a.dims(), b.1);
    }
    let a: Vec<f32> = a.into_data().convert::<f32>().into_vec().map_err(|e| anyhow!("{e:?}"))?;
    let (mut diff, mut scale) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b.0) {
        let d = (*x as f64 - *y as f64).abs();
        // NaN anywhere makes the error NaN (and the check fail); `f64::max` would drop it.
        if d.is_nan() {
            return Ok(f64::NAN);
        }
        diff = diff.max(d);
        scale = scale.max((*y as f64).abs());
    }
    Ok(diff / scale)
}

fn manifest_inputs(dir: &Path, file: &str) -> Result<Value> {
    let path = dir.join("expected/manifest.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let m: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON: restore it from the checkout", path.display()))?;
    m["files"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["file"] == file))
        .map(|f| f["inputs"].clone())
        .ok_or_else(|| anyhow!("{}: no entry for {file}", path.display()))
}

/// Every check on backend `B` (its float type is the precision).
pub fn run_checks<B: Backend>(fixtures: &Path, device: &B::Device) -> Result<Vec<Check>> {
    let sd = Sd15::<B>::load(fixtures.join("model"), device)?;
    let mut out = Vec::new();
    let mut push = |name: &str, e: f64| out.push(Check { name: name.to_string(), rel_err: e });

    let te = Expected::open(fixtures, "text_encoder.safetensors")?;
    let prompts = manifest_inputs(fixtures, "text_encoder.safetensors")?["prompts"].clone();
    let ids: Vec<Vec<u32>> = prompts
        .as_array()
        .ok_or_else(|| anyhow!("manifest: text_encoder prompts missing"))?
        .iter()
        .map(|p| sd.tokenizer.encode(p.as_str().unwrap_or_default()))
        .collect();
    push("text_encoder last_hidden_state", rel_err(sd.text_encoder.forward(&ids)?.last_hidden_state, &te.host("last_hidden_state")?)?);

    let un = Expected::open(fixtures, "unet.safetensors")?;
    let x = un.get::<B, 4>("sample", device)?;
    let ctx = un.get::<B, 3>("encoder_hidden_states", device)?;
    for t in [999.0, 500.0, 1.0] {
        let eps = sd.unet.forward(x.clone(), &[t, t], ctx.clone())?;
        push(&format!("unet eps t={t}"), rel_err(eps, &un.host(&format!("eps_t{t}"))?)?);
    }

    let cfg = Expected::open(fixtures, "unet_cfg.safetensors")?;
    let x = cfg.get::<B, 4>("sample", device)?;
    let inputs = manifest_inputs(fixtures, "unet_cfg.safetensors")?;
    let prompt = inputs["prompts"][1].as_str().ok_or_else(|| anyhow!("manifest: unet_cfg prompts missing"))?;
    let t = inputs["timestep"].as_u64().ok_or_else(|| anyhow!("manifest: unet_cfg timestep missing"))? as usize;
    let both = sd.eps(Tensor::cat(vec![x.clone(), x], 0), &[t, t], &[None, Some(prompt)])?;
    push("denoiser eps uncond (CFG batch)", rel_err(both.clone().narrow(0, 0, 1), &cfg.host("eps_uncond")?)?);
    push("denoiser eps cond (CFG batch)", rel_err(both.narrow(0, 1, 1), &cfg.host("eps_cond")?)?);

    let vae = Expected::open(fixtures, "vae.safetensors")?;
    push("vae decode", rel_err(sd.decode(vae.get::<B, 4>("decode_latents", device)?), &vae.host("decode_image")?)?);
    let post = sd.vae.encode(vae.get::<B, 4>("encode_image", device)?);
    push("vae encode mean", rel_err(post.mean, &vae.host("encode_mean")?)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn a_nan_anywhere_fails_the_check() {
        let reference = (vec![1.0f32, 2.0, 4.0], vec![3]);
        let t = |v: Vec<f32>| Tensor::<Cpu, 1>::from_data(TensorData::new(v, [3]), &Default::default());
        assert!(rel_err(t(vec![f32::NAN, 2.0, 4.0]), &reference).unwrap().is_nan());
        assert!(rel_err(t(vec![1.0, 2.0, f32::NAN]), &reference).unwrap().is_nan());
        assert_eq!(rel_err(t(vec![1.0, 2.0, 5.0]), &reference).unwrap(), 0.25);
    }
}
