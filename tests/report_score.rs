//! `ddrep score` on a finished analytic-prior grid: the per-cell CSV and the Table 1 layout
//! agree, and DDRep is close to the reference while SJC and the baseline seed are not.

use std::process::Command;

fn ddrep(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ddrep")).args(args).output().expect("run ddrep")
}

#[test]
fn score_writes_table1_consistent_with_the_cells() {
    let dir = std::env::temp_dir().join(format!("ddrep-score-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let yaml = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/demo_table1.yaml");
    let out = format!("outputs.dir={}", dir.display());
    let ov = [yaml, out.as_str(), "cfg=[3]", "seeds=0..1"];
    // Scoring before the grid has run is an error, not a panic.
    let o = ddrep(&[&["score"][..], &ov[..]].concat());
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("run the grid first"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ddrep(&[&["run"][..], &ov[..]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ddrep(&[&["score"][..], &ov[..]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = dir.join("demo_table1");
    let csv = std::fs::read_to_string(root.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("label,cfg,caption_index,seed,cell,reference_cell,psnr,ssim,lpips"));
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    // baseline, ddrep, sjc x 1 CFG x 3 captions x 1 seed.
    assert_eq!(rows.len(), 9, "{csv}");
    let psnr = |label: &str| -> Vec<f64> { rows.iter().filter(|r| r[0] == label).map(|r| r[6].parse().unwrap()).collect() };
    let (d, s, b) = (psnr("ddrep"), psnr("sjc"), psnr("baseline"));
    assert!(d.iter().all(|&p| p >= 25.0), "ddrep {d:?}");
    assert!(s.iter().chain(&b).all(|&p| p < 25.0), "sjc {s:?} baseline {b:?}");
    // The table's DDRep PSNR is the mean ± population std of the CSV rows.
    let m = d.iter().sum::<f64>() / 3.0;
    let sd = (d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 3.0).sqrt();
    let table = std::fs::read_to_string(root.join("table1.md")).unwrap();
    let block = table.split("ddrep vs reference").nth(1).unwrap();
    let want = format!("| PSNR | {m:.3} ± {sd:.3} |");
    assert!(block.contains(&want), "{want} not in {block}");
    // Only the YAML's metrics (psnr, ssim) are computed: no LPIPS column values, no KID sets.
    assert!(rows.iter().all(|r| r[8].is_empty()) && !table.contains("LPIPS"), "{csv}");
    assert_eq!(std::fs::read_to_string(root.join("kid.csv")).unwrap().trim_end(), "label,cfg,n,n_baseline,subset_size,subsets,kid_mean,kid_std");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("score.json")).unwrap()).unwrap();
    assert_eq!(s["metrics_requested"], serde_json::json!(["psnr", "ssim"]));
    assert_eq!(s["features_computed"], 0);

    // An image changed after its cell was written is refused by name, earlier outputs kept.
    let img = root.join("cells").join(rows[0][4]).join("image.png");
    let mut bytes = std::fs::read(&img).unwrap();
    let i = bytes.len() - 20;
    bytes[i] ^= 0x55;
    std::fs::write(&img, &bytes).unwrap();
    let o = ddrep(&[&["score"][..], &ov[..]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.trim_end().lines().count() == 1, "{err}");
    assert!(err.contains(&img.display().to_string()) && err.contains("differs from the sha256 its cell.json records") && err.contains("--verify"), "{err}");
    assert_eq!(std::fs::read_to_string(root.join("metrics.csv")).unwrap(), csv);
    let _ = std::fs::remove_dir_all(&dir);
}
