//! The `ddrep` command line. Each command is a thin layer over the library.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::diffrep::{NamedTensor, SirenConfig};
use crate::diffusion::{CfgConvention, Guidance, RepaintConfig};
use crate::io::{ensure_out_dir, write_json, write_png, write_safetensors, CRATE_VERSION, GIT_COMMIT};
use crate::methods::{run_method, DiffrepSpec, MethodSpec, SolverConfig};
use crate::models::{AnalyticConfig, AnalyticPrior};
use crate::models::sd15::precision::Precision;
use crate::pipeline::{decode_latents, load_sd15, load_vae, read_latents, Model, SD15_FOLDER_HOWTO};

#[derive(Parser, Debug)]
#[command(name = "ddrep", version, args_override_self = true, about = "Sample differentiable representations from a diffusion model (DDRep, NeurIPS 2024)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Sample diffreps (or reference images) for one prompt and write PNGs, tensors and a record.
    Sample(SampleArgs),
    /// Run the Table-1-shaped demo grid on the embedded analytic prior (CPU, minutes).
    Demo(crate::demo::DemoArgs),
    /// Run (or resume) the grid of an experiment YAML file into its content-addressed store.
    Run(crate::experiment::RunArgs),
    /// Done / pending / failed cells of an experiment YAML file (--verify: check the stored files).
    Status(crate::experiment::StatusArgs),
    /// Write an sbatch job-array script whose tasks are the shards of an experiment.
    Slurm(crate::experiment::SlurmArgs),
    /// Decode SD1.5 latents (a safetensors file) to PNGs with the VAE of a diffusers folder.
    Decode(DecodeArgs),
    /// SD1.5 parity with the diffusers fixture on a backend and precision (for the GPU machine, where cargo test cannot run).
    Parity(crate::parity::ParityArgs),
    /// Benchmarks: `siren` (Adam steps of 8 paper-size SIRENs), `unet` (SD1.5 UNet evals), `views` (panorama and NeRF loops).
    Bench(crate::bench::BenchArgs),
    /// PSNR / SSIM / LPIPS / KID between two images or two folders of images.
    Compare(crate::report::compare::CompareArgs),
    /// PSNR / SSIM of an experiment's cells against its reference cells, in Table 1's layout.
    Score(crate::report::score::ScoreArgs),
    /// Table 1 (CSV, Markdown, LaTeX), plots, image grids and an index.html gallery of a scored grid.
    Report(crate::report::generate::ReportArgs),
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// Folder of a diffusers-format Stable Diffusion 1.5 (only vae/ is read).
    #[arg(long, env = "DDREP_SD15")]
    pub weights: Option<PathBuf>,
    /// Safetensors file with latents [n, 4, h, w] (or [4, h, w]) in pipeline space.
    #[arg(long)]
    pub latents: PathBuf,
    /// Tensor to decode (default: `latents`, or the file's only tensor).
    #[arg(long)]
    pub tensor: Option<String>,
    /// Backend: cpu, or cuda when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// VAE weights and activations: f32, or f16 / bf16 with --device cuda.
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
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
    /// SD1.5 latent size H,W (default: the UNet's sample_size, 64,64 for SD1.5 = 512x512 images).
    #[arg(long, value_delimiter = ',')]
    pub latent_size: Option<Vec<usize>>,
    /// SD1.5 weights and activations: f32, or f16 / bf16 on the GPU (--device cuda); the
    /// sampler and the diffrep stay in f32.
    #[arg(long, default_value = "f32")]
    pub precision: String,
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

/// The denoiser named on the command line, on `device`. The analytic prior mixes `captions`
/// and `extra`; `--model sd15` loads the `--weights` folder (every problem with it is a
/// one-line error here, before anything is written).
pub fn build_model<B: Backend>(args: &ModelArgs, extra: &[String], device: &B::Device) -> Result<Model<B>> {
    let precision: Precision = args.precision.parse()?;
    match args.model.as_str() {
        "analytic" => {
            if precision != Precision::F32 {
                bail!("--precision {precision} is for --model sd15; the analytic prior is exact in f32");
            }
            if args.latent_size.is_some() {
                bail!("--latent-size is for --model sd15; the analytic prior's shape is --analytic-shape C,H,W");
            }
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
            Ok(Model::Analytic(AnalyticPrior::new(AnalyticConfig { shape, captions, ..Default::default() })?))
        }
        "sd15" => {
            let Some(dir) = &args.weights else {
                bail!("--model sd15 needs --weights DIR (or DDREP_SD15): {SD15_FOLDER_HOWTO}");
            };
            let latent_size = match args.latent_size.as_deref() {
                None => None,
                Some([h, w]) => Some([*h, *w]),
                Some(_) => bail!("--latent-size takes two numbers H,W (latent pixels; images are 8x larger for SD1.5)"),
            };
            match precision {
                Precision::F32 => Ok(Model::Sd15(Box::new(load_sd15::<B>(dir, latent_size, device)?))),
                #[cfg(feature = "cuda")]
                Precision::F16 => cast_sd15::<crate::backend::CudaF16, B>(dir, latent_size, precision),
                #[cfg(feature = "cuda")]
                Precision::Bf16 => cast_sd15::<crate::backend::CudaBf16, B>(dir, latent_size, precision),
                #[cfg(not(feature = "cuda"))]
                other => bail!("--precision {other} needs the CUDA backend: this build has none (rebuild with --features cuda and pass --device cuda)"),
            }
        }
        other => bail!("unknown model '{other}' (expected analytic or sd15)"),
    }
}

/// SD1.5 on its own backend `L` (fp16/bf16 on CUDA) behind the sampler's backend `B`.
#[cfg(feature = "cuda")]
fn cast_sd15<L: Backend, B: Backend>(dir: &std::path::Path, latent_size: Option<[usize; 2]>, precision: Precision) -> Result<Model<B>> {
    let dev = Default::default();
    let m = load_sd15::<L>(dir, latent_size, &dev)?;
    Ok(Model::Sd15Cast(Box::new(crate::models::sd15::precision::CastSd15::<L, B>::new(m, precision, &dev))))
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
    if !matches!(DiffrepSpec::default_for(&a.diffrep)?, DiffrepSpec::Siren(_)) {
        bail!("ddrep sample draws image SIRENs only; run panoramas and NeRFs with `ddrep run` (experiments/demo_panorama_repaint.yaml, experiments/demo_nerf.yaml)");
    }
    if !a.cfg.is_finite() {
        bail!("--cfg must be a finite number, got {}", a.cfg);
    }
    if a.num_samples == 0 {
        bail!("--num-samples must be at least 1");
    }
    crate::limits::at_most("--num-samples", a.num_samples, crate::limits::MAX_SAMPLES)?;
    // Sample k uses seed + k; the last one must not wrap around.
    if a.seed.checked_add(a.num_samples as u64 - 1).is_none() {
        bail!("--seed {} with --num-samples {} runs past the largest seed ({})", a.seed, a.num_samples, u64::MAX);
    }
    let guidance = Guidance::new(a.cfg, a.cfg_convention.parse::<CfgConvention>()?);
    crate::backend::check_device_precision(&a.device, &a.model.precision)?;
    match a.device.as_str() {
        "cpu" => sample_on::<crate::backend::CpuAutodiff>(a, &spec, guidance, &Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => sample_on::<crate::backend::CudaAutodiff>(a, &spec, guidance, &Default::default()),
        other => unreachable!("device '{other}' was validated above"),
    }
}

/// The files an earlier `ddrep sample` recorded in `record`: only names `sample` itself writes
/// (never a path, never another file of the folder), so an edited record cannot point elsewhere.
fn earlier_sample_files(record: &std::path::Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(record) else { return Vec::new() };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    let ours = |f: &str| {
        let seed = f.strip_prefix("sample_seed").and_then(|r| r.strip_suffix(".png"));
        seed.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) || f == "output.safetensors" || f == "params.safetensors"
    };
    v["files"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).filter(|f| ours(f)).map(str::to_string).collect()
}

fn sample_on<B: AutodiffBackend + crate::diffrep::sine::SineBackend>(
    a: &SampleArgs,
    spec: &MethodSpec,
    guidance: Guidance,
    device: &B::Device,
) -> Result<()> {
    let model = build_model::<B::InnerBackend>(&a.model, std::slice::from_ref(&a.prompt), device)?;
    let den = model.denoiser();
    let [c, h, w] = den.sample_shape();
    let siren = SirenConfig { resolution: [h, w], out_channels: c, width: a.width, depth: a.depth, embedding_size: a.embedding, ..Default::default() };
    siren.validate()?;
    let diffrep = DiffrepSpec::Siren(siren);
    // Refuse an unusable --out now, but create it only when there is something to write: a
    // run that fails (a setting the sampler refuses, a NaN) leaves nothing behind.
    if a.out.exists() && !a.out.is_dir() {
        bail!("output path {} exists and is not a directory", a.out.display());
    }

    let seeds: Vec<u64> = (0..a.num_samples as u64).map(|i| a.seed + i).collect();
    let res = run_method::<B>(den, spec, &diffrep, &vec![a.prompt.clone(); seeds.len()], guidance, &seeds, device)?;
    let out = ensure_out_dir(&a.out)?;
    let (images, img_shape) = model.to_images(&res.images, res.shape, device)?;
    let mut files = Vec::new();
    for (seed, img) in seeds.iter().zip(&images) {
        let name = format!("sample_seed{seed}.png");
        write_png(&out.join(&name), img, img_shape)?;
        files.push(name);
    }
    let n = seeds.len();
    let all: Vec<f32> = res.images.iter().flatten().cloned().collect();
    let [c, h, w] = res.shape;
    // SD1.5 samples are latents (pipeline space, `ddrep decode` reads them back).
    let tensor_name = match model {
        Model::Analytic(_) => "image",
        Model::Sd15(_) | Model::Sd15Cast(_) => "latents",
    };
    write_safetensors(&out.join("output.safetensors"), &[NamedTensor { name: tensor_name.into(), shape: vec![n, c, h, w], data: all }])?;
    files.push("output.safetensors".into());
    if let Some(p) = &res.params {
        write_safetensors(&out.join("params.safetensors"), p)?;
        files.push("params.safetensors".into());
    }
    let record = json!({
        "ddrep_version": CRATE_VERSION,
        "git_commit": GIT_COMMIT,
        "command": std::env::args().collect::<Vec<_>>(),
        "model": den.describe(),
        "model_config": model.record()?,
        "method": spec,
        "diffrep": res.diffrep,
        "prompt": a.prompt,
        "guidance": guidance,
        "seeds": seeds,
        "backend": std::any::type_name::<B>(),
        "nfe": res.nfe,
        "seconds": res.seconds,
        "output_shape": [c, h, w],
        "image_shape": img_shape,
        "files": files,
        "diagnostics": res.diagnostics,
    });
    let earlier = earlier_sample_files(&out.join("record.json"));
    write_json(&out.join("record.json"), &record)?;
    // Outputs of an earlier sample into this folder that this one did not rewrite (more seeds,
    // params of another method) would sit beside the new record as if they were its own.
    for name in earlier.iter().filter(|f| !files.contains(f)) {
        let _ = std::fs::remove_file(out.join(name));
    }
    println!("{} {} sample(s) of '{}' with {} (model: {}) -> {} [{} NFEs, {:.1} s]", n, spec.name(), a.prompt, a.diffrep, model.label(), out.display(), res.nfe, res.seconds);
    Ok(())
}

pub fn decode(a: &DecodeArgs) -> Result<()> {
    let precision = crate::backend::check_device_precision(&a.device, &a.precision)?;
    crate::backend::with_model_backend!(a.device.as_str(), precision, |M| decode_on::<M>(a, &Default::default()))
}

fn decode_on<B: Backend>(a: &DecodeArgs, device: &B::Device) -> Result<()> {
    let Some(dir) = &a.weights else {
        bail!("ddrep decode needs --weights DIR (or DDREP_SD15): {SD15_FOLDER_HOWTO}");
    };
    let (latents, shape, name) = read_latents(&a.latents, a.tensor.as_deref())?;
    let vae = load_vae::<B>(dir, device)?;
    if shape[0] != vae.config.latent_channels {
        bail!("{}: tensor '{name}' has {} channels but the VAE takes {} (shape {shape:?})", a.latents.display(), shape[0], vae.config.latent_channels);
    }
    let (images, img_shape) = decode_latents(&vae, &latents, shape, device)?;
    let out = ensure_out_dir(&a.out)?;
    let mut files = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let f = format!("{name}_{i}.png");
        write_png(&out.join(&f), img, img_shape)?;
        files.push(f);
    }
    println!("decoded {} latent(s) {:?} from {} -> {} image(s) {:?} in {}", latents.len(), shape, a.latents.display(), files.len(), img_shape, out.display());
    Ok(())
}

pub fn run(cli: Cli) -> Result<()> {
    crate::models::sd15::layers::gpu_conv().map_err(|e| anyhow::anyhow!(e))?;
    crate::models::sd15::layers::gpu_attention().map_err(|e| anyhow::anyhow!(e))?;
    crate::models::sd15::layers::gpu_matmul().map_err(|e| anyhow::anyhow!(e))?;
    crate::models::sd15::layers::gpu_ops().map_err(|e| anyhow::anyhow!(e))?;
    match cli.command {
        Command::Sample(a) => sample(&a),
        Command::Decode(a) => decode(&a),
        Command::Demo(a) => crate::demo::demo(&a),
        Command::Bench(a) => crate::bench::bench(&a),
        Command::Parity(a) => crate::parity::parity(&a),
        Command::Compare(a) => crate::report::compare::compare(&a),
        Command::Score(a) => crate::report::score::score(&a),
        Command::Report(a) => crate::report::generate::report(&a),
        Command::Run(a) => crate::experiment::run(&a),
        Command::Status(a) => crate::experiment::status(&a),
        Command::Slurm(a) => crate::experiment::slurm(&a),
    }
}
