//! The `ddrep` command line. Each command is a thin layer over the library.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::diffrep::{NamedTensor, SirenConfig};
use crate::diffusion::{CfgConvention, Denoiser, Guidance, RepaintConfig};
use crate::io::{ensure_out_dir, write_json, write_png, write_safetensors, CRATE_VERSION, GIT_COMMIT};
use crate::methods::{run_method, DiffrepSpec, MethodSpec, SolverConfig};
use crate::models::{AnalyticConfig, AnalyticPrior};

#[derive(Parser, Debug)]
#[command(name = "ddrep", version, args_override_self = true, about = "Sample differentiable representations from a diffusion model (DDRep, NeurIPS 2024)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sample diffreps (or reference images) for one prompt and write PNGs, tensors and a record.
    Sample(SampleArgs),
    /// Run the Table-1-shaped demo grid on the embedded analytic prior (CPU, minutes).
    Demo(crate::demo::DemoArgs),
    /// Run (or resume) the grid of an experiment YAML file into its content-addressed store.
    Run(crate::experiment::RunArgs),
    /// Done / pending / failed cells of an experiment YAML file.
    Status(crate::experiment::StatusArgs),
    /// Write an sbatch job-array script whose tasks are the shards of an experiment.
    Slurm(crate::experiment::SlurmArgs),
    /// Benchmarks; `ddrep bench siren` times Adam steps of 8 paper-size SIRENs.
    Bench(crate::bench::BenchArgs),
    /// PSNR / SSIM / LPIPS / KID between two images or two folders of images.
    Compare(crate::report::compare::CompareArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// `analytic` (embedded, no download) or `sd15` (a diffusers folder given by --weights).
    #[arg(long, default_value = "analytic")]
    pub model: String,
    /// Folder of a diffusers-format Stable Diffusion 1.5 (for --model sd15).
    #[arg(long, env = "DDREP_SD15")]
    pub weights: Option<PathBuf>,
    /// Analytic prior sample shape C,H,W.
    #[arg(long, default_value = "3,32,32", value_delimiter = ',')]
    pub analytic_shape: Vec<usize>,
    /// Analytic mixture components (the prompt is always added).
    #[arg(long, value_delimiter = '|')]
    pub captions: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// ddrep, sjc, sds or reference.
    #[arg(long, default_value = "ddrep")]
    pub method: String,
    /// The differentiable representation (siren).
    #[arg(long, default_value = "siren")]
    pub diffrep: String,
    #[arg(long)]
    pub prompt: String,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 3.0, allow_negative_numbers = true)]
    pub cfg: f64,
    /// diffusers (w <= 1 means one conditional pass) or literal.
    #[arg(long, default_value = "diffusers")]
    pub cfg_convention: String,
    /// First seed; sample i uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1)]
    pub num_samples: usize,
    /// DDIM steps (ddrep, reference).
    #[arg(long, default_value_t = 50, allow_negative_numbers = true)]
    pub steps: i64,
    /// DDIM eta (ddrep, reference).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub eta: f64,
    /// Adam steps per DDIM step (ddrep).
    #[arg(long, default_value_t = 200)]
    pub solver_steps: usize,
    /// Learning rate: Adam in ddrep and sds, Adamax in sjc (defaults: 1e-3, 0.01, 0.05).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Iterations (sjc, sds).
    #[arg(long, default_value_t = 3000)]
    pub iters: usize,
    /// RePaint jump length and jump count (ddrep), e.g. `--repaint 1,2`.
    #[arg(long, value_delimiter = ',')]
    pub repaint: Option<Vec<usize>>,
    /// SIREN width, depth and embedding size (paper: 256, 3, 128).
    #[arg(long, default_value_t = 256)]
    pub width: usize,
    #[arg(long, default_value_t = 3)]
    pub depth: usize,
    #[arg(long, default_value_t = 128)]
    pub embedding: usize,
    /// Backend: cpu, or cuda when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// The denoiser named on the command line. The analytic prior mixes `captions` and `extra`.
pub fn build_model(args: &ModelArgs, extra: &[String]) -> Result<AnalyticPrior> {
    match args.model.as_str() {
        "analytic" => {
            let shape: [usize; 3] = args
                .analytic_shape
                .clone()
                .try_into()
                .map_err(|_| anyhow::anyhow!("--analytic-shape takes three numbers C,H,W"))?;
            let mut captions = if args.captions.is_empty() { crate::demo::DEMO_CAPTIONS.iter().map(|s| s.to_string()).collect() } else { args.captions.clone() };
            for p in extra {
                if !captions.contains(p) {
                    captions.push(p.clone());
                }
            }
            AnalyticPrior::new(AnalyticConfig { shape, captions, ..Default::default() })
        }
        "sd15" => {
            let how = "a diffusers-format Stable Diffusion 1.5 folder (model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/, weights as *.safetensors), e.g. from `huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR`";
            match &args.weights {
                None => bail!("--model sd15 needs --weights DIR (or DDREP_SD15): {how}"),
                Some(d) if !d.join("model_index.json").is_file() => {
                    bail!("{} is missing: --weights must point to {how}", d.join("model_index.json").display())
                }
                Some(_) => bail!("Stable Diffusion 1.5 is not wired into this build yet (issue 4); use --model analytic"),
            }
        }
        other => bail!("unknown model '{other}' (expected analytic or sd15)"),
    }
}

fn method_spec(a: &SampleArgs) -> Result<MethodSpec> {
    let mut spec = MethodSpec::default_for(&a.method)?;
    if a.steps <= 0 {
        bail!("--steps must be at least 1, got {}", a.steps);
    }
    let steps = a.steps as usize;
    match &mut spec {
        MethodSpec::Ddrep(c) => {
            c.steps = steps;
            c.eta = a.eta;
            c.solver = SolverConfig::Adam { steps: a.solver_steps, lr: a.lr.unwrap_or(1e-3), beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 };
            c.repaint = match a.repaint.as_deref() {
                None => None,
                Some([l, n]) => Some(RepaintConfig { jump_length: *l, jump_n_sample: *n }),
                Some(_) => bail!("--repaint takes two numbers: jump_length,jump_n_sample"),
            };
            c.validate()?;
        }
        MethodSpec::Reference(c) => {
            c.steps = steps;
            c.eta = a.eta;
        }
        MethodSpec::Sjc(c) => {
            c.iters = a.iters;
            c.lr = a.lr.unwrap_or(c.lr);
        }
        MethodSpec::Sds(c) => {
            c.iters = a.iters;
            c.lr = a.lr.unwrap_or(c.lr);
        }
    }
    Ok(spec)
}

pub fn sample(a: &SampleArgs) -> Result<()> {
    // Validate everything before any work or any file is written.
    let spec = method_spec(a)?;
    let DiffrepSpec::Siren(_) = DiffrepSpec::default_for(&a.diffrep)?;
    if !a.cfg.is_finite() {
        bail!("--cfg must be a finite number, got {}", a.cfg);
    }
    if a.num_samples == 0 {
        bail!("--num-samples must be at least 1");
    }
    let guidance = Guidance::new(a.cfg, a.cfg_convention.parse::<CfgConvention>()?);
    let model = build_model(&a.model, std::slice::from_ref(&a.prompt))?;
    let [c, h, w] = Denoiser::<crate::backend::Cpu>::sample_shape(&model);
    let siren = SirenConfig { resolution: [h, w], out_channels: c, width: a.width, depth: a.depth, embedding_size: a.embedding, ..Default::default() };
    siren.validate()?;
    let diffrep = DiffrepSpec::Siren(siren);
    if !(a.device == "cpu" || (cfg!(feature = "cuda") && a.device == "cuda")) {
        bail!("unknown or unavailable device '{}' (this build has: cpu{})", a.device, if cfg!(feature = "cuda") { ", cuda" } else { "" });
    }
    let out = ensure_out_dir(&a.out)?;
    match a.device.as_str() {
        "cpu" => sample_on::<crate::backend::CpuAutodiff>(a, &model, &spec, &diffrep, guidance, &out, &Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => sample_on::<crate::backend::CudaAutodiff>(a, &model, &spec, &diffrep, guidance, &out, &Default::default()),
        other => unreachable!("device '{other}' was validated above"),
    }
}

fn sample_on<B: AutodiffBackend + crate::diffrep::sine::SineBackend>(
    a: &SampleArgs,
    model: &AnalyticPrior,
    spec: &MethodSpec,
    diffrep: &DiffrepSpec,
    guidance: Guidance,
    out: &std::path::Path,
    device: &B::Device,
) -> Result<()> {
    let seeds: Vec<u64> = (0..a.num_samples as u64).map(|i| a.seed + i).collect();
    let res = run_method::<B>(model, spec, diffrep, &vec![a.prompt.clone(); seeds.len()], guidance, &seeds, device)?;
    let mut files = Vec::new();
    for (seed, img) in seeds.iter().zip(&res.images) {
        let name = format!("sample_seed{seed}.png");
        write_png(&out.join(&name), img, res.shape)?;
        files.push(name);
    }
    let n = seeds.len();
    let all: Vec<f32> = res.images.iter().flatten().cloned().collect();
    let [c, h, w] = res.shape;
    write_safetensors(&out.join("output.safetensors"), &[NamedTensor { name: "image".into(), shape: vec![n, c, h, w], data: all }])?;
    files.push("output.safetensors".into());
    if let Some(p) = &res.params {
        write_safetensors(&out.join("params.safetensors"), p)?;
        files.push("params.safetensors".into());
    }
    let record = json!({
        "ddrep_version": CRATE_VERSION,
        "git_commit": GIT_COMMIT,
        "command": std::env::args().collect::<Vec<_>>(),
        "model": Denoiser::<B::InnerBackend>::describe(model),
        "model_config": model.config(),
        "method": spec,
        "diffrep": res.diffrep,
        "prompt": a.prompt,
        "guidance": guidance,
        "seeds": seeds,
        "backend": std::any::type_name::<B>(),
        "nfe": res.nfe,
        "seconds": res.seconds,
        "files": files,
        "diagnostics": res.diagnostics,
    });
    write_json(&out.join("record.json"), &record)?;
    println!("{} {} sample(s) of '{}' with {} (model: embedded analytic prior) -> {} [{} NFEs, {:.1} s]", n, spec.name(), a.prompt, a.diffrep, out.display(), res.nfe, res.seconds);
    Ok(())
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Sample(a) => sample(&a),
        Command::Demo(a) => crate::demo::demo(&a),
        Command::Bench(a) => crate::bench::bench(&a),
        Command::Compare(a) => crate::report::compare::compare(&a),
        Command::Run(a) => crate::experiment::run(&a),
        Command::Status(a) => crate::experiment::status(&a),
        Command::Slurm(a) => crate::experiment::slurm(&a),
    }
}
