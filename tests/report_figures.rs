//! `ddrep report` on grids without reference cells (panorama RePaint ablation, NeRF) and the
//! Fig. 4 diversity figures: shrunk demo grids are run and reported; the consistency table
//! equals means recomputed from cell.json, the diversity table equals a recomputation from the
//! cells' PNGs, plots / grids parse, the gallery's links resolve (turntable GIFs embedded).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod sd15_common;

use ddrep::report::data::METRICS_HEADER;
use ddrep::report::gallery::check_links;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn ddrep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddrep")).args(args).output().expect("run ddrep")
}

#[track_caller]
fn ok(o: &Output) {
    assert!(o.status.success(), "ddrep failed:\nstdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddrep-report-figures-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn with(cmd: &str, args: &[&str]) -> Vec<String> {
    std::iter::once(cmd.to_string()).chain(args.iter().map(|s| s.to_string())).collect()
}

fn run(cmd: &str, args: &[&str]) -> Output {
    let v = with(cmd, args);
    ddrep(&v.iter().map(String::as_str).collect::<Vec<_>>())
}

fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let head: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
    lines.map(|l| head.iter().cloned().zip(l.split(',').map(str::to_string)).collect()).collect()
}

/// Complete cells: (id, cell.json).
fn cells(root: &Path) -> Vec<(String, serde_json::Value)> {
    let mut out: Vec<_> = std::fs::read_dir(root.join("cells"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("cell.json").is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), serde_json::from_slice(&std::fs::read(p.join("cell.json")).unwrap()).unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Mean and standard error (sample std / sqrt n).
fn mean_se(v: &[f64]) -> (f64, Option<f64>) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let se = (v.len() >= 2).then(|| (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt());
    (m, se)
}

/// consistency.csv equals the means over the cells' `multiview.<key>[0]`.
fn check_consistency(root: &Path, key: &str, col: &str) -> usize {
    let table = read_csv(&root.join("report/consistency.csv"));
    let mut groups: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for (_, rec) in cells(root) {
        let cfg = format!("{}", rec["cfg"].as_f64().unwrap());
        let e = groups.entry((rec["label"].as_str().unwrap().to_string(), cfg)).or_default();
        if let Some(v) = rec["multiview"][key].as_array().and_then(|a| a.first()).and_then(|x| x.as_f64()) {
            e.push(v);
        }
    }
    assert_eq!(table.len(), groups.len(), "one row per method x CFG");
    let mut checked = 0;
    for ((label, cfg), v) in &groups {
        let row = table.iter().find(|r| &r["method"] == label && &r["cfg"] == cfg).unwrap_or_else(|| panic!("no row {label} {cfg}"));
        assert_eq!(row[&format!("{col}_n")].parse::<usize>().unwrap(), v.len());
        if v.is_empty() {
            assert_eq!(row[&format!("{col}_mean")], "");
            continue;
        }
        let (m, se) = mean_se(v);
        let tm: f64 = row[&format!("{col}_mean")].parse().unwrap();
        assert!((tm - m).abs() <= 1e-12 * m.abs().max(1.0), "{label} {cfg} {col}: table {tm}, recomputed {m}");
        let tse: f64 = row[&format!("{col}_se")].parse().unwrap();
        assert!((tse - se.unwrap()).abs() <= 1e-12, "{label} {cfg} {col} s.e.: table {tse}, recomputed {se:?}");
        checked += 1;
    }
    // The Markdown table shows the same rows.
    let md = std::fs::read_to_string(root.join("report/consistency.md")).unwrap();
    for (label, cfg) in groups.keys() {
        assert!(md.contains(&format!("| {label} | {cfg} |")), "{label} {cfg} missing from consistency.md");
    }
    checked
}

#[track_caller]
fn check_png(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

#[track_caller]
fn check_plot(report: &Path, stem: &str) {
    assert_eq!(check_png(&report.join(format!("plots/{stem}.png"))), (900, 560));
    let svg = std::fs::read_to_string(report.join(format!("plots/{stem}.svg"))).unwrap();
    assert!(svg.starts_with("<svg") || svg.contains("<svg "), "{stem}.svg is not an SVG");
    assert!(svg.trim_end().ends_with("</svg>"));
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains(&format!("src=\"plots/{stem}.png\"")) && html.contains(&format!("href=\"plots/{stem}.svg\"")), "{stem} not in index.html");
}

#[track_caller]
fn check_gallery(report: &Path, yaml: &str, ov: &[&str]) -> String {
    assert_eq!(check_links(&report.join("index.html")).unwrap(), Vec::<String>::new());
    let mut args = vec![yaml, "--check"];
    args.extend_from_slice(ov);
    ok(&run("report", &args));
    std::fs::read_to_string(report.join("index.html")).unwrap()
}

#[test]
fn panorama_repaint_report_without_reference_cells() {
    let dir = tmp("pano");
    let yaml = format!("{REPO}/experiments/demo_panorama_repaint.yaml");
    let out = format!("outputs.dir={}", dir.display());
    let ov = [out.as_str(), "seeds=[0,1]", "cfg=[0,10]", "methods.0.solver.steps=2", "methods.1.solver.steps=2"];
    let args: Vec<&str> = std::iter::once(yaml.as_str()).chain(ov.iter().copied()).collect();
    ok(&run("run", &args));
    let root = dir.join("demo_panorama_repaint");
    assert!(!root.join("metrics.csv").exists());
    let o = run("report", &args);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("final overlap disagreement"));
    // 2 methods x 2 CFG, each over 2 seeds: overlap and residual recomputed from cell.json.
    assert_eq!(check_consistency(&root, "final_overlap", "overlap"), 4);
    assert_eq!(check_consistency(&root, "final_residual", "residual"), 4);
    let labels: Vec<String> = read_csv(&root.join("report/consistency.csv")).iter().map(|r| r["method"].clone()).collect();
    assert_eq!(labels, ["repaint", "repaint", "none", "none"], "rows in the file's method order");
    let report = root.join("report");
    check_plot(&report, "overlap_vs_cfg");
    check_plot(&report, "residual_vs_cfg");
    assert!(!report.join("table1.csv").exists() && !report.join("plots/psnr_vs_cfg.png").exists());
    // Panorama strips: one per seed (one caption), 2 rows x 2 columns of wide strips.
    for s in 0..2 {
        let (w, h) = check_png(&report.join(format!("grids/panorama_c000_s{s}.png")));
        assert!(w > 2 * 400 && h > 2 * 64 && w > h, "{w}x{h}");
    }
    assert!(!report.join("grids/grid_c000_s0.png").exists(), "no square grids of panoramas");
    let html = check_gallery(&report, &yaml, &ov);
    assert!(html.contains("Panorama strips") && html.contains("href=\"consistency.csv\"") && html.contains("href=\"consistency.md\""));
    for (id, rec) in cells(&root) {
        assert!(html.contains(&format!("href=\"../cells/{id}/views.png\"")), "views.png of {id}");
        let commit = rec["git_commit"].as_str().unwrap();
        assert!(html.contains(&commit[..commit.len().min(12)]));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nerf_report_embeds_turntables() {
    let dir = tmp("nerf");
    let yaml = format!("{REPO}/experiments/demo_nerf.yaml");
    let out = format!("outputs.dir={}", dir.display());
    let ov = [out.as_str(), "seeds=[0,1]", "diffrep.grid=6", "methods.0.steps=20", "methods.0.solver.steps=1", "methods.1.iters=20"];
    let args: Vec<&str> = std::iter::once(yaml.as_str()).chain(ov.iter().copied()).collect();
    ok(&run("run", &args));
    let root = dir.join("demo_nerf");
    ok(&run("report", &args));
    // NeRFs record no overlap; DDRep's residual is recomputed from cell.json.
    check_consistency(&root, "final_overlap", "overlap");
    assert!(check_consistency(&root, "final_residual", "residual") >= 1);
    let report = root.join("report");
    check_plot(&report, "residual_vs_cfg");
    assert!(!report.join("plots/overlap_vs_cfg.png").exists());
    for s in 0..2 {
        let (w, h) = check_png(&report.join(format!("grids/turntable_c000_s{s}.png")));
        assert!(w > h, "turntable strips are wide: {w}x{h}");
    }
    let html = check_gallery(&report, &yaml, &ov);
    assert!(html.contains("Turntable strips"));
    let cs = cells(&root);
    assert_eq!(cs.len(), 4);
    for (id, _) in &cs {
        assert!(html.contains(&format!("src=\"../cells/{id}/turntable.gif\"")), "turntable.gif of {id} not embedded");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fig4_report_has_diversity_grids_and_table() {
    let dir = tmp("fig4");
    let yaml = format!("{REPO}/experiments/demo_fig4.yaml");
    let out = format!("outputs.dir={}", dir.display());
    let ov = [out.as_str(), "seeds=0..3", "sampler.steps=4", "methods.1.solver.steps=3", "methods.2.iters=20", "methods.3.iters=20"];
    let args: Vec<&str> = std::iter::once(yaml.as_str()).chain(ov.iter().copied()).collect();
    ok(&run("run", &args));
    let root = dir.join("demo_fig4");
    // The grid has reference cells: the report still wants ddrep score first.
    let o = run("report", &args);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("run `ddrep score"), "{}", String::from_utf8_lossy(&o.stderr));
    ok(&run("score", &args));
    let metrics = std::fs::read_to_string(root.join("metrics.csv")).unwrap();
    assert!(metrics.starts_with(METRICS_HEADER), "metrics.csv header: {}", metrics.lines().next().unwrap_or(""));
    ok(&run("report", &args));
    let report = root.join("report");
    // Diversity recomputed from the PNGs: mean pairwise RMS over the 3 seeds, pixels in [-1, 1].
    let table = read_csv(&report.join("diversity.csv"));
    let mut groups: BTreeMap<String, Vec<(u64, Vec<f64>)>> = BTreeMap::new();
    for (id, rec) in cells(&root) {
        let img = image::open(root.join("cells").join(&id).join("image.png")).unwrap().to_rgb8();
        let v: Vec<f64> = img.into_raw().into_iter().map(|p| p as f64 / 127.5 - 1.0).collect();
        groups.entry(rec["label"].as_str().unwrap().to_string()).or_default().push((rec["seed"].as_u64().unwrap(), v));
    }
    assert_eq!(groups.len(), 4);
    for (label, imgs) in &groups {
        assert_eq!(imgs.len(), 3);
        let mut d = Vec::new();
        for i in 0..imgs.len() {
            for j in i + 1..imgs.len() {
                let a = &imgs[i].1;
                let b = &imgs[j].1;
                d.push((a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64).sqrt());
            }
        }
        let want = d.iter().sum::<f64>() / d.len() as f64;
        for caption in ["0", "mean"] {
            let row = table.iter().find(|r| &r["method"] == label && r["cfg"] == "10" && r["caption_index"] == caption).unwrap_or_else(|| panic!("no row {label} {caption}"));
            let got: f64 = row["mean_pairwise_rms"].parse().unwrap();
            assert!((got - want).abs() < 1e-5, "{label} caption {caption}: table {got}, recomputed {want}");
            assert_eq!(row["n"], if caption == "mean" { "1" } else { "3" });
        }
    }
    // One diversity grid (1 caption x CFG 10): 4 method rows x 3 seed columns of 128-px tiles.
    let (w, h) = check_png(&report.join("grids/diversity_c000_cfg10.png"));
    assert!(w >= 3 * 128 && h >= 4 * 128, "{w}x{h}");
    assert!(report.join("table1.csv").exists(), "Table 1 as before");
    let html = check_gallery(&report, &yaml, &ov);
    assert!(html.contains("src=\"grids/diversity_c000_cfg10.png\"") && html.contains("href=\"diversity.csv\""));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where the SD1.5 weights are gone, the report still takes exactly the cells of its own
/// overrides (keys compared without weight hashes), and refuses cells of two weight sets.
#[test]
fn report_without_weights_keeps_to_its_overrides() {
    let dir = tmp("noweights");
    let weights = dir.join("weights");
    sd15_common::copy_dir(&sd15_common::model_dir(), &weights);
    let yaml = dir.join("grid.yaml");
    std::fs::write(
        &yaml,
        format!(
            "name: grid\nmodel: {{name: sd15, weights: {}}}\n\
             diffrep: {{diffrep: siren, resolution: [16, 16], out_channels: 4, embedding_size: 8, width: 16, depth: 1}}\n\
             methods:\n  - {{method: ddrep, steps: 2, solver: {{kind: adam, steps: 1, lr: 0.01}}}}\n\
             cfg: [3]\nseeds: [0, 1]\ncaptions: {{inline: [a red bicycle]}}\noutputs: {{dir: {}}}\n",
            weights.display(),
            dir.display()
        ),
    )
    .unwrap();
    let y = yaml.to_str().unwrap();
    ok(&run("run", &[y]));
    let base: Vec<String> = cells(&dir.join("grid")).into_iter().map(|(id, _)| id).collect();
    ok(&run("run", &[y, "methods.0.solver.lr=0.02"]));
    let all: Vec<String> = cells(&dir.join("grid")).into_iter().map(|(id, _)| id).collect();
    let other: Vec<&String> = all.iter().filter(|id| !base.contains(id)).collect();
    assert_eq!((base.len(), other.len()), (2, 2));
    // A changed weight file (scheduler config) gives the same settings other cell ids.
    let sched = weights.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&sched).unwrap();
    std::fs::write(&sched, format!("{text}\n")).unwrap();
    ok(&run("run", &[y]));
    assert_eq!(cells(&dir.join("grid")).len(), 6);
    std::fs::remove_dir_all(&weights).unwrap();

    let o = run("report", &[y, "methods.0.solver.lr=0.02"]);
    ok(&o);
    let html = std::fs::read_to_string(dir.join("grid/report/index.html")).unwrap();
    for id in &all {
        assert_eq!(html.contains(&format!("../cells/{id}/")), other.contains(&id), "cell {id}");
    }
    assert!(html.contains("without its weight hashes"), "the gallery says how its cells were found");
    // The base settings match cells of two weight sets: which belong to the grid is unknown.
    let o = run("report", &[y]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("2 different sets of model weights"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
