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

    // Sampling again into the folder (one seed, a method without params) leaves no output of
    // the earlier run beside the new record; files sample did not write stay.
    std::fs::write(a.join("notes.txt"), "mine").unwrap();
    let o = sample("reference", &a, &["--num-samples", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut names: Vec<String> = std::fs::read_dir(&a).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["notes.txt", "output.safetensors", "record.json", "sample_seed5.png"]);
    std::fs::remove_dir_all(&a).ok();
    std::fs::remove_dir_all(&b).ok();
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

/// Sizes that would not fit in memory are one-line errors before any work, not allocation
/// aborts; so are other values that used to be accepted silently.
#[test]
fn oversized_and_silent_inputs_are_refused() {
    let d = tmp("limits");
    assert_one_line_error(&sample("ddrep", &d, &["--num-samples", "100000000"]), "--num-samples is 100000000; at most 10000");
    assert_one_line_error(&sample("ddrep", &d, &["--steps", "1000000000"]), "1000000000 DDIM steps exceed the 1000 training timesteps");
    assert_one_line_error(&sample("ddrep", &d, &["--repaint", "3,1000000000"]), "more than 10000000 moves");
    assert_one_line_error(&sample("ddrep", &d, &["--analytic-shape", "100000,100000,100000"]), "channels is 100000; at most 64");
    assert_one_line_error(&sample("ddrep", &d, &["--width", "100000"]), "siren.width is 100000; at most 8192");
    // Sample k uses seed + k: the last seed must not wrap around to 0.
    let mut args = vec!["sample", "--prompt", "p", "--out", d.to_str().unwrap()];
    args.extend(SMALL);
    args.extend(["--seed", "18446744073709551615"]);
    assert_one_line_error(&ddrep(&args), "runs past the largest seed");
    assert!(!d.exists(), "a failed run created {}", d.display());
    // A huge CFG scale overflows f32 in the pulled-back target: refused, not fitted as zeros.
    assert_one_line_error(&sample("ddrep", &d, &["--cfg=1e38"]), "non-finite residual after the least-squares fit at step 0");

    let demo = tmp("demo-limits");
    assert_one_line_error(&ddrep(&["demo", "--seeds", "100000000", "--out", demo.to_str().unwrap()]), "--seeds is 100000000; at most 1000");
    assert_one_line_error(&ddrep(&["demo", "--grid", "/nonexistent/grid.yaml", "--out", demo.to_str().unwrap()]), "--grid /nonexistent/grid.yaml: no such file");
    assert!(!demo.exists(), "a failed demo created {}", demo.display());
    assert_one_line_error(&ddrep(&["bench", "siren", "--sirens", "100000"]), "--sirens is 100000; at most 10000");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd15_tiny");
    for tol in ["nan", "-1", "0"] {
        assert_one_line_error(&ddrep(&["parity", "--fixtures", fixtures.to_str().unwrap(), &format!("--tol={tol}")]), "--tol must be a positive number");
    }
    let grid = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/demo_table1.yaml");
    let out = tmp("slurm");
    let slurm = |extra: &[&str]| {
        let mut a = vec!["slurm", grid.to_str().unwrap()];
        a.extend(extra);
        let o = format!("--out={}", out.join("x.sbatch").display());
        a.push(&o);
        ddrep(&a)
    };
    assert_one_line_error(&slurm(&["--array", "18446744073709551615"]), "--array is 18446744073709551615; at most 200000");
    assert_one_line_error(&slurm(&["--array", "2", "--sbatch=--partition=gpu\nrm -rf /tmp/x"]), "on one line");
    assert!(!out.exists(), "a refused slurm call wrote {}", out.display());
}

/// `ddrep ... | head` closes the pipe early: the process ends as Unix tools do (SIGPIPE), with
/// no panic message about a failed print.
#[cfg(unix)]
#[test]
fn closed_stdout_pipe_is_not_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let grid = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/demo_table1.yaml");
    let out = format!("outputs.dir={}", tmp("pipe").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ddrep"))
        .args(["run", "--dry-run", grid.to_str().unwrap(), &out])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ddrep");
    // Close the read end before ddrep prints its plan.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(o.status.success() || o.status.signal() == Some(13), "{:?}: {err}", o.status);
}

/// `compare` reads JPEG as its help says, and identical images (PSNR = inf) are left out of
/// the mean with a note instead of printing `inf ± NaN`.
#[test]
fn compare_reads_jpeg_and_handles_identical_images() {
    let d = tmp("jpeg");
    std::fs::create_dir_all(&d).unwrap();
    let img = image::RgbImage::from_fn(48, 48, |x, y| image::Rgb([(x * 5) as u8, (y * 5) as u8, 128]));
    let (png, jpg) = (d.join("a.png"), d.join("a.jpg"));
    img.save(&png).unwrap();
    img.save(&jpg).unwrap();
    let o = ddrep(&["compare", png.to_str().unwrap(), jpg.to_str().unwrap(), "--metrics", "psnr,ssim"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let psnr: f64 = out.lines().find(|l| l.starts_with("| psnr |")).and_then(|l| l.split('|').nth(2)).and_then(|c| c.split('±').next()).unwrap().trim().parse().unwrap();
    assert!(psnr > 30.0 && psnr.is_finite(), "JPEG round trip PSNR {psnr}: {out}");
    let o = ddrep(&["compare", png.to_str().unwrap(), png.to_str().unwrap(), "--metrics", "psnr"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("| psnr | n/a (1 inf or nan left out) | 1 |"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A `compare` that fails part way (here at the second pair, of another size) says so on
/// stderr in one line and prints no half table on stdout for a script to read as results.
#[test]
fn compare_error_prints_no_half_table() {
    let d = tmp("compare-sizes");
    let (a, b) = (d.join("a"), d.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let img = |w: u32| image::RgbImage::from_fn(w, 32, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, 40]));
    img(32).save(a.join("0.png")).unwrap();
    img(32).save(b.join("0.png")).unwrap();
    img(32).save(a.join("1.png")).unwrap();
    img(40).save(b.join("1.png")).unwrap();
    let o = ddrep(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_one_line_error(&o, "paired images must have the same size");
    assert!(o.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&o.stdout));
    let _ = std::fs::remove_dir_all(&d);
}
