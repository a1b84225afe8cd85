//! The `ddrep` binary: determinism of `sample`, and one-line errors for bad input.

mod common;
use std::path::Path;
use std::process::{Command, Output};
use common::assert_one_line_error;

fn ddrep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddrep")).args(args).output().expect("run ddrep")
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ddrep-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const SMALL: [&str; 12] = ["--steps", "4", "--solver-steps", "5", "--width", "16", "--depth", "1", "--embedding", "16", "--num-samples", "2"];

fn sample(method: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["sample", "--method", method, "--prompt", "a red fox in fresh snow", "--cfg", "3", "--seed", "5", "--out", out.to_str().unwrap()];
    args.extend(SMALL);
    args.extend(extra);
    ddrep(&args)
}

#[test]
fn same_command_and_seed_give_identical_files() {
    let (a, b) = (tmp("det-a"), tmp("det-b"));
    for d in [&a, &b] {
        let o = sample("ddrep", d, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for f in ["sample_seed5.png", "sample_seed6.png", "output.safetensors", "params.safetensors"] {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f} differs between two identical runs");
    }
    // The two samples differ from each other (different seeds).
    assert_ne!(std::fs::read(a.join("sample_seed5.png")).unwrap(), std::fs::read(a.join("sample_seed6.png")).unwrap());
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("record.json")).unwrap()).unwrap();
    assert_eq!(rec["seeds"], serde_json::json!([5, 6]));
    assert_eq!(rec["nfe"], 4);
    assert!(rec["model"].as_str().unwrap().starts_with("embedded analytic prior"));
    assert_eq!(rec["method"]["method"], "ddrep");
    assert_eq!(rec["diagnostics"].as_array().unwrap().len(), 4);
}

#[test]
fn every_method_runs_from_the_command_line() {
    for (m, nfe) in [("reference", 4), ("sjc", 6), ("sds", 6)] {
        let d = tmp(m);
        let o = sample(m, &d, &["--iters", "6"]);
        assert!(o.status.success(), "{m}: {}", String::from_utf8_lossy(&o.stderr));
        let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("record.json")).unwrap()).unwrap();
        assert_eq!(rec["nfe"], nfe, "{m}");
        assert!(d.join("sample_seed6.png").is_file());
    }
}

#[test]
fn bad_input_gives_one_line_errors() {
    let d = tmp("bad");
    assert_one_line_error(&sample("dreamfusion", &d, &[]), "unknown method 'dreamfusion'");
    assert_one_line_error(&sample("ddrep", &d, &["--diffrep", "gaussians"]), "unknown diffrep 'gaussians'");
    for cfg in ["nan", "inf", "-inf"] {
        let flag = format!("--cfg={cfg}");
        let mut args = vec!["sample", "--prompt", "p", "--out", d.to_str().unwrap(), &flag];
        args.extend(SMALL);
        assert_one_line_error(&ddrep(&args), "--cfg must be a finite number");
    }
    assert_one_line_error(&sample("ddrep", &d, &["--steps", "0"]), "--steps must be at least 1");
    assert_one_line_error(&sample("ddrep", &d, &["--eta", "1.5"]), "eta must be in [0, 1]");
    assert_one_line_error(&sample("ddrep", &d, &["--model", "sd3"]), "unknown model 'sd3'");
    assert_one_line_error(&sample("ddrep", &d, &["--model", "sd15"]), "--model sd15 needs --weights DIR");
    assert_one_line_error(&sample("ddrep", &d, &["--model", "sd15", "--weights", "/nonexistent"]), "model_index.json is missing");
    assert_one_line_error(&sample("ddrep", &d, &["--device", "tpu"]), "unknown or unavailable device 'tpu'");
    // Nothing was written by the failed runs.
    assert!(!d.exists(), "a failed run created {}", d.display());
    // An output path that is a file.
    let f = tmp("file");
    std::fs::write(&f, b"keep me").unwrap();
    assert_one_line_error(&sample("ddrep", &f, &[]), "is not a directory");
    assert_eq!(std::fs::read(&f).unwrap(), b"keep me");
    assert_one_line_error(&ddrep(&["demo", "--seeds", "0", "--out", tmp("demo0").to_str().unwrap()]), "--seeds must be at least 1");
    assert_one_line_error(&ddrep(&["bench", "nerf"]), "unknown benchmark 'nerf'");
    assert_one_line_error(&ddrep(&["bench", "unet", "--tiny-only", "--full-only"]), "leave nothing to time");
    // Unknown GPU kernel switches stop any command at start, on any device.
    for var in ["DDREP_GPU_CONV", "DDREP_GPU_ATTENTION", "DDREP_GPU_MATMUL", "DDREP_GPU_OPS"] {
        let o = Command::new(env!("CARGO_BIN_EXE_ddrep")).env(var, "fast").args(["bench", "siren"]).output().expect("run ddrep");
        assert_one_line_error(&o, &format!("{var}=\"fast\": expected"));
    }
    assert_one_line_error(&ddrep(&["sample", "--bogus"]), "unexpected argument");
}
