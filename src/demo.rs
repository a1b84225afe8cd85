//! `ddrep demo`: a Table-1-shaped grid (reference, DDRep, SJC x CFG x seeds x captions) on
//! the embedded analytic mixture prior, small enough for a laptop CPU in minutes.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::backend::CpuAutodiff;
use crate::diffrep::SirenConfig;
use crate::diffusion::{CfgConvention, Denoiser, Guidance};
use crate::io::{ensure_out_dir, write_atomic, write_grid_png, write_json, write_png, CRATE_VERSION, GIT_COMMIT};
use crate::methods::{run_method, DdrepConfig, DiffrepSpec, MethodSpec, ReferenceConfig, SjcConfig, SolverConfig};
use crate::metrics::{self, mean_std};
use crate::models::{AnalyticConfig, AnalyticPrior};

/// Captions written for the demo; each keys one component of the analytic mixture.
pub const DEMO_CAPTIONS: [&str; 3] = ["a red fox in fresh snow", "a lighthouse on a cliff at dusk", "a bowl of ripe lemons on a wooden table"];

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output directory.
    #[arg(long, default_value = "results/demo")]
    pub out: PathBuf,
    /// Seeds per caption.
    #[arg(long, default_value_t = 4)]
    pub seeds: usize,
    /// CFG scales.
    #[arg(long, default_value = "0,3,10", value_delimiter = ',')]
    pub cfg: Vec<f64>,
    /// Afterwards, run the Table 1 twin through the experiment harness (run, score, report):
    /// this YAML file [default: experiments/demo_table1.yaml, or the copy built into the binary
    /// when that does not exist (outside a checkout)].
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Skip the harness part.
    #[arg(long)]
    pub no_grid: bool,
}

/// Seeds per caption of the demo (all captions x seeds are one batch of SIRENs).
const MAX_DEMO_SEEDS: usize = 1000;

/// The harness part's grid, relative to a checkout.
const DEMO_GRID: &str = "experiments/demo_table1.yaml";

/// `experiments/demo_table1.yaml` as built, for runs outside a checkout.
const DEMO_TABLE1_YAML: &str = include_str!("../experiments/demo_table1.yaml");

/// The harness on the demo grid: `ddrep run`, `ddrep score`, `ddrep report`, as a user would
/// type them (resumable: a second demo reuses the finished cells).
fn demo_grid(a: &DemoArgs, out: &std::path::Path) -> Result<()> {
    let default = std::path::Path::new(DEMO_GRID);
    let file = match &a.grid {
        Some(g) => g.clone(),
        None if default.exists() => default.to_path_buf(),
        None => {
            let copy = out.join("demo_table1.yaml");
            write_atomic(&copy, DEMO_TABLE1_YAML.as_bytes())?;
            println!("{DEMO_GRID} not found: using the built-in copy, written to {}", copy.display());
            copy
        }
    };
    let file = file.to_string_lossy().into_owned();
    for cmd in ["run", "score", "report"] {
        println!("\n$ ddrep {cmd} {file}");
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(["ddrep", cmd, file.as_str()])?;
        crate::cli::run(cli)?;
    }
    Ok(())
}

/// The demo's settings: 3x32x32 RGB prior, small SIRENs, 16 DDIM steps.
pub struct DemoSettings {
    pub prior: AnalyticConfig,
    pub diffrep: DiffrepSpec,
    pub methods: Vec<MethodSpec>,
}

impl Default for DemoSettings {
    fn default() -> Self {
        let steps = 16;
        Self {
            prior: AnalyticConfig { captions: DEMO_CAPTIONS.iter().map(|s| s.to_string()).collect(), ..Default::default() },
            diffrep: DiffrepSpec::Siren(SirenConfig { resolution: [32, 32], out_channels: 3, embedding_size: 64, width: 64, depth: 3, ..Default::default() }),
            methods: vec![
                MethodSpec::Reference(ReferenceConfig { steps, eta: 1.0, steps_offset: 1 }),
                MethodSpec::Ddrep(DdrepConfig {
                    steps,
                    solver: SolverConfig::Adam { steps: 30, lr: 3e-3, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 },
                    ..Default::default()
                }),
                MethodSpec::Sjc(SjcConfig { iters: 300, ..Default::default() }),
            ],
        }
    }
}

/// PSNR and SSIM (torchmetrics conventions) of two `[C, H, W]` images in [-1, 1], compared
/// as the pictures a user sees: mapped to [0, 1] and clamped.
pub fn psnr_ssim(a: &[f32], b: &[f32], shape: [usize; 3]) -> Result<(f64, f64)> {
    let unit = |x: &[f32]| x.iter().map(|v| ((v + 1.0) / 2.0).clamp(0.0, 1.0)).collect::<Vec<f32>>();
    let (ua, ub) = (unit(a), unit(b));
    let ia = metrics::ImageBatch::single("sample", &ua, shape)?;
    let ib = metrics::ImageBatch::single("reference", &ub, shape)?;
    Ok((metrics::psnr(&ia, &ib, 1.0)?, metrics::ssim(&ia, &ib, &metrics::SsimConfig::default())?))
}

/// Mean pairwise RMS distance between samples (diversity).
pub fn mean_pairwise_rms(images: &[&Vec<f32>]) -> f64 {
    let mut s = 0.0;
    let mut k = 0;
    for i in 0..images.len() {
        for j in i + 1..images.len() {
            let d: f64 = images[i].iter().zip(images[j]).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>() / images[i].len() as f64;
            s += d.sqrt();
            k += 1;
        }
    }
    if k == 0 { 0.0 } else { s / k as f64 }
}

pub fn demo(a: &DemoArgs) -> Result<()> {
    let settings = DemoSettings::default();
    // Every check before the first file is written or the first minute spent.
    if a.seeds == 0 {
        anyhow::bail!("--seeds must be at least 1");
    }
    crate::limits::at_most("--seeds", a.seeds, MAX_DEMO_SEEDS)?;
    if let Some(g) = a.grid.as_ref().filter(|_| !a.no_grid) {
        if !g.is_file() {
            anyhow::bail!("--grid {}: no such file (leave --grid out to use {DEMO_GRID} or the built-in copy)", g.display());
        }
    }
    if let Some(w) = a.cfg.iter().find(|w| !w.is_finite()) {
        anyhow::bail!("--cfg values must be finite, got {w}");
    }
    let out = ensure_out_dir(&a.out)?;
    let model = AnalyticPrior::new(settings.prior.clone())?;
    let device = Default::default();
    let captions: Vec<String> = settings.prior.captions.clone();
    // One batch per (method, cfg): every caption x seed.
    let (mut prompts, mut seeds) = (Vec::new(), Vec::new());
    for c in &captions {
        for s in 0..a.seeds as u64 {
            prompts.push(c.clone());
            seeds.push(s);
        }
    }
    println!("ddrep demo: {} methods x CFG {:?} x {} captions x {} seeds on the embedded analytic prior (3x32x32 Gaussian mixture)", settings.methods.len(), a.cfg, captions.len(), a.seeds);
    let mut per_image = String::from("method,cfg,caption,seed,psnr_vs_reference,ssim_vs_reference,final_residual,nfe,seconds\n");
    let mut diag_csv = String::from("method,cfg,caption,seed,step,kind,t,sigma,residual,nfe\n");
    let mut summary = String::from("method,cfg,psnr_mean,psnr_std,ssim_mean,ssim_std,diversity,nfe,seconds\n");
    let mut table = Vec::new();
    for &w in &a.cfg {
        let guidance = Guidance::new(w, CfgConvention::Diffusers);
        let mut grid_rows: Vec<Vec<f32>> = Vec::new();
        let mut reference_images: Option<Vec<Vec<f32>>> = None;
        for spec in &settings.methods {
            let res = run_method::<CpuAutodiff>(&model, spec, &settings.diffrep, &prompts, guidance, &seeds, &device)?;
            let name = spec.name();
            let dir = ensure_out_dir(&out.join("images").join(name).join(format!("cfg{w}")))?;
            let (mut psnrs, mut ssims) = (Vec::new(), Vec::new());
            for (k, img) in res.images.iter().enumerate() {
                let (ci, seed) = (k / a.seeds, seeds[k]);
                write_png(&dir.join(format!("caption{ci}_seed{seed}.png")), img, res.shape)?;
                let scores = match &reference_images {
                    Some(r) => Some(psnr_ssim(img, &r[k], res.shape)?),
                    None => None,
                };
                if let Some((p, s)) = scores {
                    psnrs.push(p);
                    ssims.push(s);
                }
                let last = res.diagnostics.iter().rev().find(|d| d.kind != "forward").map(|d| d.residual[k]).unwrap_or(0.0);
                let (p, s) = scores.map(|(p, s)| (format!("{p:.4}"), format!("{s:.5}"))).unwrap_or_default();
                writeln!(per_image, "{name},{w},\"{}\",{seed},{p},{s},{last:.6},{},{:.3}", prompts[k], res.nfe, res.seconds)?;
                for d in &res.diagnostics {
                    writeln!(diag_csv, "{name},{w},\"{}\",{seed},{},{},{},{:.6},{:.6e},{}", prompts[k], d.step, d.kind, d.t, d.sigma, d.residual[k], d.nfe)?;
                }
            }
            let diversity = mean_std(
                &(0..captions.len())
                    .map(|ci| mean_pairwise_rms(&res.images[ci * a.seeds..(ci + 1) * a.seeds].iter().collect::<Vec<_>>()))
                    .collect::<Vec<_>>(),
            )
            .0;
            // Population std, as numpy's default (the paper's tables).
            let ((pm, ps), (sm, ss)) = (mean_std(&psnrs), mean_std(&ssims));
            writeln!(summary, "{name},{w},{pm:.4},{ps:.4},{sm:.5},{ss:.5},{diversity:.5},{},{:.2}", res.nfe, res.seconds)?;
            let vs = if psnrs.is_empty() { "(the reference)".to_string() } else { format!("PSNR {pm:6.2} ± {ps:5.2} dB  SSIM {sm:.3} ± {ss:.3}") };
            println!("  cfg {w:>4}  {name:<9}  {vs:<38}  diversity {diversity:.4}  {:>4} NFEs  {:6.1} s", res.nfe, res.seconds);
            table.push(json!({"method": name, "cfg": w, "psnr_mean": pm, "psnr_std": ps, "ssim_mean": sm, "ssim_std": ss, "diversity": diversity, "nfe": res.nfe, "seconds": res.seconds}));
            grid_rows.extend(res.images.iter().cloned());
            if reference_images.is_none() {
                reference_images = Some(res.images);
            }
        }
        // Rows: method x caption; columns: seeds.
        write_grid_png(&out.join(format!("grid_cfg{w}.png")), &grid_rows, [3, 32, 32], a.seeds, 3)?;
    }
    write_atomic(&out.join("metrics.csv"), per_image.as_bytes())?;
    write_atomic(&out.join("summary.csv"), summary.as_bytes())?;
    write_atomic(&out.join("diagnostics.csv"), diag_csv.as_bytes())?;
    write_json(
        &out.join("record.json"),
        &json!({
            "ddrep_version": CRATE_VERSION,
            "git_commit": GIT_COMMIT,
            "model": Denoiser::<crate::backend::Cpu>::describe(&model),
            "model_config": settings.prior,
            "diffrep": settings.diffrep,
            "methods": settings.methods,
            "cfg": a.cfg,
            "cfg_convention": "diffusers",
            "captions": captions,
            "seeds": (0..a.seeds).collect::<Vec<_>>(),
            "summary": table,
        }),
    )?;
    println!("wrote {}/{{metrics.csv, summary.csv, diagnostics.csv, record.json, grid_cfg*.png, images/}}", out.display());
    if !a.no_grid {
        demo_grid(a, &out)?;
    }
    Ok(())
}
