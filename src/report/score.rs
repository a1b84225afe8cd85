//! `ddrep score FILE`: PSNR and SSIM of every finished cell against the reference cell with
//! the same CFG, caption and seed (Table 1's comparison), per cell and as Table 1's layout.
//! LPIPS/KID scoring and the full `report` (plots, gallery) are still to come.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::experiment::{plan, store::Store};
use crate::io::write_atomic;
use crate::metrics::{self, mean_std, ImageBatch, SsimConfig};

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Experiment YAML file (its results folder is scored).
    pub file: PathBuf,
    /// The same overrides the grid was run with.
    pub overrides: Vec<String>,
    /// Label of the method the others are compared with.
    #[arg(long, default_value = "reference")]
    pub reference: String,
}

/// `[3, H, W]` in [0, 1] from a cell's `image.png`.
fn load_png(path: &Path) -> Result<(Vec<f32>, [usize; 3])> {
    let img = image::open(path).with_context(|| format!("cannot read {}", path.display()))?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0.0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * h * w + i] = px[c] as f32 / 255.0;
        }
    }
    Ok((out, [3, h, w]))
}

/// One scored cell.
#[derive(Clone, Debug)]
pub struct Scored {
    pub label: String,
    pub cfg: f64,
    pub caption_index: usize,
    pub seed: u64,
    pub psnr: f64,
    pub ssim: f64,
}

/// Scores every complete non-reference cell against its reference cell; cells whose pair
/// is not finished are counted and skipped.
pub fn score_plan(file: &Path, overrides: &[String], reference: &str) -> Result<(Vec<Scored>, usize, PathBuf)> {
    let p = plan(file, overrides)?;
    if !p.cells.iter().any(|c| c.label == reference) {
        bail!("{}: no method labelled '{reference}' to compare with", file.display());
    }
    let key = |cfg: f64, cap: usize, seed: u64| (cfg.to_bits(), cap, seed);
    let refs: HashMap<_, _> = p.cells.iter().filter(|c| c.label == reference).map(|c| (key(c.cfg, c.caption_index, c.seed), c.id.clone())).collect();
    let (mut rows, mut missing) = (Vec::new(), 0);
    for c in p.cells.iter().filter(|c| c.label != reference) {
        let Some(rid) = refs.get(&key(c.cfg, c.caption_index, c.seed)) else {
            missing += 1;
            continue;
        };
        if !Store::is_complete(&p.root, &c.id) || !Store::is_complete(&p.root, rid) {
            missing += 1;
            continue;
        }
        let (a, sa) = load_png(&Store::cell_dir(&p.root, &c.id).join("image.png"))?;
        let (b, sb) = load_png(&Store::cell_dir(&p.root, rid).join("image.png"))?;
        if sa != sb {
            bail!("cell {} is {sa:?} but its reference {rid} is {sb:?}", c.id);
        }
        let (ia, ib) = (ImageBatch::single(&c.id, &a, sa)?, ImageBatch::single(rid, &b, sb)?);
        rows.push(Scored {
            label: c.label.clone(),
            cfg: c.cfg,
            caption_index: c.caption_index,
            seed: c.seed,
            psnr: metrics::psnr(&ia, &ib, 1.0)?,
            ssim: metrics::ssim(&ia, &ib, &SsimConfig::default())?,
        });
    }
    Ok((rows, missing, p.root))
}

/// Table 1's layout: one block per method, rows PSNR / SSIM, columns CFG, `mean ± std`
/// (population std over cells).
pub fn table(rows: &[Scored]) -> String {
    let mut cfgs: Vec<f64> = rows.iter().map(|r| r.cfg).collect();
    cfgs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    cfgs.dedup();
    let mut groups: BTreeMap<&str, BTreeMap<u64, (Vec<f64>, Vec<f64>)>> = BTreeMap::new();
    for r in rows {
        let g = groups.entry(&r.label).or_default().entry(r.cfg.to_bits()).or_default();
        g.0.push(r.psnr);
        g.1.push(r.ssim);
    }
    let mut s = String::new();
    for (label, g) in &groups {
        let _ = writeln!(s, "\n{label} vs reference\n\n| metric | {} |\n|---|{}", cfgs.iter().map(|c| format!("CFG {c}")).collect::<Vec<_>>().join(" | "), "---|".repeat(cfgs.len()));
        for (name, pick) in [("PSNR", 0usize), ("SSIM", 1)] {
            let cells: Vec<String> = cfgs
                .iter()
                .map(|c| match g.get(&c.to_bits()) {
                    Some(v) => {
                        let (m, sd) = mean_std(if pick == 0 { &v.0 } else { &v.1 });
                        if pick == 0 { format!("{m:.3} ± {sd:.3}") } else { format!("{m:.4} ± {sd:.4}") }
                    }
                    None => "-".into(),
                })
                .collect();
            let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
        }
    }
    s
}

pub fn score(a: &ScoreArgs) -> Result<()> {
    let (rows, missing, root) = score_plan(&a.file, &a.overrides, &a.reference)?;
    if rows.is_empty() {
        bail!("no finished cell pairs to score in {} ({missing} not finished): run the grid first", root.display());
    }
    let mut csv = String::from("label,cfg,caption_index,seed,psnr,ssim\n");
    for r in &rows {
        writeln!(csv, "{},{},{},{},{:.6},{:.6}", r.label, r.cfg, r.caption_index, r.seed, r.psnr, r.ssim)?;
    }
    let t = table(&rows);
    write_atomic(&root.join("metrics.csv"), csv.as_bytes())?;
    write_atomic(&root.join("table1.md"), t.as_bytes())?;
    println!("{t}\n{} cells scored, {missing} without a finished pair; wrote {}/{{metrics.csv, table1.md}}", rows.len(), root.display());
    Ok(())
}
