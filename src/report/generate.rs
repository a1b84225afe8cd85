//! `ddrep report FILE [overrides]`: turns a scored grid (`metrics.csv`, `kid.csv`,
//! `score.json` from `ddrep score`, and the cells' `cell.json`) into `<results>/<name>/report/`:
//! Table 1 as CSV / Markdown / LaTeX, plots (PNG + SVG), image grids and `index.html`. A grid
//! without a `reference` method needs no `metrics.csv`: its report is built from the cells
//! (multiview consistency table and plots, panorama / turntable strips, diversity over seeds).
//! Every report adds the diversity table when a method x CFG x caption has several seeds, and
//! diversity grids (rows methods, columns seeds: Fig. 4) when the grid has 3 seeds or more.
//! Reading the results needs neither the model weights nor the caption file.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use super::data::{self, cfg_text, distinct_cfgs, CellInfo, KidRow, Metric, MetricRow};
use super::figures;
use super::gallery::{self, Gallery, TableSection};
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
    /// Table 1 (None: the grid has no metrics.csv).
    pub table: Option<Table>,
    /// Multiview consistency per method x CFG (empty unless the cells are multiview).
    pub consistency: Vec<figures::ConsistencyRow>,
    /// Diversity over seeds (empty with fewer than 2 seeds per group).
    pub diversity: Vec<figures::DiversityRow>,
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
    for key in ["reference", "reference_label", "baseline", "baseline_label"] {
        if v.get(key).is_some_and(|x| !x.is_string() && !x.is_null()) {
            bail!("{}: `{key}` must be a method label (a string): rerun ddrep score", path.display());
        }
    }
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

/// The finished cells of the grid, for a grid without `metrics.csv`: by `plan` (exact cell
/// ids) when it resolves (analytic prior, or SD1.5 weights present). Else by comparing each
/// stored cell's key with the grid's keys without weight hashes, so cells of other overrides
/// are left out; cells of two different weight sets then are an error. Without even captions,
/// by this grid's labels, CFG scales and seeds (a note says so).
fn grid_cells(file: &Path, overrides: &[String], f: &schema::ExperimentFile, root: &Path, labels: &[String], notes: &mut Vec<String>) -> Result<Vec<CellInfo>> {
    let cells_dir = root.join("cells");
    let e = match crate::experiment::plan(file, overrides) {
        Ok(p) => return p.cells.iter().filter(|c| Store::is_complete(root, &c.id)).map(|c| data::read_cell(&cells_dir, &c.id)).collect(),
        Err(e) => e,
    };
    let ids = Store::complete_ids(root);
    let mut out = Vec::new();
    match crate::experiment::plan_without_weights(file, overrides) {
        Ok(grid) => {
            let wanted: HashSet<String> = grid.iter().map(|c| c.key.to_string()).collect();
            let mut weight_sets: BTreeSet<Vec<(String, String)>> = BTreeSet::new();
            for id in ids {
                let c = data::read_cell(&cells_dir, &id)?;
                if c.key.as_ref().is_some_and(|k| wanted.contains(&crate::experiment::key_without_weights(k).to_string())) {
                    weight_sets.insert(c.weights.clone());
                    out.push(c);
                }
            }
            if weight_sets.len() > 1 {
                bail!(
                    "{}: the finished cells of this grid were made with {} different sets of model weights; pass the weights folder (model.weights or {}) so the report can pick its cells",
                    cells_dir.display(),
                    weight_sets.len(),
                    crate::experiment::SD15_ENV
                );
            }
            notes.push(format!("cells found by comparing cells/ with this grid's settings, without its weight hashes (the grid's cell ids need its model: {e:#})."));
        }
        Err(_) => {
            for id in ids {
                let c = data::read_cell(&cells_dir, &id)?;
                if labels.contains(&c.label) && f.cfg.contains(&c.cfg) && f.seeds.0.contains(&c.seed) {
                    out.push(c);
                }
            }
            notes.push(format!("cells found by scanning cells/ for this grid's labels, CFG scales and seeds; cells of other overrides may be among them (the grid's cell ids need its model and captions: {e:#})."));
        }
    }
    Ok(out)
}

/// A tile grid's column: its heading and which cells it shows.
type Column<'a> = (String, Box<dyn Fn(&CellInfo) -> bool + 'a>);

/// The statistic a consistency plot draws from each row.
type ConsistencyStat = fn(&figures::ConsistencyRow) -> Option<figures::SeStat>;

/// One strip / tile grid per `key`: rows labels, columns `cols` (heading, matcher).
#[allow(clippy::too_many_arguments)] // the cells, their arrangement, the file and the figure's texts
fn tile_grid(root: &Path, cs: &[&CellInfo], order: &[String], cols: &[Column<'_>], file_name: &str, caption: String, subtitle: String, out: &Path) -> Result<()> {
    let row_labels = table::ordered_labels(cs.iter().map(|c| c.label.clone()), order);
    let tiles = row_labels
        .iter()
        .map(|l| cols.iter().map(|(_, m)| cs.iter().find(|c| &c.label == l && m(c) && Store::cell_dir(root, &c.id).join(file_name).is_file()).map(|c| Store::cell_dir(root, &c.id).join(file_name))).collect())
        .collect();
    let spec = GridSpec { caption, subtitle, rows: row_labels, cols: cols.iter().map(|(h, _)| h.clone()).collect(), tiles };
    grids::write_grid(out, &spec)
}

/// Writes the report of `file` (with `overrides`); `reference` overrides score.json's label.
/// Without `metrics.csv` (a grid with no `reference` method: panoramas, NeRFs) it builds what
/// the cells support: the consistency table and plots, strips, diversity, the gallery.
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
    let has_reference = f.methods.iter().any(|m| matches!(m.spec, crate::methods::MethodSpec::Reference(_)));
    let metrics_path = root.join("metrics.csv");
    let scored = metrics_path.exists();
    if !scored && has_reference {
        bail!("{} not found: run `ddrep score {}` first", metrics_path.display(), file.display());
    }
    let mut notes = Vec::new();
    let (all_rows, rows) = if scored {
        let text = std::fs::read_to_string(&metrics_path).with_context(|| format!("cannot read {}", metrics_path.display()))?;
        let all_rows = data::parse_metrics(&metrics_path, &text)?;
        if all_rows.is_empty() {
            bail!("{} has no scored cells: the grid is empty or unfinished (run ddrep run, then ddrep score)", metrics_path.display());
        }
        // Only the rows of this grid (the overrides may select part of what was scored): by
        // cell id when the grid's ids resolve, so that rows of other settings under the same
        // labels (`methods.1.solver.lr=...`) are not reported as this grid's.
        let in_grid = |r: &MetricRow| f.cfg.contains(&r.cfg) && f.seeds.0.contains(&r.seed) && labels.contains(&r.label);
        let rows: Vec<MetricRow> = match crate::experiment::plan(file, overrides) {
            Ok(p) => {
                let ids: HashSet<&str> = p.cells.iter().map(|c| c.id.as_str()).collect();
                all_rows.iter().filter(|r| in_grid(r) && ids.contains(r.cell.as_str())).cloned().collect()
            }
            Err(e) => {
                notes.push(format!("metrics.csv rows picked by this grid's labels, CFG scales and seeds; rows of other overrides may be among them (the grid's cell ids need its model and captions: {e:#})."));
                all_rows.iter().filter(|r| in_grid(r)).cloned().collect()
            }
        };
        if rows.is_empty() {
            bail!(
                "none of the {} rows of {} is a cell of this grid (labels {}, cfg {:?}, with these overrides): run and score it with the same overrides",
                all_rows.len(),
                metrics_path.display(),
                labels.join(", "),
                f.cfg
            );
        }
        (all_rows, rows)
    } else {
        (Vec::new(), Vec::new())
    };
    let score = if scored { read_score_json(&root.join("score.json"))? } else { ScoreInfo::default() };
    // The metrics were computed against score.json's reference: another label would mislabel them.
    if let (Some(asked), Some(scored_against)) = (reference, score.reference.as_deref()) {
        if asked != scored_against {
            bail!("--reference {asked}: {} was scored against '{scored_against}'; run `ddrep score {} --reference {asked}` first", metrics_path.display(), file.display());
        }
    }
    let reference = reference.map(str::to_string).or(score.reference.clone()).unwrap_or_else(|| "reference".into());
    if scored && !labels.contains(&reference) {
        bail!("reference label '{reference}' is not a method of this grid (labels: {})", labels.join(", "));
    }
    let baseline = score.baseline.clone().unwrap_or_else(|| "baseline".into());
    let kid_path = root.join("kid.csv");
    let kid: Vec<KidRow> = if scored && kid_path.exists() {
        let t = std::fs::read_to_string(&kid_path).with_context(|| format!("cannot read {}", kid_path.display()))?;
        data::parse_kid(&kid_path, &t)?.into_iter().filter(|k| f.cfg.contains(&k.cfg)).collect()
    } else {
        Vec::new()
    };

    // The cells: every scored cell and its reference; unscored: the grid's finished cells.
    let cells_dir = root.join("cells");
    let mut cells: Vec<CellInfo> = if scored {
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for r in &rows {
            ids.insert(r.cell.clone());
            if let Some(rc) = &r.reference_cell {
                ids.insert(rc.clone());
            }
        }
        ids.iter().map(|id| data::read_cell(&cells_dir, id)).collect::<Result<_>>()?
    } else {
        grid_cells(file, overrides, &f, &root, &labels, &mut notes)?
    };
    if cells.is_empty() {
        bail!("{}: no finished cells of this grid: run `ddrep run {}` first (with the same overrides)", root.display(), file.display());
    }
    let order = table::ordered_labels(cells.iter().map(|c| c.label.clone()), &labels);
    let rank = |l: &str| order.iter().position(|x| x == l).unwrap_or(usize::MAX);
    cells.sort_by(|a, b| (a.caption_index, a.seed).cmp(&(b.caption_index, b.seed)).then(a.cfg.total_cmp(&b.cfg)).then((rank(&a.label), &a.id).cmp(&(rank(&b.label), &b.id))));
    let multiview = cells.iter().any(|c| c.multiview);

    // The report is written whole into a staging folder beside `report/` (same depth, so its
    // relative links are the same) and swapped in at the end: a failed or killed run leaves
    // the earlier report as it was, and no file of an earlier report outlives a new one.
    let dest = root.join("report");
    let stage = Staging::new(&root)?;
    let out = stage.dir.clone();
    std::fs::create_dir_all(out.join("plots")).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::create_dir_all(out.join("grids"))?;

    // Tables.
    let t = if scored {
        let paper = if f.name == "table1" { Some(table::parse_paper(table::PAPER_TABLE1_CSV)?) } else { None };
        let t = Table::build(&rows, &labels, &reference, paper.as_deref());
        let title = format!("{}: metrics vs {}", f.name, reference);
        let kid_md = (!kid.is_empty()).then(|| table::kid_markdown(&kid, &labels, &baseline));
        table::write_tables(&out, &t, kid_md.as_deref(), &title)?;
        Some(t)
    } else {
        None
    };
    let mut sections = Vec::new();
    let consistency = if multiview { figures::consistency_rows(&cells, &order) } else { Vec::new() };
    if !consistency.is_empty() {
        crate::io::write_atomic(&out.join("consistency.csv"), figures::consistency_csv(&consistency).as_bytes())?;
        crate::io::write_atomic(&out.join("consistency.md"), figures::consistency_markdown(&consistency, &format!("{}: multiview consistency", f.name)).as_bytes())?;
        sections.push(TableSection {
            id: "consistency".into(),
            title: "Multiview consistency (final overlap disagreement, final residual)".into(),
            links: vec![("consistency.csv".into(), "consistency.csv".into()), ("consistency.md".into(), "consistency.md".into())],
            html: figures::consistency_html(&consistency),
        });
    }
    let diversity = figures::diversity_rows(&root, &cells, &order)?;
    if !diversity.is_empty() {
        crate::io::write_atomic(&out.join("diversity.csv"), figures::diversity_csv(&diversity).as_bytes())?;
        crate::io::write_atomic(&out.join("diversity.md"), figures::diversity_markdown(&diversity, &format!("{}: diversity over seeds", f.name)).as_bytes())?;
        sections.push(TableSection {
            id: "diversity".into(),
            title: "Diversity over seeds (mean pairwise RMS distance)".into(),
            links: vec![("diversity.csv".into(), "diversity.csv".into()), ("diversity.md".into(), "diversity.md".into())],
            html: figures::diversity_html(&diversity),
        });
    }

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
    // Consistency plots: the RePaint on / off ablation figure (overlap) and the residual.
    if !consistency.is_empty() {
        let ccfgs = distinct_cfgs(consistency.iter().map(|r| r.cfg));
        let plots_of: [(&str, &str, &str, ConsistencyStat); 2] = [
            ("overlap", "Final overlap disagreement", "overlap disagreement (mean ± s.e., lower is better)", |r| r.overlap),
            ("residual", "Final multiview residual", "residual RMS (mean ± s.e.)", |r| r.residual),
        ];
        for (key, name, y_desc, get) in plots_of {
            let series: Vec<Series> = table::ordered_labels(consistency.iter().map(|r| r.label.clone()), &order)
                .into_iter()
                .map(|l| Series { points: ccfgs.iter().map(|c| consistency.iter().find(|r| r.label == l && r.cfg == *c).and_then(get).map(|s| s.bar())).collect(), label: l })
                .filter(|s| s.points.iter().any(Option::is_some))
                .collect();
            if series.is_empty() {
                continue;
            }
            let spec = PlotSpec {
                title: format!("{name} vs CFG scale ({})", f.name),
                x_desc: "CFG scale".into(),
                y_desc: y_desc.into(),
                x_ticks: ccfgs.iter().map(|c| cfg_text(*c)).collect(),
                series,
            };
            let stem = out.join("plots").join(format!("{key}_vs_cfg"));
            plots::write_plot(&stem, &spec)?;
            plot_list.push((format!("{name} vs CFG"), format!("plots/{key}_vs_cfg.png"), format!("plots/{key}_vs_cfg.svg")));
            plot_files.push(stem.with_extension("png"));
        }
    }

    // Grids: one per caption x seed (rows methods, columns CFG); multiview cells as strips
    // (the whole panorama, or a NeRF's turntable).
    let mut by_cs: BTreeMap<(usize, u64), Vec<&CellInfo>> = BTreeMap::new();
    for c in &cells {
        by_cs.entry((c.caption_index, c.seed)).or_default().push(c);
    }
    let mut grid_list = Vec::new();
    let mut grid_files = Vec::new();
    let mut figure_groups: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut strips = Vec::new();
    for ((ci, seed), cs) in &by_cs {
        let ccfgs = distinct_cfgs(cs.iter().map(|c| c.cfg));
        let cols: Vec<Column> =
            grids::cfg_cols(&ccfgs).into_iter().zip(ccfgs.iter().copied()).map(|(h, w)| (h, Box::new(move |c: &CellInfo| c.cfg == w) as Box<dyn Fn(&CellInfo) -> bool>)).collect();
        let caption = cs[0].caption.clone();
        let complete: Vec<&CellInfo> = cs.iter().copied().filter(|c| Store::is_complete(&root, &c.id)).collect();
        if multiview {
            let on_disk = |c: &CellInfo, name: &str| Store::cell_dir(&root, &c.id).join(name).is_file();
            let turntable = complete.iter().any(|c| on_disk(c, "turntable.png"));
            let (file_name, stem, what) = if turntable { ("turntable.png", "turntable", "turntable frames") } else { ("image.png", "panorama", "whole panorama") };
            if !complete.iter().any(|c| on_disk(c, file_name)) {
                continue;
            }
            let name = format!("{stem}_c{ci:03}_s{seed}.png");
            let path = out.join("grids").join(&name);
            tile_grid(&root, &complete, &order, &cols, file_name, caption.clone(), format!("caption {ci}, seed {seed}: {what} — rows: methods, columns: CFG scale"), &path)?;
            strips.push((format!("caption {ci}, seed {seed}: {caption}"), format!("grids/{name}")));
            grid_files.push(path);
        } else {
            let name = format!("grid_c{ci:03}_s{seed}.png");
            let path = out.join("grids").join(&name);
            tile_grid(&root, &complete, &order, &cols, "image.png", caption.clone(), format!("caption {ci}, seed {seed} — rows: methods, columns: CFG scale"), &path)?;
            grid_list.push((format!("caption {ci}, seed {seed}: {caption}"), format!("grids/{name}")));
            grid_files.push(path);
        }
    }
    if !strips.is_empty() {
        let turntable = cells.iter().any(|c| Store::cell_dir(&root, &c.id).join("turntable.png").is_file());
        let heading = if turntable { "Turntable strips (rows: methods, columns: CFG; each strip: the NeRF's turntable frames)" } else { "Panorama strips (rows: methods, columns: CFG)" };
        figure_groups.push((heading.to_string(), strips));
    }
    // Diversity grids (Fig. 4): one per caption x CFG, rows methods, columns seeds, when the
    // grid has at least 3 seeds.
    if !multiview && f.seeds.0.len() >= 3 {
        let mut by_cw: BTreeMap<(usize, u64), Vec<&CellInfo>> = BTreeMap::new();
        for c in cells.iter().filter(|c| Store::is_complete(&root, &c.id)) {
            by_cw.entry((c.caption_index, c.cfg.to_bits())).or_default().push(c);
        }
        let mut list = Vec::new();
        for ((ci, wb), cs) in &by_cw {
            let w = f64::from_bits(*wb);
            let mut seeds: Vec<u64> = cs.iter().map(|c| c.seed).collect();
            seeds.sort();
            seeds.dedup();
            if seeds.len() < 2 {
                continue;
            }
            let cols: Vec<Column> = seeds.iter().map(|&s| (format!("seed {s}"), Box::new(move |c: &CellInfo| c.seed == s) as Box<dyn Fn(&CellInfo) -> bool>)).collect();
            let wt = cfg_text(w);
            let name = format!("diversity_c{ci:03}_cfg{wt}.png");
            let path = out.join("grids").join(&name);
            tile_grid(&root, cs, &order, &cols, "image.png", cs[0].caption.clone(), format!("caption {ci}, CFG {wt} — rows: methods, columns: seeds"), &path)?;
            list.push((format!("caption {ci}, CFG {wt}: {}", cs[0].caption), format!("grids/{name}")));
            grid_files.push(path);
        }
        if !list.is_empty() {
            figure_groups.push(("Diversity over seeds (rows: methods, columns: seeds)".into(), list));
        }
    }

    // Gallery.
    let mut data_links = Vec::new();
    if scored {
        data_links = vec![
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
    }
    if root.join("experiment.json").exists() {
        data_links.push(("experiment.json (resolved grid)".to_string(), "../experiment.json".to_string()));
    }
    notes.extend(score.notes);
    if scored {
        for m in Metric::ALL {
            if !rows.iter().any(|r| r.metric(m).is_some()) {
                notes.push(format!("{} is not in metrics.csv (not computed by ddrep score).", m.name()));
            }
        }
        if kid.is_empty() {
            notes.push("KID: no kid.csv (not computed by ddrep score).".into());
        }
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
        table_html: t.as_ref().map(Table::to_html).unwrap_or_default(),
        data_links,
        plots: plot_list,
        grids: grid_list,
        tables: sections,
        figures: figure_groups,
        cells: &cells,
        rows: &rows,
        notes,
    });
    crate::io::write_atomic(&out.join("index.html"), html.as_bytes())?;
    let bad = gallery::check_links(&out.join("index.html"))?;
    if !bad.is_empty() {
        bail!("{}: {} broken links, first: {}", dest.join("index.html").display(), bad.len(), bad[0]);
    }
    stage.replace(&dest)?;
    let moved = |p: Vec<PathBuf>| p.into_iter().map(|p| p.strip_prefix(&out).map(|r| dest.join(r)).unwrap_or(p)).collect();
    let (plots, grids) = (moved(plot_files), moved(grid_files));
    Ok(ReportOutput { index: dest.join("index.html"), dir: dest, table: t, consistency, diversity, plots, grids })
}

/// A report being written: `root/.report-staging-PID`, removed on drop unless it has replaced
/// `root/report`. Holds `root/.report.lock` meanwhile, so that two reports of one grid do not
/// sweep each other's staging folders.
struct Staging {
    dir: PathBuf,
    /// Moved into place: nothing left to remove.
    placed: bool,
    _lock: std::fs::File,
}

impl Staging {
    fn new(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let Some(lock) = crate::experiment::store::try_lock_file(&root.join(".report.lock"), false)? else {
            bail!("another `ddrep report` is writing {}: wait for it to finish", root.join("report").display())
        };
        // Leftovers of killed runs (no other report runs: the lock is ours). A run killed
        // between the two renames of `replace` left no `report/` but the earlier one aside:
        // put it back first.
        let dest = root.join("report");
        let mut leftovers: Vec<PathBuf> = std::fs::read_dir(root)
            .map(|entries| entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".report-")).map(|e| e.path()).collect())
            .unwrap_or_default();
        if !dest.exists() {
            if let Some(i) = leftovers.iter().position(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".report-old-"))) {
                let old = leftovers.remove(i);
                std::fs::rename(&old, &dest).with_context(|| format!("cannot restore the earlier report {} to {}", old.display(), dest.display()))?;
            }
        }
        for p in leftovers {
            let _ = std::fs::remove_dir_all(p);
        }
        crate::io::sweep_stale_temps(root);
        let dir = root.join(format!(".report-staging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir, placed: false, _lock: lock })
    }

    /// Puts the staged report at `dest`: where the OS can, one exchange of the two folders
    /// (the earlier report then sits in the staging folder and goes with it); else two renames
    /// (the old report aside, the new one in), which the next run repairs if killed between.
    fn replace(mut self, dest: &Path) -> Result<()> {
        if dest.exists() && exchange(&self.dir, dest).is_ok() {
            return Ok(()); // drop removes the earlier report, now at self.dir
        }
        let old = dest.with_file_name(format!(".report-old-{}", std::process::id()));
        if dest.exists() {
            std::fs::rename(dest, &old).with_context(|| format!("cannot move the earlier report {} aside", dest.display()))?;
        }
        if let Err(e) = std::fs::rename(&self.dir, dest) {
            let _ = std::fs::rename(&old, dest);
            return Err(e).with_context(|| format!("cannot move {} to {}", self.dir.display(), dest.display()));
        }
        self.placed = true;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

/// Swaps two existing paths in one step (Linux's `renameat2` with `RENAME_EXCHANGE`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let (ca, cb) = (std::ffi::CString::new(a.as_os_str().as_bytes())?, std::ffi::CString::new(b.as_os_str().as_bytes())?);
    // Safety: two NUL-terminated paths that live across the call; AT_FDCWD resolves them as given.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.placed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
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
    let mut tables = Vec::new();
    if let Some(t) = &o.table {
        print!("{}", t.to_markdown(&format!("{}", o.dir.display())));
        tables.push("table1.csv, table1.md, table1.tex");
    }
    if !o.consistency.is_empty() {
        print!("{}", figures::consistency_markdown(&o.consistency, &format!("{}: multiview consistency", o.dir.display())));
        tables.push("consistency.csv, consistency.md");
    }
    if !o.diversity.is_empty() {
        tables.push("diversity.csv, diversity.md");
    }
    println!("\nwrote {}/{{{}}}, {} plots (PNG + SVG), {} grids, {}", o.dir.display(), tables.join(", "), o.plots.len(), o.grids.len(), o.index.display());
    Ok(())
}
