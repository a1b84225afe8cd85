//! `ddrep score` with LPIPS and KID on a finished analytic-prior grid, using the fixture weight
//! rule (random AlexNet trunk and Inception-v3, written to safetensors files here) and LPIPS heads
//! of ones (or the real v0.1 heads from `$DDREP_SHARED/lpips/alex_v0.1.pth` when it is set):
//! the per-cell LPIPS and per-set KID equal the library's, the Parquet files hold the CSV's
//! values, features are cached across runs (and bad cache files recomputed), weights not given
//! leave the other metrics running, a named file that is missing stops the run with earlier
//! outputs untouched, and bad input is a one-line error.

mod common;
mod metrics_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ddrep::backend::Cpu;
use ddrep::metrics::lpips::ALEX_CHANNELS;
use ddrep::metrics::{self, FeatureMatrix, ImageBatch, InceptionV3, KidConfig, Lpips, ResizeMode};
use metrics_support::*;
use polars::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

const ALL: &str = "metrics=[psnr,ssim,lpips,kid]";

struct Weights {
    trunk: PathBuf,
    heads: PathBuf,
    inception: PathBuf,
}

fn write_store(path: &Path, tensors: Vec<(String, Vec<usize>, Vec<f32>)>) {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> = tensors.iter().zip(&bytes).map(|((n, s, _), b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn rule_tensors(section: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let store = rule_store(section);
    let rule = load_json("weights_rule.json");
    rule[section]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap();
            let shape: Vec<usize> = t["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            let data = store.get(name, &shape).unwrap().data.clone();
            (name.to_string(), shape, data)
        })
        .collect()
}

/// The weight files, written once per test binary.
fn weights() -> &'static Weights {
    static W: OnceLock<Weights> = OnceLock::new();
    W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ddrep-score-kid-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let trunk = dir.join("alexnet_rule.safetensors");
        write_store(&trunk, rule_tensors("alexnet"));
        let inception = dir.join("inception_rule.safetensors");
        write_store(&inception, rule_tensors("inception"));
        let heads = match std::env::var_os("DDREP_SHARED").map(|d| PathBuf::from(d).join("lpips/alex_v0.1.pth")) {
            Some(p) if p.is_file() => p,
            _ => {
                println!("LPIPS heads: ones (DDREP_SHARED not set, real v0.1 heads skipped)");
                let h = dir.join("heads_ones.safetensors");
                write_store(&h, ALEX_CHANNELS.iter().enumerate().map(|(k, &c)| (format!("lin{k}.model.1.weight"), vec![1, c, 1, 1], vec![1.0; c])).collect());
                h
            }
        };
        Weights { trunk, heads, inception }
    })
}

/// `ddrep ARGS` with the weight environment cleared, then `env` set.
fn ddrep(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ddrep"));
    c.args(args).env_remove("DDREP_LPIPS_TRUNK").env_remove("DDREP_LPIPS_HEADS").env_remove("DDREP_INCEPTION");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run ddrep")
}

fn all_weights() -> Vec<(&'static str, &'static Path)> {
    let w = weights();
    vec![("DDREP_LPIPS_TRUNK", w.trunk.as_path()), ("DDREP_LPIPS_HEADS", w.heads.as_path()), ("DDREP_INCEPTION", w.inception.as_path())]
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the tiny grid (1 CFG x 3 captions x 1 seed x 4 methods) into a fresh folder.
fn grid(tag: &str) -> (PathBuf, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("ddrep-score-kid-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let yaml = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/demo_table1.yaml");
    let ov = vec![yaml.to_string(), format!("outputs.dir={}", dir.display()), "cfg=[3]".into(), "seeds=0..1".into(), ALL.into()];
    let args: Vec<&str> = std::iter::once("run").chain(ov.iter().map(|s| s.as_str())).collect();
    let o = ddrep(&args, &[]);
    assert!(o.status.success(), "{}", err(&o));
    (dir, ov)
}

fn score(ov: &[String], extra: &[&str], env: &[(&str, &Path)]) -> Output {
    let args: Vec<&str> = std::iter::once("score").chain(ov.iter().map(|s| s.as_str())).chain(extra.iter().copied()).collect();
    ddrep(&args, env)
}

fn read_csv(p: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut lines = s.lines();
    let header = lines.next().unwrap().split(',').map(String::from).collect();
    (header, lines.map(|l| l.split(',').map(String::from).collect()).collect())
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn unit(p: &Path) -> (Vec<f32>, Vec<u8>, [usize; 3]) {
    let img = image::open(p).unwrap().to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut bytes = vec![0u8; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            bytes[c * h * w + i] = px[c];
        }
    }
    (bytes.iter().map(|&b| b as f32 / 255.0).collect(), bytes, [3, h, w])
}

/// Label of each finished cell.
fn cell_labels(root: &Path) -> HashMap<String, String> {
    std::fs::read_dir(root.join("cells"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let id = p.file_name().unwrap().to_string_lossy().into_owned();
            (id, json(&p.join("cell.json"))["label"].as_str().unwrap().to_string())
        })
        .collect()
}

fn names(df: &DataFrame) -> Vec<&str> {
    df.get_column_names().into_iter().map(|s| s.as_str()).collect()
}

fn parquet(p: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(p).unwrap()).finish().unwrap()
}

#[test]
fn score_lpips_kid_cache_parquet_and_unavailable_weights() {
    let w = weights();
    let (dir, ov) = grid("main");
    let root = dir.join("demo_table1");
    let o = score(&ov, &[], &all_weights());
    assert!(o.status.success(), "{}", err(&o));

    // metrics.csv: the contract's header, one row per non-reference cell, every metric filled.
    let (h, rows) = read_csv(&root.join("metrics.csv"));
    assert_eq!(h.join(","), "label,cfg,caption_index,seed,cell,reference_cell,psnr,ssim,lpips");
    assert_eq!(rows.len(), 9);
    // LPIPS equals the library's on the same pair of PNGs.
    let dev = Default::default();
    let lp = Lpips::<Cpu>::from_files(&w.trunk, &w.heads, &dev).unwrap();
    let cells = root.join("cells");
    for r in &rows {
        for k in 6..9 {
            assert!(r[k].split('.').nth(1).map(|d| d.len()) == Some(6), "6 decimals: {r:?}");
        }
        let (a, _, sa) = unit(&cells.join(&r[4]).join("image.png"));
        let (b, _, sb) = unit(&cells.join(&r[5]).join("image.png"));
        let d = lp.distance(&ImageBatch::single("a", &a, sa).unwrap(), &ImageBatch::single("b", &b, sb).unwrap(), true, &dev).unwrap().distance[0] as f64;
        let got: f64 = r[8].parse().unwrap();
        assert!((got - d).abs() <= 1e-6, "lpips {got} vs library {d} for {r:?}");
    }

    // `ddrep compare` (same weight flags, shared with score) agrees on one pair.
    let (pa, pb) = (cells.join(&rows[0][4]).join("image.png"), cells.join(&rows[0][5]).join("image.png"));
    let (pa, pb) = (pa.to_str().unwrap(), pb.to_str().unwrap());
    let oc = ddrep(&["compare", pa, pb, "--metrics", "lpips", "--lpips-trunk", w.trunk.to_str().unwrap(), "--lpips-heads", w.heads.to_str().unwrap()], &[]);
    assert!(oc.status.success(), "{}", err(&oc));
    let out = String::from_utf8_lossy(&oc.stdout);
    let line = out.lines().find(|l| l.starts_with("| lpips |")).unwrap_or_else(|| panic!("{out}"));
    let shown: f64 = line.split('|').nth(2).unwrap().split('±').next().unwrap().trim().parse().unwrap();
    assert!((shown - rows[0][8].parse::<f64>().unwrap()).abs() <= 5.1e-5, "compare {line} vs score {}", rows[0][8]);
    // A named but missing weight file is an error in compare (unavailable only when none is given).
    let oc = ddrep(&["compare", pa, pb, "--metrics", "kid", "--inception", "/nonexistent/inception.safetensors"], &[]);
    assert!(!oc.status.success() && err(&oc).contains("/nonexistent/inception.safetensors") && err(&oc).contains("DDREP_INCEPTION"), "{}", err(&oc));

    // kid.csv: reference, ddrep and sjc vs baseline at CFG 3, subset size capped at 3.
    let (h, krows) = read_csv(&root.join("kid.csv"));
    assert_eq!(h.join(","), "label,cfg,n,n_baseline,subset_size,subsets,kid_mean,kid_std");
    let mut labels: Vec<&str> = krows.iter().map(|r| r[0].as_str()).collect();
    labels.sort();
    assert_eq!(labels, ["ddrep", "reference", "sjc"]);
    let by_label = cell_labels(&root);
    let ids = |label: &str| -> Vec<String> {
        let mut v: Vec<String> = rows.iter().filter(|r| r[0] == label).map(|r| r[4].clone()).collect();
        if label == "reference" {
            v = rows.iter().filter(|r| r[0] == "ddrep").map(|r| r[5].clone()).collect();
        }
        assert!(v.iter().all(|id| by_label[id] == label));
        v
    };
    let net = InceptionV3::<Cpu>::from_file(&w.inception, &dev).unwrap();
    let feats = |ids: &[String]| -> FeatureMatrix {
        let imgs: Vec<_> = ids.iter().map(|id| unit(&cells.join(id).join("image.png"))).collect();
        let bytes: Vec<u8> = imgs.iter().flat_map(|i| i.1.iter().copied()).collect();
        let s = imgs[0].2;
        net.pool_features(&bytes, [imgs.len(), 3, s[1], s[2]], ResizeMode::Torchmetrics, 16, &dev).unwrap()
    };
    let fbase = feats(&ids("baseline"));
    let kdf = parquet(&root.join("kid.parquet"));
    assert_eq!(names(&kdf), ["label", "cfg", "n", "n_baseline", "subset_size", "subsets", "kid_mean", "kid_std"]);
    for r in &krows {
        assert_eq!(&r[1..6], ["3", "3", "3", "3", "100"], "{r:?}");
        // The library's KID of the same PNGs' features (here in batches of one set).
        let f = feats(&ids(&r[0]));
        let want = metrics::kid(&fbase, &f, &KidConfig { subset_size: 3, ..Default::default() }).unwrap();
        let (m, s): (f64, f64) = (r[6].parse().unwrap(), r[7].parse().unwrap());
        let tol = 1e-6 + 1e-5 * want.mean.abs().max(want.std.abs());
        assert!((m - want.mean).abs() <= tol && (s - want.std).abs() <= tol, "kid {m} ± {s} vs library {} ± {} ({r:?})", want.mean, want.std);
        // Parquet holds the same row at full precision.
        let i = (0..kdf.height()).find(|&i| kdf.column("label").unwrap().str().unwrap().get(i) == Some(r[0].as_str())).unwrap();
        let pm = kdf.column("kid_mean").unwrap().f64().unwrap().get(i).unwrap();
        assert!((pm - m).abs() <= 5e-7 * (1.0 + m.abs()), "parquet {pm} vs csv {m}");
        assert_eq!(kdf.column("subset_size").unwrap().u64().unwrap().get(i), Some(3));
    }
    // metrics.parquet: the CSV's rows.
    let mdf = parquet(&root.join("metrics.parquet"));
    assert_eq!(names(&mdf), ["label", "cfg", "caption_index", "seed", "cell", "reference_cell", "psnr", "ssim", "lpips"]);
    assert_eq!(mdf.height(), rows.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(mdf.column("cell").unwrap().str().unwrap().get(i), Some(r[4].as_str()));
        assert_eq!(mdf.column("seed").unwrap().u64().unwrap().get(i), Some(r[3].parse().unwrap()));
        for (k, name) in [(6, "psnr"), (7, "ssim"), (8, "lpips")] {
            let v = mdf.column(name).unwrap().f64().unwrap().get(i).unwrap();
            assert_eq!(format!("{v:.6}"), r[k], "{name} row {i}");
        }
    }
    let table = std::fs::read_to_string(root.join("table1.md")).unwrap();
    assert!(table.contains("| LPIPS |") && table.contains("KID vs baseline"), "{table}");
    let s = json(&root.join("score.json"));
    assert_eq!((s["features_computed"].as_u64(), s["features_cached"].as_u64()), (Some(12), Some(0)), "{s}");
    assert_eq!(s["unavailable"].as_array().unwrap().len(), 0);
    assert_eq!(s["metrics_requested"], serde_json::json!(["psnr", "ssim", "lpips", "kid"]));
    assert_eq!((s["reference"].as_str(), s["baseline"].as_str()), (Some("reference"), Some("baseline")));
    assert_eq!(s["kid"]["subset_size_clamped"], true);
    assert!(err(&o).contains("KID subset size 1000"), "{}", err(&o));

    // A second run reads every feature from the cache and gives the same KID.
    let kid_first = std::fs::read_to_string(root.join("kid.csv")).unwrap();
    let o = score(&ov, &[], &all_weights());
    assert!(o.status.success(), "{}", err(&o));
    let s = json(&root.join("score.json"));
    assert_eq!((s["features_computed"].as_u64(), s["features_cached"].as_u64()), (Some(0), Some(12)), "{s}");
    assert_eq!(std::fs::read_to_string(root.join("kid.csv")).unwrap(), kid_first);

    // A corrupted cache file and one of the wrong dimension are recomputed with a notice.
    let fdir = root.join("features");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&fdir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 12);
    let sha = ddrep::models::sd15::sha256_cached(&w.inception).unwrap();
    assert!(files.iter().all(|f| f.to_string_lossy().ends_with(&format!(".{}.safetensors", &sha[..12]))), "{files:?}");
    std::fs::write(&files[0], b"not a safetensors file").unwrap();
    write_store(&files[1], vec![("pool".into(), vec![10], vec![0.5; 10])]);
    let o = score(&ov, &[], &all_weights());
    assert!(o.status.success(), "{}", err(&o));
    let s = json(&root.join("score.json"));
    assert_eq!((s["features_computed"].as_u64(), s["features_cached"].as_u64(), s["features_invalid_cache"].as_u64()), (Some(2), Some(10), Some(2)), "{s}");
    let e = err(&o);
    assert!(e.contains(&files[0].display().to_string()) && e.contains(&files[1].display().to_string()) && e.contains("recomputing"), "{e}");
    assert_eq!(std::fs::read_to_string(root.join("kid.csv")).unwrap(), kid_first);

    // A named but missing weight file stops score before it writes: earlier outputs stay.
    let gone = dir.join("no_such_inception.safetensors");
    let before: Vec<Vec<u8>> = ["metrics.csv", "kid.csv", "score.json"].iter().map(|f| std::fs::read(root.join(f)).unwrap()).collect();
    let o = score(&ov, &[], &[("DDREP_LPIPS_TRUNK", w.trunk.as_path()), ("DDREP_LPIPS_HEADS", w.heads.as_path()), ("DDREP_INCEPTION", gone.as_path())]);
    assert!(!o.status.success(), "{}", err(&o));
    common::assert_one_line_error(&o, &gone.display().to_string());
    assert!(err(&o).contains("DDREP_INCEPTION"), "{}", err(&o));
    let after: Vec<Vec<u8>> = ["metrics.csv", "kid.csv", "score.json"].iter().map(|f| std::fs::read(root.join(f)).unwrap()).collect();
    assert!(before == after, "a refused score changed earlier outputs");

    // No weights given: LPIPS and KID are reported unavailable, PSNR/SSIM still run, exit 0.
    let o = score(&ov, &[], &[]);
    assert!(o.status.success(), "{}", err(&o));
    let s = json(&root.join("score.json"));
    let un = s["unavailable"].as_array().unwrap();
    assert_eq!(un.len(), 2, "{s}");
    let (l, k) = (&un[0], &un[1]);
    assert_eq!((l["metric"].as_str(), k["metric"].as_str()), (Some("lpips"), Some("kid")));
    assert!(l["supply"].as_str().unwrap().contains("DDREP_LPIPS_TRUNK") && l["supply"].as_str().unwrap().contains("--lpips-trunk"), "{l}");
    assert!(k["reason"].as_str().unwrap().contains("no Inception file given") && k["supply"].as_str().unwrap().contains("DDREP_INCEPTION"), "{k}");
    assert_eq!(s["metrics_computed"], serde_json::json!(["psnr", "ssim"]));
    assert!(err(&o).contains("lpips unavailable") && err(&o).contains("kid unavailable"), "{}", err(&o));
    let (_, rows) = read_csv(&root.join("metrics.csv"));
    assert!(rows.iter().all(|r| !r[6].is_empty() && !r[7].is_empty() && r[8].is_empty()), "{rows:?}");
    assert!(parquet(&root.join("metrics.parquet")).column("lpips").unwrap().null_count() == 9);
    let (_, krows) = read_csv(&root.join("kid.csv"));
    assert!(krows.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn score_bad_input_is_a_one_line_error() {
    let (dir, ov) = grid("bad");
    let root = dir.join("demo_table1");
    let one_line = |o: &Output, want: &str| {
        let e = err(o);
        assert!(!o.status.success(), "expected failure: {e}");
        assert!(e.contains(want) && e.trim_end().lines().count() == 1 && !e.contains("panicked"), "want one line with '{want}': {e}");
    };
    // An unknown baseline label with KID requested.
    let o = score(&ov, &["--baseline", "nosuch"], &all_weights());
    one_line(&o, "no method labelled 'nosuch'");
    assert!(!root.join("metrics.csv").exists());

    // No finished baseline cells to compute KID against.
    let labels = cell_labels(&root);
    let parked = dir.join("parked");
    std::fs::create_dir_all(&parked).unwrap();
    let base: Vec<&String> = labels.iter().filter(|(_, l)| *l == "baseline").map(|(id, _)| id).collect();
    assert_eq!(base.len(), 3);
    for id in &base {
        std::fs::rename(root.join("cells").join(id), parked.join(id)).unwrap();
    }
    let o = score(&ov, &[], &all_weights());
    one_line(&o, "no finished 'baseline' cells");
    assert!(!root.join("metrics.csv").exists());
    for id in &base {
        std::fs::rename(parked.join(id), root.join("cells").join(id)).unwrap();
    }

    // A pair of different sizes; earlier outputs are left as they were.
    let o = score(&ov, &[], &all_weights());
    assert!(o.status.success(), "{}", err(&o));
    let before = std::fs::read(root.join("metrics.csv")).unwrap();
    let ddrep_cell = labels.iter().find(|(_, l)| *l == "ddrep").unwrap().0;
    let cell = root.join("cells").join(ddrep_cell);
    image::RgbImage::new(16, 16).save(cell.join("image.png")).unwrap();
    // The cell's record holds the image's sha256: the changed image is refused by path.
    let o = score(&ov, &[], &all_weights());
    one_line(&o, "image.png differs from the sha256 its cell.json records");
    assert_eq!(std::fs::read(root.join("metrics.csv")).unwrap(), before);
    // A cell from before hashes were recorded reaches the size check.
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(cell.join("cell.json")).unwrap()).unwrap();
    rec.as_object_mut().unwrap().remove("files_sha256").unwrap();
    std::fs::write(cell.join("cell.json"), serde_json::to_vec_pretty(&rec).unwrap()).unwrap();
    let o = score(&ov, &[], &all_weights());
    one_line(&o, "paired images must have the same size");
    assert_eq!(std::fs::read(root.join("metrics.csv")).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
