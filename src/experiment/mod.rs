//! The experiment harness: a YAML grid (`schema`), its captions (`captions`), a
//! content-addressed resumable store of cells (`store`), and `ddrep run` / `ddrep status`.
//!
//! A cell is one sample: (method entry, CFG scale, caption, seed). Each cell runs alone
//! (`run_method` with one prompt and one seed), so its bytes never depend on which other
//! cells ran in the same process, were cached, or belong to another shard.

pub mod captions;
pub mod schema;
pub mod store;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use serde_json::json;

use crate::diffrep::NamedTensor;
use crate::diffusion::{Denoiser, Guidance};
use crate::io::{png_bytes, CRATE_VERSION, GIT_COMMIT};
use crate::methods::{run_method, MethodSpec};
use crate::models::sd15::precision::{CastSd15, Precision};
use crate::models::{AnalyticConfig, AnalyticPrior};
use captions::Caption;
use schema::{DeviceKind, ExperimentFile, ModelSpec};
use store::{cell_id, CellCheck, CellLock, Heartbeat, Store};

/// Version of the cell layout; part of every key.
pub const STORE_FORMAT: u32 = 1;
pub const SD15_ENV: &str = "DDREP_SD15";

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Experiment YAML file.
    pub file: PathBuf,
    /// Overrides KEY=VALUE (`cfg=[0,3]`, `methods.1.iters=500`, `outputs.dir=/tmp/r`).
    pub overrides: Vec<String>,
    /// Print the cell count, how many are cached and the NFEs left; compute nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run shard I of N (0-based): cell k of the grid belongs to shard k mod N.
    #[arg(long)]
    pub shard: Option<String>,
    /// Check the done cells (of this shard) against their recorded sha256 first; a damaged
    /// one is moved to `damaged/` and computed again.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    pub file: PathBuf,
    pub overrides: Vec<String>,
    /// Read every done cell's files and check them against the sha256 in its cell.json;
    /// exit 1 if any is damaged.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Args, Debug)]
pub struct SlurmArgs {
    pub file: PathBuf,
    pub overrides: Vec<String>,
    /// Number of array tasks (shards).
    #[arg(long)]
    pub array: usize,
    /// Extra `#SBATCH` options, e.g. `--sbatch=--partition=gpu --sbatch=--gres=gpu:1`.
    #[arg(long = "sbatch", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// Where to write the script (default: `<results>/<name>/slurm.sbatch`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Writes an sbatch job-array script: task `i` runs `ddrep run FILE --shard i/N`.
pub fn slurm(a: &SlurmArgs) -> Result<()> {
    if a.array == 0 {
        bail!("--array must be at least 1");
    }
    crate::limits::at_most("--array", a.array, crate::limits::MAX_GRID_CELLS)?;
    // Each option becomes one `#SBATCH` line of the script: a line break would start a shell
    // command of its own.
    if let Some(o) = a.sbatch.iter().find(|o| !o.starts_with('-') || o.chars().any(char::is_control)) {
        bail!("--sbatch {o:?}: expected one sbatch option such as --partition=gpu (starting with '-', on one line)");
    }
    let p = plan(&a.file, &a.overrides)?;
    let exe = std::env::current_exe().context("cannot find the ddrep executable")?;
    let file = std::fs::canonicalize(&a.file)?;
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut script = format!("#!/bin/bash\n#SBATCH --job-name=ddrep-{}\n#SBATCH --array=0-{}\n", p.file.name, a.array - 1);
    for o in &a.sbatch {
        script.push_str(&format!("#SBATCH {o}\n"));
    }
    let overrides: Vec<String> = a.overrides.iter().map(|o| q(o)).collect();
    script.push_str(&format!(
        "set -euo pipefail\nexec {} run {} {} --shard \"${{SLURM_ARRAY_TASK_ID}}/{}\"\n",
        q(&exe.to_string_lossy()),
        q(&file.to_string_lossy()),
        overrides.join(" "),
        a.array
    ));
    let out = a.out.clone().unwrap_or_else(|| p.root.join("slurm.sbatch"));
    if let Some(d) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create the folder of {}", out.display()))?;
    }
    crate::io::write_atomic(&out, script.as_bytes())?;
    println!("{}: {} cells in {} array tasks -> {} (submit with: sbatch {})", p.file.name, p.cells.len(), a.array, out.display(), out.display());
    Ok(())
}

/// The model as it enters cell keys.
#[derive(Clone, Debug)]
pub enum ResolvedModel {
    Analytic(AnalyticConfig),
    Sd15 { dir: PathBuf, hashes: BTreeMap<String, String>, precision: Precision },
}

impl ResolvedModel {
    fn key(&self) -> serde_json::Value {
        match self {
            ResolvedModel::Analytic(c) => json!({ "analytic": c }),
            ResolvedModel::Sd15 { hashes, precision, .. } => sd15_key(Some(hashes), *precision),
        }
    }
}

/// SD1.5's part of a cell key; `hashes: None` leaves the weights out (`key_without_weights`).
fn sd15_key(hashes: Option<&BTreeMap<String, String>>, precision: Precision) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some(h) = hashes {
        m.insert("sha256".into(), json!(h));
    }
    // f32 adds nothing, so cells computed before precision existed keep their keys.
    if precision != Precision::F32 {
        m.insert("precision".into(), json!(precision));
    }
    json!({ "sd15": m })
}

/// One cell of the grid.
#[derive(Clone, Debug)]
pub struct Cell {
    pub id: String,
    /// Position in the grid (for sharding).
    pub index: usize,
    pub label: String,
    pub method: MethodSpec,
    pub cfg: f64,
    /// The grid seed; the run uses `seed + seed_offset`.
    pub seed: u64,
    pub run_seed: u64,
    pub caption: Caption,
    pub caption_index: usize,
    pub key: serde_json::Value,
}

impl Cell {
    /// `label cfg C seed S caption I`: how progress and status lines name a cell.
    fn summary(&self) -> String {
        format!("{} cfg {} seed {} caption {}", self.label, self.cfg, self.seed, self.caption_index)
    }
}

pub struct Plan {
    pub file: ExperimentFile,
    pub root: PathBuf,
    pub model: ResolvedModel,
    pub cells: Vec<Cell>,
}

/// The files of a diffusers SD1.5 folder that determine its outputs, hashed (cached).
fn sd15_hashes(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in ["text_encoder", "unet", "vae", "tokenizer", "scheduler"] {
        let pd = dir.join(part);
        if !pd.is_dir() {
            bail!("{}: part folder {part}/ is missing: pass a complete diffusers SD1.5 folder", dir.display());
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&pd)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors" || e == "json" || e == "txt"))
            .collect();
        files.sort();
        for f in files {
            let h = crate::models::sd15::sha256_cached(&f)?;
            out.insert(format!("{part}/{}", f.file_name().unwrap().to_string_lossy()), h);
        }
    }
    Ok(out)
}

fn resolve_model(file: &ExperimentFile, caps: &[Caption]) -> Result<ResolvedModel> {
    Ok(match &file.model {
        ModelSpec::Analytic(c) => {
            let mut c = c.clone();
            if c.captions.is_empty() {
                c.captions = caps.iter().map(|c| c.text.clone()).collect();
            }
            AnalyticPrior::new(c.clone())?;
            ResolvedModel::Analytic(c)
        }
        ModelSpec::Sd15(s) => {
            let how = "a diffusers-format Stable Diffusion 1.5 folder (model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/), e.g. from `huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR`";
            let dir = match &s.weights {
                Some(d) => d.clone(),
                None => match std::env::var_os(SD15_ENV) {
                    Some(d) if !d.is_empty() => PathBuf::from(d),
                    _ => bail!("model sd15 needs its weights: set model.weights or {SD15_ENV} to {how}"),
                },
            };
            if s.precision != Precision::F32 && file.device != DeviceKind::Cuda {
                bail!("model.precision {} runs on the GPU only: set device: cuda (a build with --features cuda) or precision: f32", s.precision);
            }
            if !dir.is_dir() {
                bail!("SD1.5 weights folder {} does not exist: it must be {how}", dir.display());
            }
            ResolvedModel::Sd15 { hashes: sd15_hashes(&dir)?, dir, precision: s.precision }
        }
    })
}

/// Parses the file, resolves captions and the model, and expands the grid.
pub fn plan(path: &Path, overrides: &[String]) -> Result<Plan> {
    let file = schema::load(path, overrides)?;
    let caps = captions::resolve(&file.captions).with_context(|| format!("{}: captions", path.display()))?;
    let model = resolve_model(&file, &caps).with_context(|| format!("{}: model", path.display()))?;
    check_against_model(&file, &model).with_context(|| path.display().to_string())?;
    let cells = expand(path, &file, &caps, &model.key())?;
    let root = file.outputs.dir.join(&file.name);
    Ok(Plan { file, root, model, cells })
}

/// What each cell would find out when it starts, told once before anything runs (status,
/// --dry-run, slurm): the diffrep's samples against the model's shape, and the methods'
/// steps against its schedule. SD1.5's come from its configs (no weights are read).
fn check_against_model(file: &ExperimentFile, model: &ResolvedModel) -> Result<()> {
    let want = file.diffrep.denoised_shape();
    let schedule = match model {
        ResolvedModel::Analytic(c) => {
            if want != c.shape {
                bail!(
                    "the {} diffrep's denoised samples are {want:?} (channels, height, width) but the analytic prior's shape is {:?}: make model.shape and the diffrep's resolution and channels agree",
                    file.diffrep.name(),
                    c.shape
                );
            }
            // resolve_model built and validated the prior; its schedule needs none built.
            AnalyticPrior::training_schedule()
        }
        ResolvedModel::Sd15 { dir, .. } => {
            let s = crate::models::sd15::sampling_shape(dir).context("model")?;
            let shape = match latent_size(&file.diffrep) {
                Some(hw) => {
                    check_latent_multiple(hw, s.latent_multiple)?;
                    [s.sample_shape[0], hw[0], hw[1]]
                }
                None => s.sample_shape,
            };
            check_sample_shape(file, shape)?;
            s.schedule
        }
    };
    for (i, m) in file.methods.iter().enumerate() {
        m.spec.check_schedule(&schedule).with_context(|| format!("methods[{i}] ({})", m.label()))?;
    }
    Ok(())
}

/// SD1.5 samples latents of the views' size for multiview diffreps; SIRENs take the UNet's.
fn latent_size(d: &crate::methods::DiffrepSpec) -> Option<[usize; 2]> {
    let s = d.denoised_shape();
    d.is_multiview().then_some([s[1], s[2]])
}

fn check_latent_multiple([h, w]: [usize; 2], k: usize) -> Result<()> {
    if h % k != 0 || w % k != 0 {
        bail!("diffrep views of {h}x{w} latents: both sides must be multiples of {k} for this UNet");
    }
    Ok(())
}

/// The diffrep's renders (or views) against what the model samples; the reference method
/// samples the model's shape itself, so a grid of it alone needs no match.
fn check_sample_shape(file: &ExperimentFile, shape: [usize; 3]) -> Result<()> {
    let needed = file.diffrep.denoised_shape();
    if needed != shape && file.methods.iter().any(|m| !matches!(m.spec, MethodSpec::Reference(_))) {
        let what = if file.diffrep.is_multiview() { "views" } else { "renders" };
        let fix = match file.diffrep {
            crate::methods::DiffrepSpec::Siren(_) => "diffrep.resolution and diffrep.out_channels",
            crate::methods::DiffrepSpec::Panorama(_) => "diffrep.views.resolution and diffrep.out_channels",
            crate::methods::DiffrepSpec::Voxnerf(_) => "diffrep.views.resolution and diffrep.channels",
        };
        bail!("diffrep {what} {needed:?} but the model samples {shape:?}: set {fix} to match");
    }
    Ok(())
}

/// The grid's cells as `plan` makes them, except that SD1.5's weights are not read: the keys
/// hold no weight hashes, and ids are empty. For reading results where the weights are absent:
/// a stored cell belongs to the grid when `key_without_weights` of its key equals a cell's key.
pub fn plan_without_weights(path: &Path, overrides: &[String]) -> Result<Vec<Cell>> {
    let file = schema::load(path, overrides)?;
    let caps = captions::resolve(&file.captions).with_context(|| format!("{}: captions", path.display()))?;
    let model_key = match &file.model {
        ModelSpec::Sd15(s) => sd15_key(None, s.precision),
        ModelSpec::Analytic(_) => resolve_model(&file, &caps).with_context(|| format!("{}: model", path.display()))?.key(),
    };
    let mut cells = expand(path, &file, &caps, &model_key)?;
    for c in &mut cells {
        c.id.clear();
    }
    Ok(cells)
}

/// A cell key with SD1.5's weight hashes left out (`model.sd15.sha256`).
pub fn key_without_weights(key: &serde_json::Value) -> serde_json::Value {
    let mut k = key.clone();
    if let Some(m) = k.get_mut("model").and_then(|m| m.get_mut("sd15")).and_then(|m| m.as_object_mut()) {
        m.remove("sha256");
    }
    k
}

/// The method x cfg x caption x seed cells of `file` that `exclude` leaves, keyed with `model_key`.
fn expand(path: &Path, file: &ExperimentFile, caps: &[Caption], model_key: &serde_json::Value) -> Result<Vec<Cell>> {
    let diffrep = serde_json::to_value(&file.diffrep)?;
    let device = match file.device {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Cuda => "cuda",
    };
    // Checked before expanding: every cell holds its key in memory.
    let product = [file.methods.len(), file.cfg.len(), caps.len(), file.seeds.0.len()].iter().try_fold(1usize, |a, &n| a.checked_mul(n));
    if product.is_none_or(|n| n > crate::limits::MAX_GRID_CELLS) {
        bail!(
            "{}: the grid has {} methods x {} guidance scales x {} captions x {} seeds, more than {} cells; split it into several experiment files",
            path.display(),
            file.methods.len(),
            file.cfg.len(),
            caps.len(),
            file.seeds.0.len(),
            crate::limits::MAX_GRID_CELLS
        );
    }
    let mut cells = Vec::new();
    let mut total = 0;
    for entry in &file.methods {
        let label = entry.label();
        for &w in &file.cfg {
            for (ci, cap) in caps.iter().enumerate() {
                for &seed in &file.seeds.0 {
                    total += 1;
                    let excluded = file.exclude.iter().any(|x| {
                        x.method.as_ref().is_none_or(|m| *m == label)
                            && x.cfg.is_none_or(|c| c == w)
                            && x.seed.is_none_or(|s| s == seed)
                            && x.caption.as_ref().is_none_or(|c| c.trim() == cap.text)
                    });
                    if excluded {
                        continue;
                    }
                    let run_seed = seed.checked_add(entry.seed_offset).ok_or_else(|| anyhow!("{}: seed {seed} + seed_offset overflows", path.display()))?;
                    let guidance = Guidance::new(w, file.sampler.cfg_convention);
                    let key = json!({
                        "format": STORE_FORMAT,
                        "model": model_key,
                        "method": entry.spec,
                        "diffrep": diffrep,
                        "guidance": guidance,
                        "prompt": cap.text,
                        "seed": run_seed,
                        "device": device,
                    });
                    cells.push(Cell {
                        id: cell_id(&key),
                        index: cells.len(),
                        label: label.clone(),
                        method: entry.spec.clone(),
                        cfg: w,
                        seed,
                        run_seed,
                        caption: cap.clone(),
                        caption_index: ci,
                        key,
                    });
                }
            }
        }
    }
    if cells.is_empty() {
        bail!("{}: the grid is empty: `exclude` removes all {total} cells", path.display());
    }
    Ok(cells)
}

/// Denoiser evaluations one cell needs (a CFG pair counts as one).
pub fn nfe_estimate(m: &MethodSpec) -> usize {
    match m {
        MethodSpec::Reference(c) => c.steps,
        MethodSpec::Ddrep(c) => crate::diffusion::repaint::chain_moves(c.steps, c.repaint).map(|m| crate::diffusion::repaint::nfe_count(&m)).unwrap_or(c.steps),
        MethodSpec::Sjc(c) => c.iters,
        MethodSpec::Sds(c) => c.iters,
    }
}

fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || anyhow!("--shard takes I/N with 0 <= I < N, e.g. --shard 0/4; got '{s}'");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

pub fn status(a: &StatusArgs) -> Result<()> {
    let p = plan(&a.file, &a.overrides)?;
    let (mut done, mut failed, mut pending) = (0, 0, 0);
    let mut per: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut failures: Vec<&Cell> = Vec::new();
    for c in &p.cells {
        let slot = if Store::is_complete(&p.root, &c.id) {
            done += 1;
            0
        } else if Store::failed_path(&p.root, &c.id).is_file() {
            failed += 1;
            failures.push(c);
            2
        } else {
            pending += 1;
            1
        };
        per.entry(c.label.clone()).or_default()[slot] += 1;
    }
    let on_disk = Store::complete_ids(&p.root);
    let grid: std::collections::HashSet<&str> = p.cells.iter().map(|c| c.id.as_str()).collect();
    let other = on_disk.iter().filter(|id| !grid.contains(id.as_str())).count();
    println!("{}: {} cells: {done} done, {pending} pending, {failed} failed ({})", p.file.name, p.cells.len(), p.root.display());
    for (l, [d, pe, f]) in per {
        println!("  {l:<20} {d} done, {pe} pending, {f} failed");
    }
    if other > 0 {
        println!("  ({other} other complete cells in the store belong to other settings)");
    }
    for r in store::running(&p.root) {
        println!("  {}", running_line(&r));
    }
    // Why cells failed (their last attempt), so a grid's problem shows without opening files.
    for c in failures.iter().take(STATUS_FAILURES) {
        let p = Store::failed_path(&p.root, &c.id);
        let why = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("(unreadable record {})", p.display()));
        println!("  failed: {}: {why}", c.summary());
    }
    if failures.len() > STATUS_FAILURES {
        println!("  ... and {} more failed cells (failed/<cell id>.json)", failures.len() - STATUS_FAILURES);
    }
    let aside = std::fs::read_dir(p.root.join("damaged")).map(|d| d.count()).unwrap_or(0);
    if aside > 0 {
        println!("  ({aside} damaged cells set aside by `run --verify` are kept in {})", p.root.join("damaged").display());
    }
    if a.verify {
        let (damaged, unrecorded) = verify_cells(&p, p.cells.iter());
        for (c, why) in &damaged {
            println!("  damaged: {}: {why} ({})", c.summary(), Store::cell_dir(&p.root, &c.id).display());
        }
        let checked = done - unrecorded;
        println!("verified {checked} of {done} done cells against their recorded sha256: {} damaged", damaged.len());
        if unrecorded > 0 {
            println!("  ({unrecorded} cells predate recorded hashes: their files were checked for presence only)");
        }
        if !damaged.is_empty() {
            bail!("{} damaged cells in {}: `ddrep run {} --verify` sets them aside under damaged/ and computes them again", damaged.len(), p.root.display(), a.file.display());
        }
    }
    Ok(())
}

/// One heartbeat as `status` prints it.
fn running_line(r: &store::Running) -> String {
    let h = &r.record;
    let shard = h["shard"].as_str().map(|s| format!("shard {s} ")).unwrap_or_default();
    let who = format!("{shard}on {} (pid {})", h["host"].as_str().unwrap_or("?"), h["pid"]);
    if r.stale {
        return format!("stale: a run {who} is gone (killed?); its cells are pending, and the next run clears this note");
    }
    let now = store::unix_now();
    let ago = |k: &str| {
        let s = now.saturating_sub(h[k].as_u64().unwrap_or(now));
        if s >= 3600 { format!("{}h{:02}m", s / 3600, s / 60 % 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
    };
    let at = match h["cell"].as_object() {
        Some(c) => format!(
            "cell {} of {}: {} cfg {} seed {} caption {}",
            h["done"].as_u64().unwrap_or(0) + 1,
            h["cells"],
            c.get("label").and_then(|v| v.as_str()).unwrap_or("?"),
            c.get("cfg").and_then(|v| v.as_f64()).unwrap_or(f64::NAN),
            c.get("seed").and_then(|v| v.as_u64()).unwrap_or(0),
            c.get("caption_index").and_then(|v| v.as_u64()).unwrap_or(0)
        ),
        None => format!("loading the model for {} cells", h["cells"]),
    };
    format!("running: {who}, {at}, for {} (at this cell since {})", ago("started"), ago("updated"))
}

/// Failed cells whose error `status` prints.
const STATUS_FAILURES: usize = 5;

/// The complete cells among `cells` that fail `Store::verify`, with why, and how many had no
/// recorded hashes.
fn verify_cells<'a>(p: &Plan, cells: impl Iterator<Item = &'a Cell>) -> (Vec<(&'a Cell, String)>, usize) {
    let (mut damaged, mut unrecorded) = (Vec::new(), 0);
    for c in cells.filter(|c| Store::is_complete(&p.root, &c.id)) {
        match Store::verify(&p.root, &c.id) {
            CellCheck::Intact => {}
            CellCheck::Unrecorded => unrecorded += 1,
            CellCheck::Damaged(why) => damaged.push((c, why)),
        }
    }
    (damaged, unrecorded)
}

pub fn run(a: &RunArgs) -> Result<()> {
    let p = plan(&a.file, &a.overrides)?;
    let shard = a.shard.as_deref().map(parse_shard).transpose()?;
    let mine: Vec<&Cell> = p.cells.iter().filter(|c| shard.is_none_or(|(i, n)| c.index % n == i)).collect();
    let damaged = if a.verify { verify_cells(&p, mine.iter().copied()).0 } else { Vec::new() };
    let mut pending: Vec<&Cell> = mine.iter().copied().filter(|c| !Store::is_complete(&p.root, &c.id)).collect();
    // Damaged cells run after the missing ones, in grid order.
    pending.extend(damaged.iter().map(|(c, _)| *c));
    let nfe: usize = pending.iter().map(|c| nfe_estimate(&c.method)).sum();
    let shard_note = shard.map(|(i, n)| format!(" (shard {i}/{n}: {} cells)", mine.len())).unwrap_or_default();
    if a.dry_run {
        println!(
            "{}: {} cells{shard_note}, {} cached, {} to run, about {nfe} NFEs -> {}",
            p.file.name,
            p.cells.len(),
            mine.len() - pending.len(),
            pending.len(),
            p.root.display()
        );
        return Ok(());
    }
    let store = Store::open(&p.root, shard.is_some())?;
    write_resolved(&p)?;
    for (c, why) in &damaged {
        // Under the cell's lock, so a shard of another process cannot be reading it (each
        // shard verifies only its own cells).
        if let CellLock::Held(_lock) = store.lock_cell(&c.id)? {
            let dest = store.set_aside(&c.id)?;
            eprintln!("damaged cell {} ({}): {why}; moved to {} and computed again", c.id, c.label, dest.display());
        }
    }
    if pending.is_empty() {
        println!("{}: all {} cells{shard_note} are done (0 NFEs) -> {}", p.file.name, mine.len(), p.root.display());
        return Ok(());
    }
    let mut hb = Heartbeat::start(&p.root, shard, pending.len())?;
    let outcome = match p.file.device {
        DeviceKind::Cpu => execute::<crate::backend::CpuAutodiff>(&p, &store, &pending, &mut hb, &Default::default())?,
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            crate::backend::check_device("cuda")?;
            execute::<crate::backend::CudaAutodiff>(&p, &store, &pending, &mut hb, &Default::default())?
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => bail!("device cuda: this build has no CUDA backend; rebuild with --features cuda or set device=cpu"),
    };
    println!(
        "{}: {} cells{shard_note}: {} cached, {} computed ({} NFEs), {} left to other processes, {} failed -> {}",
        p.file.name,
        mine.len(),
        mine.len() - pending.len(),
        outcome.computed,
        outcome.nfe,
        outcome.busy,
        outcome.failed.len(),
        p.root.display()
    );
    if !outcome.failed.is_empty() {
        for (c, e) in outcome.failed.iter().take(5) {
            eprintln!("  failed: {} cfg {} seed {} '{}': {e}", c.label, c.cfg, c.seed, c.caption.text);
        }
        bail!("{} of {} cells failed (errors in {}/failed/); rerun to retry them", outcome.failed.len(), pending.len(), p.root.display());
    }
    Ok(())
}

/// The resolved experiment beside the cells, for reports.
fn write_resolved(p: &Plan) -> Result<()> {
    let cells: Vec<serde_json::Value> = p
        .cells
        .iter()
        .map(|c| json!({"id": c.id, "label": c.label, "cfg": c.cfg, "seed": c.seed, "caption_index": c.caption_index, "caption": c.caption}))
        .collect();
    crate::io::write_json(&p.root.join("experiment.json"), &json!({"experiment": p.file, "cells": cells}))
}

/// Latents -> images through the SD1.5 VAE (on whatever backend and precision the model
/// runs), in tiles of at most that many latent columns (`usize::MAX`: in one piece).
type Decoder = Box<dyn Fn(&[Vec<f32>], [usize; 3], usize) -> Result<(Vec<Vec<f32>>, [usize; 3])>>;

/// SD1.5 in f32 on the sampler's backend, with its VAE as the cells' decoder. `latent` sets
/// the latent size (multiview views).
fn sd15_f32<B: Backend>(dir: &Path, latent: Option<[usize; 2]>, device: &B::Device) -> Result<(Box<dyn Denoiser<B>>, Option<Decoder>)> {
    let m = std::sync::Arc::new(load_sd15_sized::<B>(dir, latent, device)?);
    let (mm, dev) = (m.clone(), device.clone());
    let decoder: Decoder = Box::new(move |imgs, shape, tile| crate::pipeline::decode_latents_tiled(&mm.vae, imgs, shape, tile, &dev));
    Ok((Box::new(m), Some(decoder)))
}

/// SD1.5 on its own backend `L` (fp16/bf16) behind the samplers' backend `B`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn sd15_cast<L: Backend, B: Backend>(
    dir: &Path,
    latent: Option<[usize; 2]>,
    precision: Precision,
    device: &L::Device,
) -> Result<(Box<dyn Denoiser<B>>, Option<Decoder>)> {
    let m = std::sync::Arc::new(CastSd15::<L, B>::new(load_sd15_sized::<L>(dir, latent, device)?, precision, device));
    let (mm, dev) = (m.clone(), device.clone());
    let decoder: Decoder = Box::new(move |imgs, shape, tile| crate::pipeline::decode_latents_tiled(&mm.model.vae, imgs, shape, tile, &dev));
    Ok((Box::new(m), Some(decoder)))
}

fn load_sd15_sized<L: Backend>(dir: &Path, latent: Option<[usize; 2]>, device: &L::Device) -> Result<crate::models::sd15::Sd15<L>> {
    let mut m = crate::models::sd15::Sd15::<L>::load(dir, device)?;
    if let Some([h, w]) = latent {
        // SD1.5 samples latents of any size the UNet divides: the views' size.
        check_latent_multiple([h, w], m.latent_multiple())?;
        m.set_latent_size(h, w);
    }
    Ok(m)
}

struct Outcome<'a> {
    computed: usize,
    nfe: usize,
    busy: usize,
    failed: Vec<(&'a Cell, String)>,
}

fn execute<'a, B: AutodiffBackend + crate::diffrep::sine::SineBackend>(p: &Plan, store: &Store, pending: &[&'a Cell], hb: &mut Heartbeat, device: &B::Device) -> Result<Outcome<'a>> {
    let (model, decoder): (Box<dyn Denoiser<B::InnerBackend>>, Option<Decoder>) = match &p.model {
        ResolvedModel::Analytic(c) => (Box::new(AnalyticPrior::new(c.clone())?), None),
        ResolvedModel::Sd15 { dir, precision, .. } => {
            let latent = latent_size(&p.file.diffrep);
            match precision {
                Precision::F32 => sd15_f32::<B::InnerBackend>(dir, latent, device)?,
                #[cfg(feature = "cuda")]
                Precision::F16 => sd15_cast::<crate::backend::CudaF16, B::InnerBackend>(dir, latent, *precision, &Default::default())?,
                #[cfg(feature = "cuda")]
                Precision::Bf16 => sd15_cast::<crate::backend::CudaBf16, B::InnerBackend>(dir, latent, *precision, &Default::default())?,
                #[cfg(not(feature = "cuda"))]
                other => bail!("model.precision {other} needs the CUDA backend: this build has none (rebuild with --features cuda)"),
            }
        }
    };
    let model = model.as_ref();
    let decoder = decoder.as_ref();
    // plan checked the configs; this checks the model as loaded.
    check_sample_shape(&p.file, model.sample_shape())?;
    let term = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::with_draw_target(if term { indicatif::ProgressDrawTarget::stderr() } else { indicatif::ProgressDrawTarget::hidden() });
    let grid = bars.add(indicatif::ProgressBar::new(pending.len() as u64));
    grid.set_style(indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} cells, {elapsed} elapsed, ETA {eta}").unwrap().progress_chars("=> "));
    grid.set_prefix(p.file.name.clone());
    let cur = bars.add(indicatif::ProgressBar::new_spinner());
    cur.set_style(indicatif::ProgressStyle::with_template("  {spinner} {msg} ({elapsed})").unwrap());
    cur.enable_steady_tick(std::time::Duration::from_millis(200));
    let mut out = Outcome { computed: 0, nfe: 0, busy: 0, failed: Vec::new() };
    for (k, &c) in pending.iter().enumerate() {
        cur.set_message(c.summary());
        // Informational (status shows it): a heartbeat that cannot be written stops nothing.
        let _ = hb.at(k, json!({"id": c.id, "label": c.label, "cfg": c.cfg, "seed": c.seed, "caption_index": c.caption_index}));
        cur.reset_elapsed();
        let lock = match store.lock_cell(&c.id)? {
            CellLock::Held(f) => f,
            CellLock::Busy => {
                out.busy += 1;
                grid.inc(1);
                continue;
            }
        };
        if Store::is_complete(&store.root, &c.id) {
            grid.inc(1);
            continue;
        }
        match run_cell::<B>(p, store, c, model, decoder, device) {
            Ok(n) => {
                out.computed += 1;
                out.nfe += n;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let rec = json!({"cell_id": c.id, "label": c.label, "cfg": c.cfg, "seed": c.seed, "caption": c.caption, "error": msg, "key": c.key, "git_commit": GIT_COMMIT});
                crate::io::write_json(&Store::failed_path(&store.root, &c.id), &rec)?;
                if !term {
                    eprintln!("cell {} failed: {msg}", c.id);
                }
                out.failed.push((c, msg));
            }
        }
        drop(lock);
        grid.inc(1);
    }
    cur.finish_and_clear();
    grid.finish_and_clear();
    Ok(out)
}

/// Runs one cell and writes it; returns its NFE count.
fn run_cell<B: AutodiffBackend + crate::diffrep::sine::SineBackend>(
    p: &Plan,
    store: &Store,
    c: &Cell,
    model: &dyn Denoiser<B::InnerBackend>,
    decoder: Option<&Decoder>,
    device: &B::Device,
) -> Result<usize> {
    let start = Instant::now();
    let guidance = Guidance::new(c.cfg, p.file.sampler.cfg_convention);
    let res = run_method::<B>(model, &c.method, &p.file.diffrep, std::slice::from_ref(&c.caption.text), guidance, &[c.run_seed], device)?;
    let tmp = store.begin(&c.id)?;
    let img = &res.images[0];
    let [ch, h, w] = res.shape;
    let mut files = vec!["image.png".to_string(), "output.safetensors".to_string()];
    // On SD1.5 the sample is a latent: image.png is its VAE decode (what Table 1 scores);
    // output.safetensors keeps the latent. Multiview cells decode their own figures below.
    let decoded = match (decoder, &res.multiview) {
        (Some(decode), None) => Some(decode(std::slice::from_ref(img), res.shape, usize::MAX)?),
        _ => None,
    };
    match &decoded {
        Some((d, shape)) => std::fs::write(tmp.join("image.png"), png_bytes(&d[0], *shape)?)?,
        None => std::fs::write(tmp.join("image.png"), png_bytes(img, res.shape)?)?,
    }
    crate::io::write_safetensors(&tmp.join("output.safetensors"), &[NamedTensor { name: "image".into(), shape: vec![1, ch, h, w], data: img.clone() }])?;
    if let Some(params) = &res.params {
        crate::io::write_safetensors(&tmp.join("params.safetensors"), params)?;
        files.push("params.safetensors".into());
    }
    let multiview = match &res.multiview {
        Some(mv) => Some(write_multiview(&tmp, img, res.shape, mv, decoder, &mut files)?),
        None => None,
    };
    let weights = match &p.model {
        ResolvedModel::Sd15 { hashes, .. } => json!(hashes),
        ResolvedModel::Analytic(_) => serde_json::Value::Null,
    };
    let rec = json!({
        "cell_id": c.id,
        "experiment": p.file.name,
        "label": c.label,
        "method": c.method.name(),
        "cfg": c.cfg,
        "seed": c.seed,
        "run_seed": c.run_seed,
        "caption": c.caption,
        "caption_index": c.caption_index,
        "key": c.key,
        "model": model.describe(),
        "weights_sha256": weights,
        "diffrep": res.diffrep,
        "shape": res.shape,
        "git_commit": GIT_COMMIT,
        "crate_version": CRATE_VERSION,
        "backend": std::any::type_name::<B>(),
        "nfe": res.nfe,
        "sampler_seconds": res.seconds,
        "wall_seconds": start.elapsed().as_secs_f64(),
        "files": files,
        "image_decoded_by_vae": decoded.is_some(),
        "diagnostics": res.diagnostics,
    });
    let mut rec = rec;
    if let Some(mv) = multiview {
        rec["multiview"] = mv;
    }
    // What `status --verify` checks the committed cell against.
    rec["files_sha256"] = json!(crate::experiment::store::file_hashes(&tmp, &files)?);
    let mut s = serde_json::to_string_pretty(&rec)?;
    s.push('\n');
    std::fs::write(tmp.join("cell.json"), s)?;
    store.commit(&c.id, &tmp)?;
    Ok(res.nfe)
}

/// Latent columns per VAE decode tile (wide panoramas decode in tiles).
const DECODE_TILE: usize = 128;

/// Pixels of the shorter side below which strips are magnified (analytic views are tiny).
const STRIP_MIN_SIDE: usize = 64;

/// The figures of a multiview cell: `image.png` (the canonical render: the whole panorama or
/// a NeRF's front view; replaces the raw one), `views.png` (the final renders of the chain's
/// views, one row), and for NeRFs `turntable.png` and `turntable.gif`. SD1.5 latents are
/// decoded through the VAE first. Returns the cell record's `multiview` entry.
fn write_multiview(
    dir: &Path,
    image: &[f32],
    image_shape: [usize; 3],
    mv: &crate::methods::MultiviewResult,
    decoder: Option<&Decoder>,
    files: &mut Vec<String>,
) -> Result<serde_json::Value> {
    let decode = |imgs: &[Vec<f32>], shape: [usize; 3]| -> Result<(Vec<Vec<f32>>, [usize; 3])> {
        match decoder {
            Some(d) => d(imgs, shape, DECODE_TILE),
            None => Ok((imgs.to_vec(), shape)),
        }
    };
    let zoom = |shape: [usize; 3]| (STRIP_MIN_SIDE / shape[1].min(shape[2]).max(1)).max(1);
    let (im, ish) = decode(&[image.to_vec()], image_shape)?;
    crate::io::write_grid_png(&dir.join("image.png"), &im, ish, 1, zoom(ish))?;
    let (views, vsh) = decode(&mv.views, mv.view_shape)?;
    crate::io::write_grid_png(&dir.join("views.png"), &views, vsh, mv.views_per_sample, zoom(vsh))?;
    files.push("views.png".into());
    let mut turntable_shape = None;
    if let Some(tt) = &mv.turntable {
        let (frames, tsh) = decode(tt, mv.view_shape)?;
        crate::io::write_grid_png(&dir.join("turntable.png"), &frames, tsh, mv.turntable_per_sample, zoom(tsh))?;
        std::fs::write(dir.join("turntable.gif"), crate::io::gif_bytes(&frames, tsh, zoom(tsh), 120)?)?;
        files.push("turntable.png".into());
        files.push("turntable.gif".into());
        turntable_shape = Some(tsh);
    }
    Ok(json!({
        "views_per_sample": mv.views_per_sample,
        "view_shape": mv.view_shape,
        "decoded_by_vae": decoder.is_some(),
        "image_shape": ish,
        "view_image_shape": vsh,
        "cameras": mv.cameras,
        "turntable_frames": mv.turntable.as_ref().map(|_| mv.turntable_per_sample),
        "turntable_image_shape": turntable_shape,
        "final_residual": mv.final_residual,
        "final_overlap": mv.final_overlap,
    }))
}