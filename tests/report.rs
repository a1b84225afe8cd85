//! `ddrep report`: Table 1 (CSV / Markdown / LaTeX) equals the means over metrics.csv, plots
//! and grids are real PNG / SVG files with text drawn in them, the gallery's links resolve,
//! the paper's values sit beside ours for `table1`, and bad input is a one-line error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ddrep::report::data::{KID_HEADER, METRICS_HEADER};
use ddrep::report::gallery::check_links;
use ddrep::report::plots::{self, PlotSpec, Series};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn ddrep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddrep")).args(args).output().expect("run ddrep")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddrep-report-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A failing command: exit code 1, one line on stderr containing `want`, no panic.
#[track_caller]
fn assert_one_line_error(o: &Output, want: &str) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr {e}");
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    assert!(e.contains(want), "'{want}' not in: {e}");
}

/// Rows of a CSV by header name.
fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let head: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
    lines.map(|l| head.iter().cloned().zip(l.split(',').map(str::to_string)).collect()).collect()
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt())
}

/// Checks the report's table against means recomputed from `metrics.csv`.
fn check_table_against_metrics(root: &Path, reference: &str) {
    let metrics = read_csv(&root.join("metrics.csv"));
    let table = read_csv(&root.join("report/table1.csv"));
    let md = std::fs::read_to_string(root.join("report/table1.md")).unwrap();
    let mut groups: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for r in &metrics {
        for m in ["psnr", "ssim", "lpips"] {
            if let Some(v) = r.get(m).filter(|v| !v.is_empty()) {
                let cfg: f64 = r["cfg"].parse().unwrap();
                groups.entry((r["label"].clone(), m.to_string(), format!("{cfg}"))).or_default().push(v.parse().unwrap());
            }
        }
    }
    assert!(!groups.is_empty());
    for ((label, m, cfg), v) in &groups {
        let (mean, sd) = mean_std(v);
        let row = table.iter().find(|t| &t["method"] == label && &t["metric"] == m && &t["cfg"] == cfg).unwrap_or_else(|| panic!("no table row {label} {m} {cfg}"));
        assert_eq!(row["compared_with"], reference);
        assert_eq!(row["n"].parse::<usize>().unwrap(), v.len());
        let (tm, ts): (f64, f64) = (row["ours_mean"].parse().unwrap(), row["ours_std"].parse().unwrap());
        assert!((tm - mean).abs() < 1e-5 && (ts - sd).abs() < 1e-5, "{label} {m} {cfg}: table {tm} ± {ts}, recomputed {mean} ± {sd}");
        // The Markdown block of this label shows the same numbers.
        let block = md.split(&format!("## {label} vs {reference}")).nth(1).unwrap_or_else(|| panic!("no block {label} in {md}"));
        let block = block.split("\n## ").next().unwrap();
        assert!(block.contains(&format!("{mean:.3} ± {sd:.3}")), "{mean:.3} ± {sd:.3} not in {block}");
    }
    let tex = std::fs::read_to_string(root.join("report/table1.tex")).unwrap();
    for k in ["\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}", "\\pm"] {
        assert!(tex.contains(k), "{k} not in {tex}");
    }
}

/// PNGs decode, SVGs are SVG documents with text.
fn check_plots(report: &Path, names: &[&str]) {
    for n in names {
        let png = report.join(format!("plots/{n}.png"));
        let img = image::open(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display())).to_rgb8();
        assert_eq!((img.width(), img.height()), plots::SIZE);
        let svg = std::fs::read_to_string(report.join(format!("plots/{n}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "{n}.svg is not an SVG document");
        assert!(svg.contains("CFG scale") && svg.contains("<text"), "{n}.svg has no axis text");
    }
}

/// A fake finished cell with a small image.
#[allow(clippy::too_many_arguments)] // one per field of the cell's record
fn fake_cell(root: &Path, id: &str, label: &str, cfg: f64, seed: u64, ci: usize, caption: &str, shade: u8) {
    let d = root.join("cells").join(id);
    std::fs::create_dir_all(&d).unwrap();
    let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([shade, (x * 16) as u8, (y * 16) as u8]));
    img.save(d.join("image.png")).unwrap();
    let rec = serde_json::json!({
        "cell_id": id, "label": label, "method": label, "cfg": cfg, "seed": seed,
        "caption": {"text": caption}, "caption_index": ci, "git_commit": "0123456789abcdef0123",
        "weights_sha256": {"unet/diffusion_pytorch_model.safetensors": "feedface".repeat(8)},
        "nfe": 50, "wall_seconds": 1.5, "model": "fake"
    });
    std::fs::write(d.join("cell.json"), serde_json::to_string_pretty(&rec).unwrap()).unwrap();
}

/// Fake scored results of `experiments/table1.yaml` (labels reference, baseline, ddrep, sjc)
/// under `dir/table1`: metrics.csv and kid.csv in the new format, cells with cell.json + PNG.
fn fake_table1(dir: &Path, caption: &str) -> PathBuf {
    let root = dir.join("table1");
    let mut metrics = format!("{METRICS_HEADER}\n");
    let mut kid = format!("{KID_HEADER}\n");
    let mut n = 0u64;
    for (li, label) in ["baseline", "ddrep", "sjc"].iter().enumerate() {
        for cfg in [0.0, 3.0, 10.0] {
            for ci in 0..2usize {
                let seed = 0u64;
                n += 1;
                let (cell, rcell) = (format!("{:064x}", 1000 + n), format!("{:064x}", ci * 100 + cfg as usize));
                let cap = format!("{caption} {ci}");
                fake_cell(&root, &cell, label, cfg, seed, ci, &cap, 40 * li as u8);
                fake_cell(&root, &rcell, "reference", cfg, seed, ci, &cap, 200);
                let psnr = 20.0 + li as f64 * 3.0 + ci as f64 * 1.25 - cfg * 0.1;
                let lpips = if *label == "sjc" { String::new() } else { format!("{:.6}", 0.05 * (ci + 1) as f64 + cfg * 0.001) };
                metrics.push_str(&format!("{label},{cfg},{ci},{seed},{cell},{rcell},{psnr:.6},{:.6},{lpips}\n", 0.5 + 0.1 * ci as f64 + 0.01 * li as f64));
            }
            kid.push_str(&format!("{label},{cfg},2,2,2,10,{:.6},{:.6}\n", 0.01 * (li + 1) as f64 + cfg * 0.001, 0.002));
        }
    }
    std::fs::write(root.join("metrics.csv"), metrics).unwrap();
    std::fs::write(root.join("kid.csv"), kid).unwrap();
    std::fs::write(root.join("score.json"), r#"{"reference": "reference", "baseline": "baseline", "unavailable": {"lpips": "sjc rows left empty in this fixture"}}"#).unwrap();
    root
}

#[test]
fn report_on_table1_fixture_shows_paper_values_and_escapes_html() {
    let dir = tmp("fixture");
    let root = fake_table1(&dir, "a <b>bold</b> & \"quoted\" caption");
    let yaml = format!("{REPO}/experiments/table1.yaml");
    let out = format!("outputs.dir={}", dir.display());
    // table1.yaml names SD1.5 weights and COCO captions; the report needs neither.
    let o = ddrep(&["report", &yaml, &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_table_against_metrics(&root, "reference");
    let report = root.join("report");
    // The paper's values sit beside ours in the ddrep block only.
    let md = std::fs::read_to_string(report.join("table1.md")).unwrap();
    let ddrep_block = md.split("## ddrep vs reference").nth(1).unwrap().split("\n## ").next().unwrap();
    assert!(ddrep_block.contains("| PSNR ↑ (paper) | 29.712 ± 4.231 | 29.931 ± 5.767 | 27.593 ± 6.574 | 23.453 ± 6.397 | 13.586 ± 4.024 |"), "{ddrep_block}");
    assert!(ddrep_block.contains("| LPIPS ↓ (paper) | 0.044 ± 0.050"), "{ddrep_block}");
    assert!(ddrep_block.contains("PSNR ↑ (ours)"), "{ddrep_block}");
    // CFG 30 and 100 have no cells of ours: n/a beside the paper's value.
    assert!(ddrep_block.contains("| CFG 0 | CFG 3 | CFG 10 | CFG 30 | CFG 100 |"), "{ddrep_block}");
    let sjc_block = md.split("## sjc vs reference").nth(1).unwrap();
    assert!(!sjc_block.split("\n## ").next().unwrap().contains("(paper)"));
    let csv = read_csv(&report.join("table1.csv"));
    let p = csv.iter().find(|r| r["method"] == "ddrep" && r["metric"] == "ssim" && r["cfg"] == "100").unwrap();
    assert_eq!((p["paper_mean"].as_str(), p["paper_std"].as_str(), p["ours_mean"].as_str()), ("0.523000", "0.183000", ""));
    // sjc has no LPIPS in metrics.csv: n/a, not zero.
    assert!(sjc_block.contains("| LPIPS ↓ | n/a | n/a | n/a |"), "{sjc_block}");
    let tex = std::fs::read_to_string(report.join("table1.tex")).unwrap();
    assert!(tex.contains("(paper)") && tex.contains("$29.712 \\pm 4.231$"), "{tex}");
    // KID plot from kid.csv, metric plots from metrics.csv.
    check_plots(&report, &["kid_vs_cfg", "psnr_vs_cfg", "ssim_vs_cfg", "lpips_vs_cfg"]);
    // One grid per caption x seed: 4 rows x 3 CFG columns of 128-px tiles (16 px enlarged 8x).
    for ci in 0..2 {
        let g = image::open(report.join(format!("grids/grid_c{ci:03}_s0.png"))).unwrap().to_rgb8();
        assert!(g.width() > 3 * 128 && g.height() > 4 * 128, "{}x{}", g.width(), g.height());
    }
    // HTML: escaped caption, provenance, links that resolve.
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("a &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot; caption"), "caption not escaped");
    assert!(!html.contains("<b>bold</b>"));
    assert!(html.contains("0123456789ab") && html.contains("feedfacefeed") && html.contains("<td>50</td>"), "provenance missing");
    assert!(html.contains("lpips not available: sjc rows left empty in this fixture"));
    assert!(html.contains("href=\"plots/kid_vs_cfg.svg\"") && html.contains("src=\"grids/grid_c000_s0.png\""));
    assert!(!html.contains("href=\"/") && !html.contains("src=\"/"), "absolute link in index.html");
    assert_eq!(check_links(&report.join("index.html")).unwrap(), Vec::<String>::new());
    let o = ddrep(&["report", &yaml, &out, "--check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Deterministic: a second report writes the same bytes.
    let before: Vec<Vec<u8>> = ["index.html", "table1.csv", "plots/kid_vs_cfg.png", "plots/psnr_vs_cfg.svg", "grids/grid_c001_s0.png"].iter().map(|f| std::fs::read(report.join(f)).unwrap()).collect();
    assert!(ddrep(&["report", &yaml, &out]).status.success());
    let after: Vec<Vec<u8>> = ["index.html", "table1.csv", "plots/kid_vs_cfg.png", "plots/psnr_vs_cfg.svg", "grids/grid_c001_s0.png"].iter().map(|f| std::fs::read(report.join(f)).unwrap()).collect();
    assert!(before == after, "report output changed between two runs");
    // A removed image is a broken link for --check.
    std::fs::remove_file(report.join("plots/ssim_vs_cfg.svg")).unwrap();
    let o = ddrep(&["report", &yaml, &out, "--check"]);
    assert_one_line_error(&o, "1 broken links or images");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_bad_input_is_a_one_line_error() {
    let dir = tmp("errors");
    let yaml = format!("{REPO}/experiments/table1.yaml");
    let out = format!("outputs.dir={}", dir.display());
    let run = |extra: &[&str]| ddrep(&[&["report", yaml.as_str(), out.as_str()][..], extra].concat());
    // No metrics.csv yet.
    assert_one_line_error(&run(&[]), "run `ddrep score");
    let root = fake_table1(&dir, "caption");
    let good = std::fs::read_to_string(root.join("metrics.csv")).unwrap();
    let put = |s: &str| std::fs::write(root.join("metrics.csv"), s).unwrap();
    // Wrong header.
    put(&good.replacen("psnr", "pnsr", 1));
    assert_one_line_error(&run(&[]), "the header has no column 'psnr'");
    // Old format without cell ids.
    put("label,cfg,caption_index,seed,psnr,ssim\nddrep,3,0,0,30.0,0.9\n");
    assert_one_line_error(&run(&[]), "no column 'cell'");
    // A number that is not one.
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let mut f: Vec<&str> = lines[2].split(',').collect();
    f[2] = "zero";
    lines[2] = f.join(",");
    put(&(lines.join("\n") + "\n"));
    assert_one_line_error(&run(&[]), "line 3: column 'caption_index' is 'zero', not a number");
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let psnr_field = lines[1].split(',').nth(6).unwrap().to_string();
    lines[1] = lines[1].replacen(&psnr_field, "abc", 1);
    put(&(lines.join("\n") + "\n"));
    assert_one_line_error(&run(&[]), "column 'psnr' is 'abc', not a number");
    // A short row.
    put(&format!("{good}ddrep,3,0\n"));
    assert_one_line_error(&run(&[]), "3 fields but the header has 9");
    // Header only: nothing scored.
    put(&format!("{METRICS_HEADER}\n"));
    assert_one_line_error(&run(&[]), "has no scored cells");
    // An empty file.
    put("");
    assert_one_line_error(&run(&[]), "is empty");
    // inf (PSNR of identical images) is left out of the means, with a note.
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let mut f: Vec<&str> = lines[1].split(',').collect();
    f[6] = "inf";
    lines[1] = f.join(",");
    put(&(lines.join("\n") + "\n"));
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(root.join("report/index.html")).unwrap().contains("1 metric values in metrics.csv are inf or nan"));
    let t = read_csv(&root.join("report/table1.csv"));
    let r = t.iter().find(|r| r["method"] == "baseline" && r["metric"] == "psnr" && r["cfg"] == "0").unwrap();
    assert_eq!(r["n"], "1", "the inf row is not counted");
    put(&good);
    // Malformed kid.csv.
    std::fs::write(root.join("kid.csv"), "label,cfg,kid\nddrep,3,0.1\n").unwrap();
    assert_one_line_error(&run(&[]), "kid.csv: the header has no column 'kid_mean'");
    std::fs::remove_file(root.join("kid.csv")).unwrap();
    // Without kid.csv the report still works (KID not available).
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!root.join("report/plots/kid_vs_cfg.png").exists());
    // Another reference label than the one metrics.csv was scored against would mislabel it.
    assert_one_line_error(&run(&["--reference", "baseline"]), "was scored against 'reference'");
    // A report that fails half-way leaves the earlier one whole: it is built aside and swapped in.
    let index_before = std::fs::read(root.join("report/index.html")).unwrap();
    let grids_before = std::fs::read_dir(root.join("report/grids")).unwrap().count();
    let first_cell = good.lines().nth(1).unwrap().split(',').nth(4).unwrap().to_string();
    let image = root.join("cells").join(&first_cell).join("image.png");
    let png = std::fs::read(&image).unwrap();
    std::fs::write(&image, b"not a png").unwrap();
    assert_one_line_error(&run(&[]), "image.png");
    assert_eq!(std::fs::read(root.join("report/index.html")).unwrap(), index_before);
    assert_eq!(std::fs::read_dir(root.join("report/grids")).unwrap().count(), grids_before);
    let o = ddrep(&["report", yaml.as_str(), out.as_str(), "--check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let leftovers: Vec<_> = std::fs::read_dir(&root).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with(".report-")).collect();
    assert!(leftovers.is_empty(), "staging folders left: {leftovers:?}");
    // A report killed between moving the earlier one aside and moving the new one in (where
    // folders cannot be exchanged in one step) left no report/: the next run puts it back.
    std::fs::rename(root.join("report"), root.join(".report-old-4242")).unwrap();
    assert_one_line_error(&run(&[]), "image.png");
    assert_eq!(std::fs::read(root.join("report/index.html")).unwrap(), index_before);
    // Temporaries of a killed write (a process id that is not running) are swept.
    let stale = root.join(".metrics.csv.tmp-999999999");
    std::fs::write(&stale, "half").unwrap();
    std::fs::write(&image, png).unwrap();
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists() || !Path::new("/proc/self").exists(), "{} was not swept", stale.display());
    // Two reports of one grid at once: the second is told to wait, the first is unharmed.
    let lock = std::fs::File::options().write(true).open(root.join(".report.lock")).unwrap();
    lock.lock().unwrap();
    assert_one_line_error(&run(&[]), "another `ddrep report` is writing");
    drop(lock);
    // A grid that exclude empties.
    assert_one_line_error(&run(&["cfg=[3]", "exclude=[{cfg: 3}]"]), "the grid is empty");
    // Rows of metrics.csv outside the grid.
    assert_one_line_error(&run(&["cfg=[30]"]), "is a cell of this grid");
    // A cell named in metrics.csv that is not in the store.
    let first_cell = good.lines().nth(1).unwrap().split(',').nth(4).unwrap().to_string();
    std::fs::remove_dir_all(root.join("cells").join(&first_cell)).unwrap();
    assert_one_line_error(&run(&[]), "named in metrics.csv");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Text really is rasterised into the PNG: the title band of a plot with a title has dark
/// pixels, the same plot with empty texts has none there (fails on a machine without fonts).
#[test]
fn plot_text_renders_into_png() {
    let dir = tmp("text");
    let spec = |title: &str, label: &str| PlotSpec {
        title: title.into(),
        x_desc: String::new(),
        y_desc: String::new(),
        x_ticks: vec!["0".into(), "3".into()],
        series: vec![Series { label: label.into(), points: vec![Some((1.0, 0.1)), Some((2.0, 0.2))] }],
    };
    plots::write_plot(&dir.join("with"), &spec("KID vs CFG scale", "ddrep")).unwrap();
    plots::write_plot(&dir.join("without"), &spec("", "")).unwrap();
    let dark_in_title = |p: &Path| {
        let img = image::open(p).unwrap().to_luma8();
        (0..img.width()).flat_map(|x| (0..40).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y)[0] < 128).count()
    };
    let (with, without) = (dark_in_title(&dir.join("with.png")), dark_in_title(&dir.join("without.png")));
    assert!(with > 100, "title band has only {with} dark pixels: no text rendered (fonts missing?)");
    assert_eq!(without, 0, "title band without a title has {without} dark pixels");
    let svg = std::fs::read_to_string(dir.join("with.svg")).unwrap();
    assert!(svg.contains("KID vs CFG scale"), "title missing from the SVG");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn link_checker_reports_missing_and_absolute_links() {
    let dir = tmp("links");
    std::fs::create_dir_all(dir.join("plots")).unwrap();
    std::fs::write(dir.join("plots/a b.png"), b"x").unwrap();
    std::fs::write(dir.join("t&1.md"), b"x").unwrap();
    let html = r##"<html><body><a href="plots/a%20b.png">ok</a> <img src='plots/a b.png'> <a href="t&amp;1.md#x">ok</a>
<a href="https://example.org/">ext</a> <a href="#cells">anchor</a> <img src="data:image/png;base64,AAAA">
<img src="plots/missing.png"> <a href="/etc/passwd">abs</a> <a href=../nope.html>bare</a></body></html>"##;
    std::fs::write(dir.join("index.html"), html).unwrap();
    let bad = check_links(&dir.join("index.html")).unwrap();
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad.iter().any(|b| b.starts_with("plots/missing.png")));
    assert!(bad.iter().any(|b| b.starts_with("/etc/passwd: not a relative link")));
    assert!(bad.iter().any(|b| b.starts_with("../nope.html")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The whole pipeline on a real (tiny) analytic grid: run, score, report.
#[test]
fn report_on_a_scored_analytic_grid() {
    let dir = tmp("grid");
    let yaml = format!("{REPO}/experiments/demo_table1.yaml");
    let out = format!("outputs.dir={}", dir.display());
    let ov: Vec<&str> = vec![&yaml, &out, "cfg=[0,3]", "seeds=0..1", "methods.3.iters=100"];
    let o = ddrep(&[&["run"][..], &ov[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    // Report before scoring: says what to do.
    assert_one_line_error(&ddrep(&[&["report"][..], &ov[..]].concat()), "run `ddrep score");
    let o = ddrep(&[&["score"][..], &ov[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let root = dir.join("demo_table1");
    let metrics = std::fs::read_to_string(root.join("metrics.csv")).unwrap();
    assert!(metrics.starts_with(METRICS_HEADER), "metrics.csv header: {}", metrics.lines().next().unwrap_or(""));
    // The grid asks for psnr and ssim only, so score writes kid.csv's header alone; put
    // stand-in KID values there (this test checks the plotting; tests/report_score_kid.rs
    // checks KID itself).
    let kid = std::fs::read_to_string(root.join("kid.csv")).unwrap();
    if kid.lines().count() <= 1 {
        let mut s = format!("{KID_HEADER}\n");
        for (i, l) in ["ddrep", "sjc", "reference"].iter().enumerate() {
            for cfg in [0, 3] {
                s.push_str(&format!("{l},{cfg},3,3,3,10,{:.4},{:.4}\n", 0.01 * (i as f64 + 1.0) + 0.002 * cfg as f64, 0.003));
            }
        }
        std::fs::write(root.join("kid.csv"), s).unwrap();
    }
    let o = ddrep(&[&["report"][..], &ov[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    check_table_against_metrics(&root, "reference");
    let report = root.join("report");
    let md = std::fs::read_to_string(report.join("table1.md")).unwrap();
    assert!(!md.contains("(paper)"), "paper values only for table1");
    check_plots(&report, &["kid_vs_cfg", "psnr_vs_cfg", "ssim_vs_cfg"]);
    // 3 captions x 1 seed grids of 4 methods x 2 CFG, 32-px cells enlarged to 128 px.
    for ci in 0..3 {
        let g = image::open(report.join(format!("grids/grid_c{ci:03}_s0.png"))).unwrap().to_rgb8();
        assert!(g.width() >= 2 * 128 && g.height() >= 4 * 128, "{}x{}", g.width(), g.height());
    }
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    // Every cell of the grid with its provenance from cell.json.
    let ids: Vec<String> = std::fs::read_dir(root.join("cells")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(ids.len(), 24);
    for id in &ids {
        assert!(html.contains(&format!("href=\"../cells/{id}/cell.json\"")), "cell {id} missing from index.html");
        let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("cells").join(id).join("cell.json")).unwrap()).unwrap();
        let commit = rec["git_commit"].as_str().unwrap();
        assert!(html.contains(&commit[..commit.len().min(12)]));
    }
    assert_eq!(check_links(&report.join("index.html")).unwrap(), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}
