//! `ddrep report FILE [overrides]`: turns a scored grid (`metrics.csv`, `kid.csv`,
//! `score.json` from `ddrep score`, and the cells' `cell.json`) into `<results>/<name>/report/`:
//! Table 1 as CSV / Markdown / LaTeX, plots (PNG + SVG), image grids and `index.html`.
//! Reading the results needs neither the model weights nor the caption file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use super::data::{self, cfg_text, distinct_cfgs, CellInfo, KidRow, Metric, MetricRow};
use super::gallery::{self, Gallery};
use super::grids::{self, GridSpec};
use super::plots::{self, PlotSpec, Series};
use super::table::{self, Table};
use crate::experiment::schema;
use crate::experiment::store::Store;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Experiment YAML file (its results folder is reported on).
    pub file: PathBuf,
    /// The same overrides the grid was run and scored with.
    pub overrides: Vec<String>,
    /// Label the metrics compare with (default: score.json's, else `reference`).
    #[arg(long)]
    pub reference: Option<String>,
    /// Only check that every relative link and image of an existing report/index.html exists.
    #[arg(long)]
    pub check: bool,
}

/// What the report wrote.
#[derive(Debug)]
pub struct ReportOutput {
    pub dir: PathBuf,
    pub table: Table,
    pub plots: Vec<PathBuf>,
    pub grids: Vec<PathBuf>,
    pub index: PathBuf,
}

/// `score.json`'s fields the report uses (all optional; its other fields are ignored).
#[derive(Default)]
struct ScoreInfo {
    reference: Option<String>,
    baseline: Option<String>,
    notes: Vec<String>,
}

fn read_score_json(path: &Path) -> Result<ScoreInfo> {
    if !path.exists() {
        return Ok(ScoreInfo::default());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: not valid JSON ({e}): rerun ddrep score", path.display()))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let mut notes = Vec::new();
    for key in ["unavailable", "unavailable_metrics"] {
        match v.get(key) {
            Some(serde_json::Value::Object(m)) => {
                for (k, r) in m {
                    notes.push(format!("{k} not available: {}", r.as_str().map(str::to_string).unwrap_or_else(|| r.to_string())));
                }
            }
            Some(serde_json::Value::Array(a)) => {
                for x in a {
                    let name = x.get("metric").and_then(|m| m.as_str()).or(x.as_str()).unwrap_or("?");
                    match x.get("reason").and_then(|r| r.as_str()) {
                        Some(r) => notes.push(format!("{name} not available: {r}")),
                        None => notes.push(format!("{name} not available")),
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ScoreInfo { reference: s("reference").or_else(|| s("reference_label")), baseline: s("baseline").or_else(|| s("baseline_label")), notes })
}

/// Writes the report of `file` (with `overrides`); `reference` overrides score.json's label.
pub fn build_report(file: &Path, overrides: &[String], reference: Option<&str>) -> Result<ReportOutput> {
    let f = schema::load(file, overrides)?;
    let labels: Vec<String> = f.methods.iter().map(|m| m.label()).collect();
    // A grid that `exclude` empties without looking at captions (plan() has the full check).
    let all_out = labels.iter().all(|l| {
        f.cfg.iter().all(|&w| {
            f.seeds.0.iter().all(|&s| {
                f.exclude.iter().any(|x| x.caption.is_none() && x.method.as_ref().is_none_or(|m| m == l) && x.cfg.is_none_or(|c| c == w) && x.seed.is_none_or(|z| z == s))
            })
        })
    });
    if labels.is_empty() || f.cfg.is_empty() || f.seeds.0.is_empty() || all_out {
        bail!("{}: the grid is empty (no method x cfg x seed cell is left): nothing to report", file.display());
    }
    let root = f.outputs.dir.join(&f.name);
    let metrics_path = root.join("metrics.csv");
    if !metrics_path.exists() {
        bail!("{} not found: run `ddrep score {}` first", metrics_path.display(), file.display());
    }
    let text = std::fs::read_to_string(&metrics_path).with_context(|| format!("cannot read {}", metrics_path.display()))?;
    let all_rows = data::parse_metrics(&metrics_path, &text)?;
    if all_rows.is_empty() {
        bail!("{} has no scored cells: the grid is empty or unfinished (run ddrep run, then ddrep score)", metrics_path.display());
    }
    // Only the rows of this grid (the overrides may select part of what was scored).
    let rows: Vec<MetricRow> = all_rows.iter().filter(|r| f.cfg.contains(&r.cfg) && f.seeds.0.contains(&r.seed) && labels.contains(&r.label)).cloned().collect();
    if rows.is_empty() {
        bail!("none of the {} rows of {} is in this grid (labels {}, cfg {:?}): score it with the same overrides", all_rows.len(), metrics_path.display(), labels.join(", "), f.cfg);
    }
    let score = read_score_json(&root.join("score.json"))?;
    let reference = reference.map(str::to_string).or(score.reference.clone()).unwrap_or_else(|| "reference".into());
    let baseline = score.baseline.clone().unwrap_or_else(|| "baseline".into());
    let kid_path = root.join("kid.csv");
    let kid: Vec<KidRow> = if kid_path.exists() {
        let t = std::fs::read_to_string(&kid_path).with_context(|| format!("cannot read {}", kid_path.display()))?;
        data::parse_kid(&kid_path, &t)?.into_iter().filter(|k| f.cfg.contains(&k.cfg)).collect()
    } else {
        Vec::new()
    };

    // The cells: every scored cell and its reference.
    let cells_dir = root.join("cells");
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for r in &rows {
        ids.insert(r.cell.clone());
        if let Some(rc) = &r.reference_cell {
            ids.insert(rc.clone());
        }
    }
    let mut cells: Vec<CellInfo> = ids.iter().map(|id| data::read_cell(&cells_dir, id)).collect::<Result<_>>()?;
    let order = table::ordered_labels(cells.iter().map(|c| c.label.clone()), &labels);
    let rank = |l: &str| order.iter().position(|x| x == l).unwrap_or(usize::MAX);
    cells.sort_by(|a, b| (a.caption_index, a.seed).cmp(&(b.caption_index, b.seed)).then(a.cfg.total_cmp(&b.cfg)).then((rank(&a.label), &a.id).cmp(&(rank(&b.label), &b.id))));

    let out = root.join("report");
    // plots/ and grids/ are wholly generated: drop files of an earlier report (e.g. a KID plot
    // after kid.csv went away).
    for sub in ["plots", "grids"] {
        let d = out.join(sub);
        if d.is_dir() {
            std::fs::remove_dir_all(&d).with_context(|| format!("cannot clear {}", d.display()))?;
        }
    }
    std::fs::create_dir_all(out.join("plots")).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::create_dir_all(out.join("grids"))?;

    // Tables.
    let paper = if f.name == "table1" { Some(table::parse_paper(table::PAPER_TABLE1_CSV)?) } else { None };
    let t = Table::build(&rows, &labels, &reference, paper.as_deref());
    let title = format!("{}: metrics vs {}", f.name, reference);
    let kid_md = (!kid.is_empty()).then(|| table::kid_markdown(&kid, &labels, &baseline));
    table::write_tables(&out, &t, kid_md.as_deref(), &title)?;

    // Plots.
    let mut plot_list = Vec::new();
    let mut plot_files = Vec::new();
    let cfgs = distinct_cfgs(rows.iter().map(|r| r.cfg));
    let ticks: Vec<String> = cfgs.iter().map(|c| cfg_text(*c)).collect();
    for m in Metric::ALL {
        let mut series = Vec::new();
        for l in table::ordered_labels(rows.iter().map(|r| r.label.clone()), &labels) {
            let points: Vec<Option<(f64, f64)>> = cfgs
                .iter()
                .map(|c| {
                    let v: Vec<f64> = rows.iter().filter(|r| r.label == l && r.cfg == *c).filter_map(|r| r.metric(m)).collect();
                    table::Stat::of(&v).map(|s| (s.mean, s.std))
                })
                .collect();
            if points.iter().any(Option::is_some) {
                series.push(Series { label: format!("{l} vs {reference}"), points });
            }
        }
        if series.is_empty() {
            continue;
        }
        let arrow = if m.higher_is_better() { "higher is better" } else { "lower is better" };
        let spec = PlotSpec {
            title: format!("{} vs CFG scale ({})", m.name(), f.name),
            x_desc: "CFG scale".into(),
            y_desc: format!("{} (mean ± std over cells, {arrow})", m.name()),
            x_ticks: ticks.clone(),
            series,
        };
        let stem = out.join("plots").join(format!("{}_vs_cfg", m.key()));
        plots::write_plot(&stem, &spec)?;
        plot_list.push((format!("{} vs CFG", m.name()), format!("plots/{}_vs_cfg.png", m.key()), format!("plots/{}_vs_cfg.svg", m.key())));
        plot_files.push(stem.with_extension("png"));
    }
    if kid.iter().any(|k| k.kid_mean.is_some()) {
        let kcfgs = distinct_cfgs(kid.iter().map(|k| k.cfg));
        let series: Vec<Series> = table::ordered_labels(kid.iter().map(|k| k.label.clone()), &labels)
            .into_iter()
            .map(|l| Series {
                points: kcfgs.iter().map(|c| kid.iter().find(|k| k.label == l && k.cfg == *c).and_then(|k| k.kid_mean.map(|m| (m, k.kid_std.unwrap_or(0.0))))).collect(),
                label: l,
            })
            .filter(|s| s.points.iter().any(Option::is_some))
            .collect();
        let spec = PlotSpec {
            title: format!("KID vs CFG scale ({}, against the {baseline} set)", f.name),
            x_desc: "CFG scale".into(),
            y_desc: "KID (mean ± std over subsets, lower is better)".into(),
            x_ticks: kcfgs.iter().map(|c| cfg_text(*c)).collect(),
            series,
        };
        let stem = out.join("plots").join("kid_vs_cfg");
        plots::write_plot(&stem, &spec)?;
        plot_list.insert(0, ("KID vs CFG".into(), "plots/kid_vs_cfg.png".into(), "plots/kid_vs_cfg.svg".into()));
        plot_files.insert(0, stem.with_extension("png"));
    }

    // Grids: one per caption x seed.
    let mut by_cs: BTreeMap<(usize, u64), Vec<&CellInfo>> = BTreeMap::new();
    for c in &cells {
        by_cs.entry((c.caption_index, c.seed)).or_default().push(c);
    }
    let mut grid_list = Vec::new();
    let mut grid_files = Vec::new();
    for ((ci, seed), cs) in &by_cs {
        let row_labels = table::ordered_labels(cs.iter().map(|c| c.label.clone()), &order);
        let cols = distinct_cfgs(cs.iter().map(|c| c.cfg));
        let tiles = row_labels
            .iter()
            .map(|l| {
                cols.iter()
                    .map(|w| cs.iter().find(|c| &c.label == l && c.cfg == *w).filter(|c| Store::is_complete(&root, &c.id)).map(|c| Store::cell_dir(&root, &c.id).join("image.png")))
                    .collect()
            })
            .collect();
        let caption = cs[0].caption.clone();
        let spec = GridSpec { caption: caption.clone(), subtitle: format!("caption {ci}, seed {seed} — rows: methods, columns: CFG scale"), rows: row_labels, cols, tiles };
        let name = format!("grid_c{ci:03}_s{seed}.png");
        let path = out.join("grids").join(&name);
        grids::write_grid(&path, &spec)?;
        grid_list.push((format!("caption {ci}, seed {seed}: {caption}"), format!("grids/{name}")));
        grid_files.push(path);
    }

    // Gallery.
    let mut data_links = vec![
        ("table1.md".to_string(), "table1.md".to_string()),
        ("table1.csv".to_string(), "table1.csv".to_string()),
        ("table1.tex (booktabs)".to_string(), "table1.tex".to_string()),
        ("metrics.csv".to_string(), "../metrics.csv".to_string()),
    ];
    for extra in ["kid.csv", "score.json"] {
        if root.join(extra).exists() {
            data_links.push((extra.to_string(), format!("../{extra}")));
        }
    }
    let mut notes = score.notes;
    for m in Metric::ALL {
        if !rows.iter().any(|r| r.metric(m).is_some()) {
            notes.push(format!("{} is not in metrics.csv (not computed by ddrep score).", m.name()));
        }
    }
    if kid.is_empty() {
        notes.push("KID: no kid.csv (not computed by ddrep score).".into());
    }
    let nonfinite: usize = rows.iter().map(|r| r.nonfinite).sum();
    if nonfinite > 0 {
        notes.push(format!("{nonfinite} metric values in metrics.csv are inf or nan (e.g. PSNR of identical images) and are left out of the means."));
    }
    let dropped = all_rows.len() - rows.len();
    if dropped > 0 {
        notes.push(format!("{dropped} rows of metrics.csv are outside this grid's labels / CFG / seeds and are left out."));
    }
    let html = gallery::render(&Gallery {
        experiment: f.name.clone(),
        description: f.description.clone(),
        reference: reference.clone(),
        table_html: t.to_html(),
        data_links,
        plots: plot_list,
        grids: grid_list,
        cells: &cells,
        rows: &rows,
        notes,
    });
    let index = out.join("index.html");
    crate::io::write_atomic(&index, html.as_bytes())?;
    let bad = gallery::check_links(&index)?;
    if !bad.is_empty() {
        bail!("{}: {} broken links, first: {}", index.display(), bad.len(), bad[0]);
    }
    Ok(ReportOutput { dir: out, table: t, plots: plot_files, grids: grid_files, index })
}

pub fn report(a: &ReportArgs) -> Result<()> {
    if a.check {
        let f = schema::load(&a.file, &a.overrides)?;
        let index = f.outputs.dir.join(&f.name).join("report").join("index.html");
        let bad = gallery::check_links(&index)?;
        if !bad.is_empty() {
            for b in &bad {
                println!("broken: {b}");
            }
            bail!("{}: {} broken links or images (listed above), first: {}", index.display(), bad.len(), bad[0]);
        }
        println!("{}: every relative link and image exists", index.display());
        return Ok(());
    }
    let o = build_report(&a.file, &a.overrides, a.reference.as_deref())?;
    print!("{}", o.table.to_markdown(&format!("{}", o.dir.display())));
    println!("\nwrote {}/{{table1.csv, table1.md, table1.tex}}, {} plots (PNG + SVG), {} grids, {}", o.dir.display(), o.plots.len(), o.grids.len(), o.index.display());
    Ok(())
}
