//! `ddrep score FILE`: the metrics of the experiment's `metrics:` list over a finished grid.
//!
//! * PSNR / SSIM / LPIPS of every finished cell against the reference cell with the same CFG,
//!   caption and seed (Table 1's comparison) -> `metrics.csv`, `metrics.parquet`.
//! * KID of each (method, CFG) set of images against the baseline method's set at that CFG
//!   (the paper's "second SD seed" set) -> `kid.csv`, `kid.parquet`.
//! * Table 1's layout (`table1.md`) and a record of the run (`score.json`).
//!
//! Inception pool features are cached per cell in `features/<cell>.<weights sha256[..12]>.safetensors`
//! under the experiment's results folder (cells themselves are immutable), so a second run only
//! computes the features of new cells. A metric whose weight files are not given is reported as
//! unavailable (notice + `score.json`) and the others still run; a named file that is missing
//! or unreadable stops the run before anything is written.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use super::metric_args::{load_rgb_bytes, KidArgs, Loaded, Unavailable, WeightArgs};
use crate::backend::Cpu;
use crate::experiment::schema::Metric;
use crate::experiment::{plan, store::Store, Cell};
use crate::io::{write_atomic, write_json, CRATE_VERSION, GIT_COMMIT};
use crate::metrics::{self, mean_std, FeatureMatrix, ImageBatch, InceptionV3, Lpips, ResizeMode, SsimConfig};

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Experiment YAML file (its results folder is scored).
    pub file: PathBuf,
    /// The same overrides the grid was run with.
    pub overrides: Vec<String>,
    /// Label of the method the others are compared with (PSNR/SSIM/LPIPS pairs).
    #[arg(long, default_value = "reference")]
    pub reference: String,
    /// Label of the second-seed set every other method's images are compared with by KID.
    #[arg(long, default_value = "baseline")]
    pub baseline: String,
    #[command(flatten)]
    pub weights: WeightArgs,
    #[command(flatten)]
    pub kid: KidArgs,
}

/// Inception pool feature width.
const POOL_DIM: usize = 2048;
/// Images per Inception batch.
const BATCH: usize = 16;

/// One scored cell; a metric not requested or unavailable is `None`.
#[derive(Clone, Debug)]
pub struct Scored {
    pub label: String,
    pub cfg: f64,
    pub caption_index: usize,
    pub seed: u64,
    pub cell: String,
    pub reference_cell: String,
    pub psnr: Option<f64>,
    pub ssim: Option<f64>,
    pub lpips: Option<f64>,
}

/// KID of one (label, CFG) set against the baseline set at that CFG.
#[derive(Clone, Debug)]
pub struct KidRow {
    pub label: String,
    pub cfg: f64,
    pub n: usize,
    pub n_baseline: usize,
    pub subset_size: usize,
    pub subsets: usize,
    pub kid_mean: f64,
    pub kid_std: f64,
}

fn metric_name(m: &Metric) -> &'static str {
    match m {
        Metric::Psnr => "psnr",
        Metric::Ssim => "ssim",
        Metric::Lpips => "lpips",
        Metric::Kid => "kid",
    }
}

/// Notices are printed as they happen and recorded in `score.json`.
#[derive(Default)]
struct Notices(Vec<String>);

impl Notices {
    fn push(&mut self, s: String) {
        eprintln!("note: {s}");
        self.0.push(s);
    }
}

/// The loaded weights; `None` with the metric noted and recorded as unavailable when no file
/// was given. A file that was named (flag or environment) but cannot be used is an error, as in
/// `compare`: a table silently missing the metric the user asked for is worse than a stop.
fn usable<T>(r: Result<T, Unavailable>, notices: &mut Notices, unavailable: &mut Vec<Unavailable>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(u) if u.configured => bail!("{u}"),
        Err(u) => {
            notices.push(u.to_string());
            unavailable.push(u);
            Ok(None)
        }
    }
}

/// Reads cell images (not kept: a full SD grid's images do not fit in memory).
struct Images {
    root: PathBuf,
}

impl Images {
    /// The cell's image, refused when it no longer matches the sha256 its record holds: a
    /// metric of a changed image would not trace back to the cell's settings.
    fn get(&self, id: &str) -> Result<Loaded> {
        let p = Store::cell_dir(&self.root, id).join("image.png");
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read image {}", p.display()))?;
        if let Some(want) = Store::recorded_sha256(&self.root, id, "image.png") {
            if crate::experiment::store::sha256_hex(&bytes) != want {
                bail!("{} differs from the sha256 its cell.json records (changed after the cell was written): `ddrep run FILE --verify` computes the cell again", p.display());
            }
        }
        load_rgb_bytes(&bytes, &p)
    }
}

/// Per-cell Inception pool features, cached on disk.
struct FeatureCache {
    dir: PathBuf,
    sha256: String,
    computed: usize,
    cached: usize,
    invalid: usize,
}

impl FeatureCache {
    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{}.safetensors", &self.sha256[..12]))
    }

    /// The cached features of a cell; `Err(why)` for an unusable file, `Ok(None)` if absent.
    fn read(&self, id: &str) -> Result<Option<Vec<f32>>, String> {
        let p = self.path(id);
        if !p.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&p).map_err(|e| format!("cannot read: {e}"))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format!("bad header: {e}"))?;
        let sha = meta.metadata().as_ref().and_then(|m| m.get("weights_sha256").cloned()).unwrap_or_default();
        if sha != self.sha256 {
            return Err(format!("made with Inception weights {sha:?}, not {}", self.sha256));
        }
        let t = st.tensor("pool").map_err(|e| format!("no 'pool' tensor: {e}"))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape() != [POOL_DIM] {
            return Err(format!("'pool' is {:?} {:?}, expected F32 [{POOL_DIM}]", t.dtype(), t.shape()));
        }
        let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err("non-finite feature values".into());
        }
        Ok(Some(v))
    }

    fn write(&self, id: &str, feats: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = feats.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![feats.len()], &bytes)?;
        let meta = HashMap::from([
            ("weights_sha256".to_string(), self.sha256.clone()),
            ("resize".to_string(), "torchmetrics".to_string()),
            ("cell".to_string(), id.to_string()),
        ]);
        let out = safetensors::serialize([("pool", view)], Some(meta))?;
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        write_atomic(&self.path(id), &out)
    }

    /// Features of every cell in `ids` (cached or computed), by cell id.
    fn features(
        &mut self,
        ids: &[&str],
        net: &InceptionV3<Cpu>,
        images: &Images,
        notices: &mut Notices,
    ) -> Result<HashMap<String, Vec<f32>>> {
        let mut out = HashMap::new();
        let device = Default::default();
        // Uncached cells are computed in batches of one image size, streamed.
        let mut pending: Vec<(String, Loaded)> = Vec::new();
        let flush = |pending: &mut Vec<(String, Loaded)>, out: &mut HashMap<String, Vec<f32>>, this: &mut Self| -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let shape = pending[0].1.shape;
            let bytes: Vec<u8> = pending.iter().flat_map(|(_, i)| i.bytes.iter().copied()).collect();
            let f = net
                .pool_features(&bytes, [pending.len(), 3, shape[1], shape[2]], ResizeMode::Torchmetrics, BATCH, &device)
                .with_context(|| format!("Inception features of cell {}", pending[0].0))?;
            for (k, (id, _)) in pending.iter().enumerate() {
                let v = f.row(k).to_vec();
                this.write(id, &v)?;
                this.computed += 1;
                out.insert(id.clone(), v);
            }
            pending.clear();
            Ok(())
        };
        for &id in ids {
            if out.contains_key(id) || pending.iter().any(|(t, _)| t == id) {
                continue;
            }
            match self.read(id) {
                Ok(Some(v)) => {
                    self.cached += 1;
                    out.insert(id.to_string(), v);
                    continue;
                }
                Ok(None) => {}
                Err(why) => {
                    self.invalid += 1;
                    notices.push(format!("feature cache {}: {why}; recomputing it", self.path(id).display()));
                }
            }
            let img = images.get(id)?;
            if pending.first().is_some_and(|(_, p)| p.shape != img.shape) || pending.len() == BATCH {
                flush(&mut pending, &mut out, self)?;
            }
            pending.push((id.to_string(), img));
        }
        flush(&mut pending, &mut out, self)?;
        Ok(out)
    }
}

/// Everything one `score` run found.
pub struct ScoreOutput {
    pub root: PathBuf,
    pub rows: Vec<Scored>,
    pub kid: Vec<KidRow>,
    pub missing: usize,
    pub summary: Value,
}

fn cfg_key(c: f64) -> u64 {
    c.to_bits()
}

/// Scores the grid of `a.file` (nothing is written).
pub fn score_plan(a: &ScoreArgs) -> Result<ScoreOutput> {
    let p = plan(&a.file, &a.overrides)?;
    let mut requested: Vec<&'static str> = Vec::new();
    for m in p.file.metrics.iter().map(metric_name) {
        if !requested.contains(&m) {
            requested.push(m);
        }
    }
    if requested.is_empty() {
        requested = vec!["psnr", "ssim"];
    }
    let want = |m: &str| requested.contains(&m);
    if !p.cells.iter().any(|c| c.label == a.reference) {
        bail!("{}: no method labelled '{}' to compare with", a.file.display(), a.reference);
    }
    if want("kid") && !p.cells.iter().any(|c| c.label == a.baseline) {
        bail!("{}: no method labelled '{}' for KID's second-seed set (--baseline LABEL, or drop kid from metrics)", a.file.display(), a.baseline);
    }
    let done = |c: &Cell| Store::is_complete(&p.root, &c.id);
    let mut notices = Notices::default();
    let mut unavailable: Vec<Unavailable> = Vec::new();
    let device = Default::default();

    let lpips: Option<Lpips<Cpu>> = if want("lpips") { usable(a.weights.lpips(&device), &mut notices, &mut unavailable)? } else { None };
    let inception = match if want("kid") { usable(a.weights.inception::<Cpu>(&device), &mut notices, &mut unavailable)? } else { None } {
        Some((net, path)) => Some((net, path.clone(), crate::models::sd15::sha256_cached(&path)?)),
        None => None,
    };

    // Per-cell metrics against the reference cell.
    let key = |c: &Cell| (cfg_key(c.cfg), c.caption_index, c.seed);
    let refs: HashMap<_, &Cell> = p.cells.iter().filter(|c| c.label == a.reference).map(|c| (key(c), c)).collect();
    let images = Images { root: p.root.clone() };
    let (mut rows, mut missing) = (Vec::new(), 0);
    for c in p.cells.iter().filter(|c| c.label != a.reference) {
        let Some(r) = refs.get(&key(c)) else {
            missing += 1;
            continue;
        };
        if !done(c) || !done(r) {
            missing += 1;
            continue;
        }
        let (x, y) = (images.get(&c.id)?, images.get(&r.id)?);
        if x.shape != y.shape {
            bail!("cell {} ({}) is {:?} but its reference cell {} is {:?}: paired images must have the same size", c.id, c.label, x.shape, r.id, y.shape);
        }
        let (ix, iy) = (ImageBatch::single(&c.id, &x.unit, x.shape)?, ImageBatch::single(&r.id, &y.unit, y.shape)?);
        let psnr = if want("psnr") { Some(metrics::psnr(&ix, &iy, 1.0)?) } else { None };
        let ssim = if want("ssim") { Some(metrics::ssim(&ix, &iy, &SsimConfig::default())?) } else { None };
        let lp = match &lpips {
            Some(l) => Some(l.distance(&ix, &iy, true, &device).with_context(|| format!("LPIPS of cell {}", c.id))?.distance[0] as f64),
            None => None,
        };
        rows.push(Scored {
            label: c.label.clone(),
            cfg: c.cfg,
            caption_index: c.caption_index,
            seed: c.seed,
            cell: c.id.clone(),
            reference_cell: r.id.clone(),
            psnr,
            ssim,
            lpips: lp,
        });
    }
    if rows.is_empty() {
        bail!("no finished cell pairs to score in {} ({missing} not finished): run the grid first", p.root.display());
    }

    // KID of each (label, CFG) set against the baseline set at the same CFG.
    let mut kid_rows = Vec::new();
    let mut skipped = Vec::new();
    let mut clamped = false;
    let mut cache = None;
    if let Some((net, path, sha)) = &inception {
        let mut labels: Vec<&str> = Vec::new();
        let mut cfgs: Vec<f64> = Vec::new();
        for c in &p.cells {
            if c.label != a.baseline && !labels.contains(&c.label.as_str()) {
                labels.push(&c.label);
            }
            if !cfgs.iter().any(|&x| cfg_key(x) == cfg_key(c.cfg)) {
                cfgs.push(c.cfg);
            }
        }
        cfgs.sort_by(|x, y| x.total_cmp(y));
        let set = |label: &str, cfg: f64| -> Vec<&str> {
            p.cells.iter().filter(|c| c.label == label && cfg_key(c.cfg) == cfg_key(cfg) && done(c)).map(|c| c.id.as_str()).collect()
        };
        if !p.cells.iter().any(|c| c.label == a.baseline && done(c)) {
            bail!("no finished '{}' cells in {} to compute KID against: run the grid first (or drop kid from metrics)", a.baseline, p.root.display());
        }
        let mut fc = FeatureCache { dir: p.root.join("features"), sha256: sha.clone(), computed: 0, cached: 0, invalid: 0 };
        let mut groups = Vec::new();
        for &cfg in &cfgs {
            let base = set(&a.baseline, cfg);
            for &label in &labels {
                let ids = set(label, cfg);
                let why = if ids.len() < 2 || base.len() < 2 {
                    Some(format!("{} finished '{label}' and {} finished '{}' cells (KID needs at least 2 of each)", ids.len(), base.len(), a.baseline))
                } else {
                    None
                };
                match why {
                    Some(w) => {
                        notices.push(format!("KID of {label} at CFG {cfg} skipped: {w}"));
                        skipped.push(json!({"label": label, "cfg": cfg, "reason": w}));
                    }
                    None => groups.push((label, cfg, ids, base.clone())),
                }
            }
        }
        let all: Vec<&str> = groups.iter().flat_map(|(_, _, i, b)| i.iter().chain(b.iter()).copied()).collect();
        let feats = fc.features(&all, net, &images, &mut notices)?;
        let matrix = |ids: &[&str], what: &str| -> Result<FeatureMatrix> {
            let data: Vec<f32> = ids.iter().flat_map(|id| feats[*id].iter().copied()).collect();
            Ok(FeatureMatrix::new(what, data, POOL_DIM)?)
        };
        for (label, cfg, ids, base) in groups {
            let fake = matrix(&ids, &format!("{label} CFG {cfg} features"))?;
            let real = matrix(&base, &format!("{} CFG {cfg} features", a.baseline))?;
            let (kc, c) = a.kid.config(real.rows(), fake.rows());
            clamped |= c;
            let r = metrics::kid(&real, &fake, &kc).with_context(|| format!("KID of {label} at CFG {cfg} ({})", path.display()))?;
            kid_rows.push(KidRow {
                label: label.to_string(),
                cfg,
                n: ids.len(),
                n_baseline: base.len(),
                subset_size: kc.subset_size,
                subsets: kc.subsets,
                kid_mean: r.mean,
                kid_std: r.std,
            });
        }
        if clamped {
            notices.push(format!(
                "KID subset size {} is more than the images available: each set uses min({}, n, n_baseline), see kid.csv's subset_size",
                a.kid.kid_subset_size, a.kid.kid_subset_size
            ));
        }
        cache = Some(fc);
    }

    let computed: Vec<&str> = requested.iter().copied().filter(|m| !unavailable.iter().any(|u| u.metric == *m)).collect();
    let (fcomp, fcached, finvalid) = cache.as_ref().map(|c| (c.computed, c.cached, c.invalid)).unwrap_or((0, 0, 0));
    let summary = json!({
        "experiment": p.file.name,
        "file": a.file.display().to_string(),
        "overrides": a.overrides,
        "reference": a.reference,
        "baseline": a.baseline,
        "metrics_requested": requested,
        "metrics_computed": computed,
        "unavailable": unavailable.iter().map(|u| json!({"metric": u.metric, "reason": u.reason, "supply": u.supply})).collect::<Vec<_>>(),
        "cells_scored": rows.len(),
        "cells_without_finished_pair": missing,
        "kid": if want("kid") { json!({
            "subsets": a.kid.kid_subsets,
            "subset_size": a.kid.kid_subset_size,
            "subset_size_clamped": clamped,
            "subset_size_rule": "min(subset_size, n, n_baseline) per set",
            "seed": a.kid.kid_seed,
            "real": a.baseline,
            "resize": "torchmetrics",
            "inception": inception.as_ref().map(|i| i.1.display().to_string()),
            "inception_sha256": inception.as_ref().map(|i| i.2.clone()),
            "groups": kid_rows.len(),
            "skipped": skipped,
        }) } else { Value::Null },
        "features_computed": fcomp,
        "features_cached": fcached,
        "features_invalid_cache": finvalid,
        "notices": notices.0,
        "ddrep_version": CRATE_VERSION,
        "git_commit": GIT_COMMIT,
    });
    Ok(ScoreOutput { root: p.root, rows, kid: kid_rows, missing, summary })
}

/// `mean ± std` of the finite values, saying how many others (PSNR of identical images is
/// inf) were left out, as the report's tables do.
pub(crate) fn mean_pm(v: &[f64], digits: usize) -> String {
    let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let text = if finite.is_empty() {
        "n/a".to_string()
    } else {
        let (m, sd) = mean_std(&finite);
        format!("{m:.digits$} ± {sd:.digits$}")
    };
    match v.len() - finite.len() {
        0 => text,
        k => format!("{text} ({k} inf or nan left out)"),
    }
}

/// Table 1's layout: one block per method, rows PSNR / SSIM / LPIPS (those computed), columns
/// CFG, `mean ± std` (population std over cells); then KID of each method vs the baseline.
pub fn table(rows: &[Scored], kid: &[KidRow], baseline: &str) -> String {
    let mut cfgs: Vec<f64> = rows.iter().map(|r| r.cfg).chain(kid.iter().map(|k| k.cfg)).collect();
    cfgs.sort_by(|a, b| a.total_cmp(b));
    cfgs.dedup();
    let header = |first: &str| {
        format!("| {first} | {} |\n|---|{}\n", cfgs.iter().map(|c| format!("CFG {c}")).collect::<Vec<_>>().join(" | "), "---|".repeat(cfgs.len()))
    };
    type Pick = fn(&Scored) -> Option<f64>;
    let per_cell: [(&str, Pick, usize); 3] = [("PSNR", |r| r.psnr, 3), ("SSIM", |r| r.ssim, 4), ("LPIPS", |r| r.lpips, 4)];
    let mut labels: Vec<&str> = Vec::new();
    for r in rows {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    labels.sort();
    let mut s = String::new();
    for label in labels {
        let _ = write!(s, "\n{label} vs reference\n\n{}", header("metric"));
        for (name, pick, digits) in per_cell {
            if !rows.iter().any(|r| pick(r).is_some()) {
                continue;
            }
            let cells: Vec<String> = cfgs
                .iter()
                .map(|&c| {
                    let v: Vec<f64> = rows.iter().filter(|r| r.label == label && cfg_key(r.cfg) == cfg_key(c)).filter_map(pick).collect();
                    if v.is_empty() { "-".into() } else { mean_pm(&v, digits) }
                })
                .collect();
            let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
        }
    }
    if !kid.is_empty() {
        let _ = write!(s, "\nKID vs {baseline} (mean ± std over subsets)\n\n{}", header("method"));
        let mut klabels: Vec<&str> = Vec::new();
        for k in kid {
            if !klabels.contains(&k.label.as_str()) {
                klabels.push(&k.label);
            }
        }
        for label in klabels {
            let cells: Vec<String> = cfgs
                .iter()
                .map(|&c| match kid.iter().find(|k| k.label == label && cfg_key(k.cfg) == cfg_key(c)) {
                    Some(k) => format!("{:.5} ± {:.5}", k.kid_mean, k.kid_std),
                    None => "-".into(),
                })
                .collect();
            let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
        }
    }
    s
}

/// A CSV field, quoted when it needs to be.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

pub const METRICS_HEADER: &str = "label,cfg,caption_index,seed,cell,reference_cell,psnr,ssim,lpips";
pub const KID_HEADER: &str = "label,cfg,n,n_baseline,subset_size,subsets,kid_mean,kid_std";

pub fn metrics_csv(rows: &[Scored]) -> String {
    let mut csv = format!("{METRICS_HEADER}\n");
    for r in rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{}",
            field(&r.label),
            r.cfg,
            r.caption_index,
            r.seed,
            r.cell,
            r.reference_cell,
            opt(r.psnr),
            opt(r.ssim),
            opt(r.lpips)
        );
    }
    csv
}

pub fn kid_csv(rows: &[KidRow]) -> String {
    let mut csv = format!("{KID_HEADER}\n");
    for k in rows {
        let _ = writeln!(csv, "{},{},{},{},{},{},{:.6},{:.6}", field(&k.label), k.cfg, k.n, k.n_baseline, k.subset_size, k.subsets, k.kid_mean, k.kid_std);
    }
    csv
}

fn metrics_frame(rows: &[Scored]) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let col_f = |n: &str, f: fn(&Scored) -> Option<f64>| Column::new(n.into(), rows.iter().map(f).collect::<Vec<Option<f64>>>());
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("label".into(), rows.iter().map(|r| r.label.as_str()).collect::<Vec<_>>()),
            Column::new("cfg".into(), rows.iter().map(|r| r.cfg).collect::<Vec<_>>()),
            Column::new("caption_index".into(), rows.iter().map(|r| r.caption_index as u64).collect::<Vec<_>>()),
            Column::new("seed".into(), rows.iter().map(|r| r.seed).collect::<Vec<_>>()),
            Column::new("cell".into(), rows.iter().map(|r| r.cell.as_str()).collect::<Vec<_>>()),
            Column::new("reference_cell".into(), rows.iter().map(|r| r.reference_cell.as_str()).collect::<Vec<_>>()),
            col_f("psnr", |r| r.psnr),
            col_f("ssim", |r| r.ssim),
            col_f("lpips", |r| r.lpips),
        ],
    )
}

fn kid_frame(rows: &[KidRow]) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let col_u = |n: &str, f: fn(&KidRow) -> usize| Column::new(n.into(), rows.iter().map(|k| f(k) as u64).collect::<Vec<_>>());
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("label".into(), rows.iter().map(|k| k.label.as_str()).collect::<Vec<_>>()),
            Column::new("cfg".into(), rows.iter().map(|k| k.cfg).collect::<Vec<_>>()),
            col_u("n", |k| k.n),
            col_u("n_baseline", |k| k.n_baseline),
            col_u("subset_size", |k| k.subset_size),
            col_u("subsets", |k| k.subsets),
            Column::new("kid_mean".into(), rows.iter().map(|k| k.kid_mean).collect::<Vec<_>>()),
            Column::new("kid_std".into(), rows.iter().map(|k| k.kid_std).collect::<Vec<_>>()),
        ],
    )
}

/// Writes a data frame as Parquet atomically: encoded in memory (score tables are small),
/// then [`write_atomic`]'s temporary sibling and rename, whose leftovers the sweeps know.
fn write_parquet(path: &Path, df: polars::prelude::PolarsResult<polars::prelude::DataFrame>) -> Result<()> {
    use polars::prelude::ParquetWriter;
    let mut df = df.with_context(|| format!("cannot build the table for {}", path.display()))?;
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes).finish(&mut df).with_context(|| format!("cannot encode {}", path.display()))?;
    write_atomic(path, &bytes)
}

pub fn score(a: &ScoreArgs) -> Result<()> {
    let out = score_plan(a)?;
    let root = &out.root;
    // Temporaries of a score killed between writing and renaming its outputs.
    crate::io::sweep_stale_temps(root);
    let t = table(&out.rows, &out.kid, &a.baseline);
    write_atomic(&root.join("metrics.csv"), metrics_csv(&out.rows).as_bytes())?;
    write_parquet(&root.join("metrics.parquet"), metrics_frame(&out.rows))?;
    write_atomic(&root.join("kid.csv"), kid_csv(&out.kid).as_bytes())?;
    write_parquet(&root.join("kid.parquet"), kid_frame(&out.kid))?;
    write_atomic(&root.join("table1.md"), t.as_bytes())?;
    write_json(&root.join("score.json"), &out.summary)?;
    let s = &out.summary;
    println!(
        "{t}\n{} cells scored, {} without a finished pair; {} KID set(s); Inception features: {} computed, {} cached",
        out.rows.len(),
        out.missing,
        out.kid.len(),
        s["features_computed"],
        s["features_cached"]
    );
    for u in s["unavailable"].as_array().into_iter().flatten() {
        println!("{} unavailable: {}", u["metric"].as_str().unwrap_or("?"), u["reason"].as_str().unwrap_or("?"));
    }
    println!("wrote {}/{{metrics.csv, metrics.parquet, kid.csv, kid.parquet, table1.md, score.json}}", root.display());
    Ok(())
}
