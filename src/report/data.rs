//! What `ddrep report` reads: `metrics.csv` and `kid.csv` written by `ddrep score`, and the
//! `cell.json` records of the cells they name. Columns are found by header name; every problem
//! is a one-line error naming the file and line.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// Splits one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote inside quotes).
pub fn split_csv_line(line: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == '"' && at_start {
            quoted = true;
            at_start = false;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
            at_start = true;
        } else {
            cur.push(c);
            at_start = false;
        }
    }
    if quoted {
        bail!("unclosed quote");
    }
    out.push(cur);
    Ok(out)
}

/// Quotes a CSV field when it needs it.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A CSV file read into rows of named columns.
struct Csv {
    name: String,
    header: Vec<String>,
    /// (1-based line number, fields)
    rows: Vec<(usize, Vec<String>)>,
}

impl Csv {
    fn parse(path: &Path, text: &str, required: &[&str], expected: &str) -> Result<Self> {
        let name = path.display().to_string();
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
        let Some((_, head)) = lines.next() else {
            bail!("{name} is empty (expected the header `{expected}`): rerun ddrep score");
        };
        let header: Vec<String> = split_csv_line(head.trim_start_matches('\u{feff}'))
            .map_err(|e| anyhow!("{name}: header: {e}"))?
            .into_iter()
            .map(|h| h.trim().to_string())
            .collect();
        for r in required {
            if !header.iter().any(|h| h == r) {
                bail!("{name}: the header has no column '{r}' (expected `{expected}`, found `{}`): rerun ddrep score", header.join(","));
            }
        }
        let mut rows = Vec::new();
        for (i, l) in lines {
            let f = split_csv_line(l).map_err(|e| anyhow!("{name} line {}: {e}", i + 1))?;
            if f.len() != header.len() {
                bail!("{name} line {}: {} fields but the header has {}", i + 1, f.len(), header.len());
            }
            rows.push((i + 1, f));
        }
        Ok(Self { name, header, rows })
    }

    fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    fn str_at(&self, row: &(usize, Vec<String>), col: &str) -> Result<String> {
        let i = self.col(col).ok_or_else(|| anyhow!("{}: no column '{col}'", self.name))?;
        Ok(row.1[i].trim().to_string())
    }

    fn num<T: std::str::FromStr>(&self, row: &(usize, Vec<String>), col: &str) -> Result<T> {
        let s = self.str_at(row, col)?;
        s.parse().map_err(|_| anyhow!("{} line {}: column '{col}' is '{s}', not a number", self.name, row.0))
    }

    /// An optional metric: absent column or empty field = not available; `inf` / `nan` are
    /// counted in `nonfinite` and left out.
    fn opt(&self, row: &(usize, Vec<String>), col: &str, nonfinite: &mut usize) -> Result<Option<f64>> {
        let Some(i) = self.col(col) else { return Ok(None) };
        let s = row.1[i].trim();
        if s.is_empty() {
            return Ok(None);
        }
        let v: f64 = s.parse().map_err(|_| anyhow!("{} line {}: column '{col}' is '{s}', not a number", self.name, row.0))?;
        if !v.is_finite() {
            *nonfinite += 1;
        }
        Ok(v.is_finite().then_some(v))
    }
}

pub const METRICS_HEADER: &str = "label,cfg,caption_index,seed,cell,reference_cell,psnr,ssim,lpips";
pub const KID_HEADER: &str = "label,cfg,n,n_baseline,subset_size,subsets,kid_mean,kid_std";

/// One row of `metrics.csv`: a cell scored against its reference cell.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    pub label: String,
    pub cfg: f64,
    pub caption_index: usize,
    pub seed: u64,
    pub cell: String,
    pub reference_cell: Option<String>,
    pub psnr: Option<f64>,
    pub ssim: Option<f64>,
    pub lpips: Option<f64>,
    /// Metric fields that were `inf` / `nan` (PSNR of identical images): left out of means.
    pub nonfinite: usize,
}

impl MetricRow {
    pub fn metric(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::Psnr => self.psnr,
            Metric::Ssim => self.ssim,
            Metric::Lpips => self.lpips,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Psnr,
    Ssim,
    Lpips,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Psnr, Metric::Ssim, Metric::Lpips];
    pub fn name(self) -> &'static str {
        match self {
            Metric::Psnr => "PSNR",
            Metric::Ssim => "SSIM",
            Metric::Lpips => "LPIPS",
        }
    }
    pub fn key(self) -> &'static str {
        match self {
            Metric::Psnr => "psnr",
            Metric::Ssim => "ssim",
            Metric::Lpips => "lpips",
        }
    }
    /// Higher is better?
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Lpips)
    }
}

/// Parses `metrics.csv` text (`path` only names it in messages).
pub fn parse_metrics(path: &Path, text: &str) -> Result<Vec<MetricRow>> {
    let csv = Csv::parse(path, text, &["label", "cfg", "caption_index", "seed", "cell", "psnr", "ssim"], METRICS_HEADER)?;
    let mut out = Vec::new();
    for r in &csv.rows {
        let label = csv.str_at(r, "label")?;
        if label.is_empty() {
            bail!("{} line {}: empty label", csv.name, r.0);
        }
        let cell = csv.str_at(r, "cell")?;
        if cell.is_empty() || !cell.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("{} line {}: cell '{cell}' is not a cell id", csv.name, r.0);
        }
        let reference_cell = match csv.col("reference_cell") {
            Some(_) => Some(csv.str_at(r, "reference_cell")?).filter(|s| !s.is_empty()),
            None => None,
        };
        if let Some(rc) = &reference_cell {
            if !rc.chars().all(|c| c.is_ascii_alphanumeric()) {
                bail!("{} line {}: reference_cell '{rc}' is not a cell id", csv.name, r.0);
            }
        }
        let cfg: f64 = csv.num(r, "cfg")?;
        if !cfg.is_finite() {
            bail!("{} line {}: cfg is not finite", csv.name, r.0);
        }
        let mut nonfinite = 0;
        let (psnr, ssim, lpips) = (csv.opt(r, "psnr", &mut nonfinite)?, csv.opt(r, "ssim", &mut nonfinite)?, csv.opt(r, "lpips", &mut nonfinite)?);
        out.push(MetricRow {
            label,
            cfg,
            caption_index: csv.num(r, "caption_index")?,
            seed: csv.num(r, "seed")?,
            cell,
            reference_cell,
            psnr,
            ssim,
            lpips,
            nonfinite,
        });
    }
    Ok(out)
}

/// One row of `kid.csv`: a label x CFG group against the baseline-seed set.
#[derive(Clone, Debug, PartialEq)]
pub struct KidRow {
    pub label: String,
    pub cfg: f64,
    pub n: usize,
    pub n_baseline: usize,
    pub kid_mean: Option<f64>,
    pub kid_std: Option<f64>,
}

pub fn parse_kid(path: &Path, text: &str) -> Result<Vec<KidRow>> {
    let csv = Csv::parse(path, text, &["label", "cfg", "kid_mean", "kid_std"], KID_HEADER)?;
    let mut out = Vec::new();
    for r in &csv.rows {
        let cfg: f64 = csv.num(r, "cfg")?;
        if !cfg.is_finite() {
            bail!("{} line {}: cfg is not finite", csv.name, r.0);
        }
        out.push(KidRow {
            label: csv.str_at(r, "label")?,
            cfg,
            n: if csv.col("n").is_some() { csv.num(r, "n")? } else { 0 },
            n_baseline: if csv.col("n_baseline").is_some() { csv.num(r, "n_baseline")? } else { 0 },
            kid_mean: csv.opt(r, "kid_mean", &mut 0)?,
            kid_std: csv.opt(r, "kid_std", &mut 0)?,
        });
    }
    Ok(out)
}

/// What a cell's `cell.json` says about where it came from.
#[derive(Clone, Debug, Default)]
pub struct CellInfo {
    pub id: String,
    pub label: String,
    pub method: String,
    pub cfg: f64,
    pub seed: u64,
    pub caption: String,
    pub caption_index: usize,
    pub git_commit: String,
    /// `(file, sha256)` of the model weights; empty for the analytic prior.
    pub weights: Vec<(String, String)>,
    pub model: String,
    pub nfe: Option<u64>,
    pub wall_seconds: Option<f64>,
    /// The cell has a `multiview` entry (panorama or NeRF).
    pub multiview: bool,
    /// `multiview.final_overlap[0]`: the panorama's overlap disagreement after the last step.
    pub final_overlap: Option<f64>,
    /// `multiview.final_residual[0]`: DDRep's RMS of render - target after the last fit.
    pub final_residual: Option<f64>,
    /// `files` of cell.json (image.png, views.png, turntable.gif, ...).
    pub files: Vec<String>,
    /// The cell's content key (what its id hashes), when cell.json records it.
    pub key: Option<serde_json::Value>,
}

impl CellInfo {
    pub fn has_file(&self, name: &str) -> bool {
        self.files.iter().any(|f| f == name)
    }
}

/// Reads `cells/<id>/cell.json`.
pub fn read_cell(cells_dir: &Path, id: &str) -> Result<CellInfo> {
    let path = cells_dir.join(id).join("cell.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {} (named in metrics.csv): rerun ddrep run and ddrep score", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let weights = match v.get("weights_sha256") {
        Some(serde_json::Value::Object(m)) => m.iter().map(|(k, x)| (k.clone(), x.as_str().unwrap_or("").to_string())).collect(),
        Some(serde_json::Value::String(s)) => vec![(String::new(), s.clone())],
        _ => Vec::new(),
    };
    let model = match v.get("model") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(x @ serde_json::Value::Object(_)) => x.get("name").and_then(|n| n.as_str()).map(str::to_string).unwrap_or_else(|| x.to_string()),
        Some(x) if !x.is_null() => x.to_string(),
        _ => String::new(),
    };
    Ok(CellInfo {
        id: id.to_string(),
        label: s("label"),
        method: s("method"),
        cfg: v.get("cfg").and_then(|x| x.as_f64()).unwrap_or(f64::NAN),
        seed: v.get("seed").and_then(|x| x.as_u64()).unwrap_or(0),
        caption: v.get("caption").and_then(|c| c.get("text").and_then(|t| t.as_str()).or(c.as_str())).unwrap_or("").to_string(),
        caption_index: v.get("caption_index").and_then(|x| x.as_u64()).unwrap_or(0) as usize,
        git_commit: s("git_commit"),
        weights,
        model,
        nfe: v.get("nfe").and_then(|x| x.as_u64()),
        wall_seconds: v.get("wall_seconds").and_then(|x| x.as_f64()),
        multiview: v.get("multiview").is_some_and(|m| m.is_object()),
        final_overlap: first_number(v.get("multiview").and_then(|m| m.get("final_overlap"))),
        final_residual: first_number(v.get("multiview").and_then(|m| m.get("final_residual"))),
        files: v.get("files").and_then(|f| f.as_array()).map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default(),
        key: v.get("key").cloned(),
    })
}

/// A number, or the first of a list of numbers (one entry per sample); null / empty: None.
fn first_number(v: Option<&serde_json::Value>) -> Option<f64> {
    match v? {
        serde_json::Value::Array(a) => a.first().and_then(|x| x.as_f64()),
        x => x.as_f64(),
    }
    .filter(|x| x.is_finite())
}

/// Sorted distinct CFG scales.
pub fn distinct_cfgs(it: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = it.into_iter().collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.dedup();
    v
}

/// A CFG scale as written in tables and axes (`3`, `7.5`).
pub fn cfg_text(c: f64) -> String {
    format!("{c}")
}
