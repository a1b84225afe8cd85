//! What `ddrep report` builds from the cells alone (no `metrics.csv` needed): the multiview
//! consistency table (final overlap disagreement and final multiview residual per method x
//! CFG, from `cell.json`) and the diversity table (mean pairwise RMS distance between the
//! seeds' images per method x CFG x caption, from `image.png`), as CSV / Markdown / HTML.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::data::{cfg_text, csv_field, distinct_cfgs, CellInfo};
use super::table::{html_escape as esc, ordered_labels};
use crate::demo::mean_pairwise_rms;
use crate::experiment::store::Store;

/// Mean and standard error of the mean (sample std / sqrt n; None for n < 2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeStat {
    pub n: usize,
    pub mean: f64,
    pub se: Option<f64>,
}

impl SeStat {
    pub fn of(v: &[f64]) -> Option<SeStat> {
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let se = (n >= 2).then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() / (n as f64).sqrt());
        Some(SeStat { n, mean, se })
    }
    /// `0.0123 ± 0.0045` (four significant decimals: overlaps are small).
    pub fn text(&self) -> String {
        match self.se {
            Some(se) => format!("{:.4} ± {:.4}", self.mean, se),
            None => format!("{:.4}", self.mean),
        }
    }
    /// `(mean, half-width of the error bar)` for plots.
    pub fn bar(&self) -> (f64, f64) {
        (self.mean, self.se.unwrap_or(0.0))
    }
}

fn opt_text(s: Option<SeStat>) -> String {
    s.map(|s| s.text()).unwrap_or_else(|| "–".into())
}

/// One method x CFG row of the consistency table.
#[derive(Clone, Debug)]
pub struct ConsistencyRow {
    pub label: String,
    pub cfg: f64,
    /// Cells (seeds x captions) of the group.
    pub n: usize,
    pub overlap: Option<SeStat>,
    pub residual: Option<SeStat>,
}

pub const CONSISTENCY_HEADER: &str = "method,cfg,n,overlap_mean,overlap_se,overlap_n,residual_mean,residual_se,residual_n";

/// The consistency table of the multiview `cells` (labels ordered as `order`).
pub fn consistency_rows(cells: &[CellInfo], order: &[String]) -> Vec<ConsistencyRow> {
    let mv: Vec<&CellInfo> = cells.iter().filter(|c| c.multiview).collect();
    let mut out = Vec::new();
    for l in ordered_labels(mv.iter().map(|c| c.label.clone()), order) {
        for w in distinct_cfgs(mv.iter().filter(|c| c.label == l).map(|c| c.cfg)) {
            let g: Vec<&&CellInfo> = mv.iter().filter(|c| c.label == l && c.cfg == w).collect();
            let ov: Vec<f64> = g.iter().filter_map(|c| c.final_overlap).collect();
            let rs: Vec<f64> = g.iter().filter_map(|c| c.final_residual).collect();
            out.push(ConsistencyRow { label: l.clone(), cfg: w, n: g.len(), overlap: SeStat::of(&ov), residual: SeStat::of(&rs) });
        }
    }
    out
}

fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

pub fn consistency_csv(rows: &[ConsistencyRow]) -> String {
    let mut s = format!("{CONSISTENCY_HEADER}\n");
    for r in rows {
        let f = |x: Option<SeStat>| [num(x.map(|x| x.mean)), num(x.and_then(|x| x.se)), x.map(|x| x.n.to_string()).unwrap_or_else(|| "0".into())];
        let (o, q) = (f(r.overlap), f(r.residual));
        let _ = writeln!(s, "{},{},{},{},{},{},{},{},{}", csv_field(&r.label), cfg_text(r.cfg), r.n, o[0], o[1], o[2], q[0], q[1], q[2]);
    }
    s
}

const CONSISTENCY_NOTE: &str = "final overlap disagreement: RMS difference between overlapping views of the panorama after the last step; final residual: DDRep's RMS of render - target over all views after the last fit; mean ± standard error over seeds × captions; – : not recorded (NeRFs have no overlap; SJC no residual).";

pub fn consistency_markdown(rows: &[ConsistencyRow], title: &str) -> String {
    let mut s = format!("# {title}\n\n{CONSISTENCY_NOTE}\n\n| method | CFG | n | final overlap disagreement | final residual |\n| --- | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let _ = writeln!(s, "| {} | {} | {} | {} | {} |", r.label.replace('|', "\\|"), cfg_text(r.cfg), r.n, opt_text(r.overlap), opt_text(r.residual));
    }
    s
}

pub fn consistency_html(rows: &[ConsistencyRow]) -> String {
    let mut s = format!("<p>{}</p>\n<table class=\"metrics\">\n<tr><th>method</th><th>CFG</th><th>n</th><th>final overlap disagreement</th><th>final residual</th></tr>\n", esc(CONSISTENCY_NOTE));
    for r in rows {
        let _ = writeln!(s, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", esc(&r.label), esc(&cfg_text(r.cfg)), r.n, esc(&opt_text(r.overlap)), esc(&opt_text(r.residual)));
    }
    s.push_str("</table>\n");
    s
}

/// An image file as values in [-1, 1] (`2 x / 255 - 1` per RGB channel), with its size.
pub fn load_image_signed(path: &Path) -> Result<(Vec<f32>, (u32, u32))> {
    let img = image::open(path).with_context(|| format!("cannot read {}", path.display()))?.to_rgb8();
    let dims = img.dimensions();
    Ok((img.into_raw().into_iter().map(|v| v as f32 / 127.5 - 1.0).collect(), dims))
}

/// One row of the diversity table: a method x CFG x caption over its seeds
/// (`caption_index` None: the mean over captions).
#[derive(Clone, Debug)]
pub struct DiversityRow {
    pub label: String,
    pub cfg: f64,
    pub caption_index: Option<usize>,
    /// Seeds (per caption) or captions (for the mean).
    pub n: usize,
    pub value: f64,
}

pub const DIVERSITY_HEADER: &str = "method,cfg,caption_index,n,mean_pairwise_rms";

/// Diversity of the finished `cells` under `root`: per label x CFG x
/// caption with at least two seeds, the mean pairwise RMS distance between the seeds'
/// `image.png` (in [-1, 1], as `demo`'s diversity), then per label x CFG the mean over captions.
pub fn diversity_rows(root: &Path, cells: &[CellInfo], order: &[String]) -> Result<Vec<DiversityRow>> {
    let mut groups: BTreeMap<(usize, usize, usize), Vec<&CellInfo>> = BTreeMap::new();
    let labels = ordered_labels(cells.iter().map(|c| c.label.clone()), order);
    let cfgs = distinct_cfgs(cells.iter().map(|c| c.cfg));
    for c in cells.iter().filter(|c| Store::is_complete(root, &c.id)) {
        let (Some(l), Some(w)) = (labels.iter().position(|x| x == &c.label), cfgs.iter().position(|x| *x == c.cfg)) else { continue };
        groups.entry((l, w, c.caption_index)).or_default().push(c);
    }
    let mut per: Vec<DiversityRow> = Vec::new();
    for ((l, w, ci), mut g) in groups {
        if g.len() < 2 {
            continue;
        }
        g.sort_by_key(|c| c.seed);
        let mut imgs = Vec::new();
        let mut dims = None;
        for c in &g {
            let path = Store::cell_dir(root, &c.id).join("image.png");
            let (v, d) = load_image_signed(&path)?;
            if dims.is_some_and(|x| x != d) {
                anyhow::bail!("{}: {}x{} pixels, unlike the other seeds of {} at CFG {}", path.display(), d.0, d.1, labels[l], cfg_text(cfgs[w]));
            }
            dims = Some(d);
            imgs.push(v);
        }
        let value = mean_pairwise_rms(&imgs.iter().collect::<Vec<_>>());
        per.push(DiversityRow { label: labels[l].clone(), cfg: cfgs[w], caption_index: Some(ci), n: g.len(), value });
    }
    let mut out = Vec::new();
    for l in &labels {
        for &w in &cfgs {
            let g: Vec<&DiversityRow> = per.iter().filter(|r| &r.label == l && r.cfg == w).collect();
            if g.is_empty() {
                continue;
            }
            out.push(DiversityRow { label: l.clone(), cfg: w, caption_index: None, n: g.len(), value: g.iter().map(|r| r.value).sum::<f64>() / g.len() as f64 });
            out.extend(g.into_iter().cloned());
        }
    }
    Ok(out)
}

fn caption_text(r: &DiversityRow) -> String {
    r.caption_index.map(|c| c.to_string()).unwrap_or_else(|| "mean".into())
}

pub fn diversity_csv(rows: &[DiversityRow]) -> String {
    let mut s = format!("{DIVERSITY_HEADER}\n");
    for r in rows {
        let _ = writeln!(s, "{},{},{},{},{}", csv_field(&r.label), cfg_text(r.cfg), caption_text(r), r.n, r.value);
    }
    s
}

const DIVERSITY_NOTE: &str = "mean pairwise RMS distance between the seeds' image.png (pixels mapped to [-1, 1]) per method × CFG × caption; the `mean` rows average over captions (n: captions), the others over seed pairs (n: seeds). Higher: more diverse samples.";

pub fn diversity_markdown(rows: &[DiversityRow], title: &str) -> String {
    let mut s = format!("# {title}\n\n{DIVERSITY_NOTE}\n\n| method | CFG | caption | n | mean pairwise RMS |\n| --- | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let _ = writeln!(s, "| {} | {} | {} | {} | {:.4} |", r.label.replace('|', "\\|"), cfg_text(r.cfg), caption_text(r), r.n, r.value);
    }
    s
}

pub fn diversity_html(rows: &[DiversityRow]) -> String {
    let mut s = format!("<p>{}</p>\n<table class=\"metrics\">\n<tr><th>method</th><th>CFG</th><th>caption</th><th>n</th><th>mean pairwise RMS</th></tr>\n", esc(DIVERSITY_NOTE));
    for r in rows {
        let _ = writeln!(s, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td></tr>", esc(&r.label), esc(&cfg_text(r.cfg)), esc(&caption_text(r)), r.n, r.value);
    }
    s.push_str("</table>\n");
    s
}
