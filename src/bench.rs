//! `ddrep bench siren`: Adam steps per second for 8 independent paper-size SIRENs, next to
//! the same loop in PyTorch (`tools/bench/siren_bench.py`) when torch is installed.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use crate::backend::CpuAutodiff;
use crate::diffrep::{Diffrep, SirenConfig, SirenDiffrep};
use crate::methods::solver::{fit, SolverConfig};
use crate::noise::{normal_vec, rng_for};
use crate::tensor_util::tensor_from_vec;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to benchmark: siren.
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
    if a.what != "siren" {
        bail!("unknown benchmark '{}' (expected: siren)", a.what);
    }
    if a.sirens == 0 || a.steps == 0 || a.res == 0 || a.width == 0 {
        bail!("--sirens, --steps, --res and --width must be positive");
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let ours = siren_steps_per_s(a)?;
    println!("| framework | SIRENs | grid | width x depth | Adam steps/s | ms/step | threads |");
    println!("|---|---|---|---|---|---|---|");
    println!("| ddrep (burn {} ndarray) | {} | {}x{} | {}x{} | {:.3} | {:.1} | {} |", "0.20.1", a.sirens, a.res, a.res, a.width, a.depth, ours, 1000.0 / ours, threads);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/bench/siren_bench.py");
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
