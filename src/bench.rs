//! `ddrep bench siren`: Adam steps per second for 8 independent paper-size SIRENs, next to
//! the same loop in PyTorch (`tools/bench/siren_bench.py`) when torch is installed.
//! `ddrep bench unet`: seconds per SD1.5 UNet eval at batch 2 (one CFG eval) for the tiny
//! fixture config and the full SD1.5 config (random weights), next to diffusers
//! (`tools/bench/unet_bench.py`) in the same run when torch and diffusers are installed.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use crate::backend::CpuAutodiff;
use crate::models::sd15::precision::Precision;
use crate::models::sd15::{Loader, UNet2DConditionModel, UnetConfig};
use crate::diffrep::{Diffrep, SirenConfig, SirenDiffrep};
use crate::methods::solver::{fit, SolverConfig};
use crate::noise::{normal_vec, rng_for};
use crate::tensor_util::tensor_from_vec;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to benchmark: siren, unet or views (panorama and NeRF loops at demo size).
    pub what: String,
    #[arg(long, default_value_t = 8)]
    pub sirens: usize,
    #[arg(long, default_value_t = 256)]
    pub width: usize,
    #[arg(long, default_value_t = 3)]
    pub depth: usize,
    #[arg(long, default_value_t = 64)]
    pub res: usize,
    /// Timed Adam steps (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// unet: timed evals of the tiny config (after one warm-up eval).
    #[arg(long, default_value_t = 20)]
    pub evals: usize,
    /// unet: timed evals of the full SD1.5 config (after one warm-up eval).
    #[arg(long, default_value_t = 1)]
    pub full_evals: usize,
    /// unet: skip the full-size SD1.5 UNet (860M parameters: 5.9 GB peak RSS and about 70 s
    /// per batch-2 eval on the 2-core dev machine, about 4 minutes with diffusers).
    #[arg(long)]
    pub tiny_only: bool,
    /// unet: skip the tiny config (on a GPU its first evals compile and autotune kernels for
    /// shapes that SD1.5 does not share).
    #[arg(long)]
    pub full_only: bool,
    /// unet: backend, cpu or cuda (with the `cuda` feature); diffusers runs on the same device.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// unet: f32, or f16 / bf16 with --device cuda (diffusers in the same dtype).
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// unet: untimed evals before timing (GPU kernels autotune on their first calls).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Python with torch for the reference loop (skipped if it has no torch).
    #[arg(long, env = "DDREP_PYTHON", default_value = "python3")]
    pub python: String,
}

fn siren_steps_per_s(a: &BenchArgs) -> Result<f64> {
    let device = Default::default();
    let cfg = SirenConfig { resolution: [a.res, a.res], out_channels: 4, embedding_size: 128, width: a.width, depth: a.depth, ..Default::default() };
    let rep = SirenDiffrep::<CpuAutodiff>::new(cfg, &device)?;
    let seeds: Vec<u64> = (0..a.sirens as u64).collect();
    let mut params = rep.init(&seeds, &device)?;
    let n = a.sirens * 4 * a.res * a.res;
    let target = tensor_from_vec(normal_vec(&mut rng_for(0, "bench"), n), [a.sirens, 4, a.res, a.res], &device);
    let adam = |steps| SolverConfig::Adam { steps, lr: 1e-3, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 };
    params = fit(&rep, params, target.clone(), &adam(3))?;
    let t = Instant::now();
    let _ = fit(&rep, params, target, &adam(a.steps))?;
    Ok(a.steps as f64 / t.elapsed().as_secs_f64())
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    match a.what.as_str() {
        "siren" => bench_siren(a),
        "unet" => bench_unet(a),
        "views" => bench_views(a),
        other => bail!("unknown benchmark '{other}' (expected: siren, unet, views)"),
    }
}

/// One timed multiview loop: wall seconds, NFEs, moves (or iterations).
struct ViewsTiming {
    seconds: f64,
    nfe: usize,
    moves: usize,
}

/// `ddrep bench views`: seconds per NFE of DDRep's panorama and NeRF loops and of SJC's NeRF
/// loop at the demo sizes (`experiments/demo_panorama_repaint.yaml`, `demo_nerf.yaml`) on the
/// analytic prior, on the CPU. The denoiser is the analytic prior (microseconds), so the time
/// is the diffrep's: rendering and the inner Adam fits.
fn bench_views(_a: &BenchArgs) -> Result<()> {
    use crate::diffrep::cameras::SphereViews;
    use crate::diffrep::{PanoramaConfig, PanoramaDiffrep, VoxNerfConfig, VoxNerfDiffrep};
    use crate::diffusion::{CfgConvention, Guidance, RepaintConfig};
    use crate::methods::{ddrep_views, sjc_views, DdrepConfig, EmptinessConfig, SjcConfig};
    use crate::models::{AnalyticConfig, AnalyticPrior};
    use crate::noise::SeededNoise;
    let device = Default::default();
    let threads = rayon::current_num_threads();
    let prior = |shape: [usize; 3]| AnalyticPrior::new(AnalyticConfig { shape, captions: vec!["a mountain lake".into(), "a desert at noon".into()], ..Default::default() });
    let g = Guidance::new(3.0, CfgConvention::Diffusers);
    let prompts = vec!["a mountain lake".to_string()];
    let seeds = [0u64];
    let adam = |steps, lr| SolverConfig::Adam { steps, lr, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 };
    let mut rows: Vec<(String, String, ViewsTiming)> = Vec::new();

    let pano = PanoramaDiffrep::<CpuAutodiff>::new(PanoramaConfig::demo(), &device)?;
    let pm = prior([3, 8, 12])?;
    for (label, cfg) in [
        ("ddrep + RePaint (8 steps, 2 forward each)", DdrepConfig { steps: 8, repaint: Some(RepaintConfig { jump_length: 1, jump_n_sample: 3 }), solver: adam(40, 1e-2), ..Default::default() }),
        ("ddrep, no RePaint (22 steps)", DdrepConfig { steps: 22, solver: adam(40, 1e-2), ..Default::default() }),
    ] {
        let t = Instant::now();
        let out = ddrep_views::<CpuAutodiff, _, _>(&pm, &prompts, g, &pano, &seeds, &cfg, &mut SeededNoise::new(&seeds), &device)?;
        rows.push(("panorama 6 views 8x12, SIREN 48x2, Adam 40".into(), label.into(), ViewsTiming { seconds: t.elapsed().as_secs_f64(), nfe: out.output.nfe, moves: out.output.diagnostics.len() }));
    }

    let nerf = VoxNerfDiffrep::new(VoxNerfConfig::demo())?;
    let nm = prior([3, 8, 8])?;
    let cfg = DdrepConfig { steps: 100, repaint: Some(RepaintConfig { jump_length: 1, jump_n_sample: 2 }), solver: adam(3, 0.1), ..Default::default() };
    let t = Instant::now();
    let out = ddrep_views::<CpuAutodiff, _, _>(&nm, &prompts, g, &nerf, &seeds, &cfg, &mut SeededNoise::new(&seeds), &device)?;
    rows.push(("NeRF 10^3, 4 views 8x8, Adam 3".into(), "ddrep, paper schedule (100 + 99 RePaint)".into(), ViewsTiming { seconds: t.elapsed().as_secs_f64(), nfe: out.output.nfe, moves: out.output.diagnostics.len() }));
    let sjc_cfg = SjcConfig { iters: 200, log_every: 0, emptiness: Some(EmptinessConfig::default()), ..Default::default() };
    for (label, views) in [("sjc, 1 view an iteration, emptiness", 1usize), ("sjc, 4 views an iteration, emptiness", 4)] {
        let rep = VoxNerfDiffrep::new(VoxNerfConfig { views: SphereViews { views, ..nerf.config().views.clone() }, ..nerf.config().clone() })?;
        let t = Instant::now();
        let out = sjc_views::<CpuAutodiff, _, _>(&nm, &prompts, g, &rep, &seeds, &sjc_cfg, &mut SeededNoise::new(&seeds), &device)?;
        rows.push(("NeRF 10^3, views 8x8".into(), label.into(), ViewsTiming { seconds: t.elapsed().as_secs_f64(), nfe: out.output.nfe, moves: sjc_cfg.iters }));
    }

    println!("| diffrep (demo size) | loop | NFEs | moves | s | ms/NFE | ms/move | threads |");
    println!("|---|---|---|---|---|---|---|---|");
    for (what, label, t) in rows {
        println!("| {what} | {label} | {} | {} | {:.2} | {:.1} | {:.1} | {threads} |", t.nfe, t.moves, t.seconds, 1000.0 * t.seconds / t.nfe as f64, 1000.0 * t.seconds / t.moves as f64);
    }
    println!("\n(analytic prior, burn 0.20.1 ndarray on the CPU: the time is the diffrep's renders and inner fits; a move is one reverse or RePaint forward step)");
    Ok(())
}

fn bench_siren(a: &BenchArgs) -> Result<()> {
    if a.sirens == 0 || a.steps == 0 || a.res == 0 || a.width == 0 {
        bail!("--sirens, --steps, --res and --width must be positive");
    }
    crate::limits::at_most("--sirens", a.sirens, crate::limits::MAX_SAMPLES)?;
    crate::limits::at_most("--width", a.width, crate::limits::MAX_SIREN_WIDTH)?;
    crate::limits::at_most("--depth", a.depth, crate::limits::MAX_SIREN_DEPTH)?;
    crate::limits::image_shape("--res", [4, a.res, a.res])?;
    crate::limits::at_most("--sirens x 4 x --res^2 (the batch of targets)", a.sirens * 4 * a.res * a.res, crate::limits::MAX_IMAGE_ELEMENTS)?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let ours = siren_steps_per_s(a)?;
    println!("| framework | SIRENs | grid | width x depth | Adam steps/s | ms/step | threads |");
    println!("|---|---|---|---|---|---|---|");
    println!("| ddrep (burn 0.20.1 ndarray) | {} | {}x{} | {}x{} | {:.3} | {:.1} | {} |", a.sirens, a.res, a.res, a.width, a.depth, ours, 1000.0 / ours, threads);
    let script = repo_file("tools/bench/siren_bench.py");
    let script = script.to_str().unwrap_or_default();
    let torch = Command::new(&a.python)
        .args([script, "--sirens", &a.sirens.to_string(), "--width", &a.width.to_string(), "--depth", &a.depth.to_string(), "--res", &a.res.to_string(), "--steps", &a.steps.to_string(), "--threads", &threads.to_string()])
        .output();
    match torch {
        Ok(o) if o.status.success() => {
            let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            match v["steps_per_s"].as_f64() {
                Some(theirs) => {
                    println!("| torch {} | {} | {}x{} | {}x{} | {:.3} | {:.1} | {} |", v["torch"].as_str().unwrap_or("?"), a.sirens, a.res, a.res, a.width, a.depth, theirs, 1000.0 / theirs, v["threads"]);
                    println!("\nratio (torch steps/s ÷ ddrep steps/s; time per step ddrep / torch): {:.2}", theirs / ours);
                }
                None => println!("\ntorch reference printed no result: {line}"),
            }
        }
        Ok(o) => println!("\ntorch reference skipped ({} {script} failed: {})", a.python, String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")),
        Err(e) => println!("\ntorch reference skipped ({}: {e})", a.python),
    }
    Ok(())
}

/// runwayml/stable-diffusion-v1-5 `unet/config.json` (it lists only these keys).
pub const SD15_UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
  "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
  "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

/// Files removed when dropped, on the error paths too.
struct TempFiles(Vec<std::path::PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The tiny fixture UNet's config, built in so that the benchmark runs outside a checkout.
const TINY_UNET_CONFIG: &str = include_str!("../tests/fixtures/sd15_tiny/model/unet/config.json");

/// A file of the repository: relative to the working directory when it is there (a checkout
/// carried to another machine), else in the checkout this binary was built from.
fn repo_file(rel: &str) -> std::path::PathBuf {
    let here = std::path::PathBuf::from(rel);
    if here.exists() {
        here
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }
}

/// Batch 2: one classifier-free-guidance eval ([uncond; cond] in one call).
const UNET_BATCH: usize = 2;

struct UnetTiming {
    /// The first (warm-up) eval: on GPU backends it includes kernel compilation and autotune.
    first_s: f64,
    median_s: f64,
    min_s: f64,
    evals: usize,
    params: usize,
    shape: [usize; 4],
}

fn sample_size(cfg: &UnetConfig) -> usize {
    use crate::models::sd15::config::PerBlock;
    match &cfg.sample_size {
        Some(PerBlock::One(s)) => *s,
        Some(PerBlock::Each(v)) if !v.is_empty() => v[0],
        _ => 64,
    }
}

fn cross_dim(cfg: &UnetConfig) -> usize {
    use crate::models::sd15::config::PerBlock;
    match &cfg.cross_attention_dim {
        PerBlock::One(c) => *c,
        PerBlock::Each(v) => v.first().copied().unwrap_or(768),
    }
}

/// The median (mean of the middle two for an even count): robust to the stalls a shared
/// machine gives single evals.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Random-weight UNet from `cfg` on the device and precision of `a`, `a.warmup` untimed evals,
/// then `evals` timed evals at batch 2.
fn time_unet(a: &BenchArgs, precision: Precision, cfg: &UnetConfig, evals: usize) -> Result<UnetTiming> {
    crate::backend::with_model_backend!(a.device.as_str(), precision, |M| time_unet_on::<M>(cfg, a.warmup, evals))
}

fn time_unet_on<B: burn::tensor::backend::Backend>(cfg: &UnetConfig, warmup: usize, evals: usize) -> Result<UnetTiming> {
    use burn::tensor::{Distribution, Tensor};
    let device = Default::default();
    let mut ld = Loader::<B>::random("unet", &device);
    let unet = UNet2DConditionModel::load(&mut ld, cfg)?;
    let params = ld.num_params();
    ld.finish(false)?;
    let s = sample_size(cfg);
    let shape = [UNET_BATCH, cfg.in_channels, s, s];
    let x = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let ctx = Tensor::<B, 3>::random([UNET_BATCH, 77, cross_dim(cfg)], Distribution::Normal(0.0, 1.0), &device);
    let ts = vec![500.0; UNET_BATCH];
    let mut times = Vec::new();
    let mut first_s = f64::NAN;
    for i in 0..warmup + evals {
        let t = Instant::now();
        let eps = unet.forward(x.clone(), &ts, ctx.clone())?;
        // Reading the result back also waits for an asynchronous (GPU) backend; the sync makes
        // that explicit and, on cubecl backends run with CUBECL_DEBUG_OPTION=profile, prints
        // the kernel-time summary of this eval.
        crate::tensor_util::ensure_finite(&eps, || "the benchmark UNet output".into())?;
        B::sync(&device).map_err(|e| anyhow::anyhow!("the benchmark UNet eval failed on the device: {e:?}"))?;
        if i == 0 {
            first_s = t.elapsed().as_secs_f64();
        }
        if i < warmup {
            // Progress for runs whose warm-up compiles and tunes kernels for minutes.
            eprintln!("  warm-up eval {}/{warmup}: {:.2} s", i + 1, t.elapsed().as_secs_f64());
        } else {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(UnetTiming {
        first_s,
        median_s: median(&times),
        min_s: times.iter().cloned().fold(f64::INFINITY, f64::min),
        evals,
        params,
        shape,
    })
}

/// Runs `tools/bench/unet_bench.py` on the same config; `Err(reason)` when skipped.
fn diffusers_unet(a: &BenchArgs, precision: Precision, config_path: &str, evals: usize, threads: usize) -> std::result::Result<serde_json::Value, String> {
    let script = repo_file("tools/bench/unet_bench.py");
    let script = script.to_str().unwrap_or_default();
    let dtype = match precision {
        Precision::F32 => "float32",
        Precision::F16 => "float16",
        Precision::Bf16 => "bfloat16",
    };
    let o = Command::new(&a.python)
        .args([script, "--config", config_path, "--batch", &UNET_BATCH.to_string(), "--evals", &evals.to_string(), "--threads", &threads.to_string()])
        .args(["--device", &a.device, "--dtype", dtype, "--warmup", &a.warmup.max(1).to_string()])
        .output()
        .map_err(|e| format!("{}: {e}", a.python))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(if err.contains("No module named") { format!("{} has no torch/diffusers: {last}", a.python) } else { format!("{script} failed: {last}") });
    }
    let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string();
    serde_json::from_str(&line).map_err(|_| format!("{script} printed no result: {line}"))
}

fn bench_unet(a: &BenchArgs) -> Result<()> {
    if a.evals == 0 || a.full_evals == 0 {
        bail!("--evals and --full-evals must be positive");
    }
    if a.tiny_only && a.full_only {
        bail!("--tiny-only and --full-only leave nothing to time; give at most one");
    }
    let precision = crate::backend::check_device_precision(&a.device, &a.precision)?;
    let threads = rayon::current_num_threads();
    // Each config also goes to a temporary file for the diffusers script.
    let mut runs: Vec<(&str, UnetConfig, String, usize)> = Vec::new();
    let mut temp_files = TempFiles(Vec::new());
    for (name, json, evals, file, skip) in [
        ("tiny (fixture)", TINY_UNET_CONFIG, a.evals, "tiny", a.full_only),
        ("SD1.5 (random weights)", SD15_UNET_CONFIG, a.full_evals, "sd15", a.tiny_only),
    ] {
        if skip {
            continue;
        }
        let cfg: UnetConfig = serde_json::from_str(json)?;
        let path = std::env::temp_dir().join(format!("ddrep-bench-{file}-unet-{}.json", std::process::id()));
        crate::io::write_atomic(&path, json.as_bytes())?;
        runs.push((name, cfg, path.display().to_string(), evals));
        temp_files.0.push(path);
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (name, cfg, path, evals) in &runs {
        // diffusers first: its number is out in seconds, while ddrep's first evals on a GPU
        // may compile kernels for minutes (a run stopped then still reports the reference).
        eprintln!("timing the {name} UNet: diffusers ...");
        let theirs = diffusers_unet(a, precision, path, *evals, threads);
        match &theirs {
            Ok(v) => eprintln!("  diffusers: {:.4} s/eval (median)", v["median_s"].as_f64().unwrap_or(f64::NAN)),
            Err(why) => eprintln!("  diffusers skipped: {why}"),
        }
        eprintln!("timing the {name} UNet: ddrep ...");
        let ours = time_unet(a, precision, cfg, *evals)?;
        rows.push((name.to_string(), ours, theirs));
    }
    drop(temp_files);
    println!("| UNet | params | input (batch 2 = CFG) | framework | s/eval (median) | s/eval (min) | evals | threads |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, ours, theirs) in &rows {
        let shape = format!("{:?}", ours.shape);
        let backend = if a.device == "cpu" { "ndarray".to_string() } else { format!("{} {precision}, {}", a.device, crate::backend::gpu_kernels()) };
        println!("| {name} | {} | {shape} | ddrep (burn 0.20.1 {backend}) | {:.4} | {:.4} | {} | {threads} |", ours.params, ours.median_s, ours.min_s, ours.evals);
        match theirs {
            Ok(v) => {
                let ts = v["median_s"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "| {name} | {} | {shape} | diffusers {} (torch {}) | {:.4} | {:.4} | {} | {} |",
                    v["params"], v["diffusers"].as_str().unwrap_or("?"), v["torch"].as_str().unwrap_or("?"), ts, v["min_s"].as_f64().unwrap_or(f64::NAN), v["evals"], v["threads"]
                );
                notes.push(format!("{name}: ratio ddrep / diffusers (median time per eval) = {:.2}", ours.median_s / ts));
            }
            Err(why) => notes.push(format!("{name}: diffusers reference skipped ({why})")),
        }
        if a.device != "cpu" {
            notes.push(format!("{name}: first ddrep eval {:.2} s (compiles and autotunes the kernels this process had not yet run)", ours.first_s));
        }
    }
    if a.device != "cpu" {
        notes.push(format!("GPU kernels: {}", crate::models::sd15::layers::gpu_switches()));
    }
    println!();
    for n in notes {
        println!("{n}");
    }
    if a.tiny_only {
        println!("(full-size SD1.5 UNet skipped: --tiny-only)");
    }
    if a.full_only {
        println!("(tiny UNet skipped: --full-only)");
    }
    Ok(())
}
