//! The results store end to end through the `ddrep` binary: kill -9 at random moments then
//! resume (no partial cells, bytes equal to an uninterrupted run), caching (a finished grid
//! costs 0 NFEs; one changed field recomputes exactly its cells), and concurrent shards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

const TINY: &str = r#"
name: tiny
model: {name: analytic, shape: [3, 8, 8]}
diffrep: {diffrep: siren, resolution: [8, 8], out_channels: 3, embedding_size: 16, width: 16, depth: 1}
sampler: {steps: 6}
methods:
  - method: reference
  - method: ddrep
    solver: {kind: adam, steps: 8, lr: 0.003}
  - method: sjc
    iters: 12
cfg: [0, 3]
seeds: "0..4"
captions: {inline: [a red fox in fresh snow, a lighthouse on a cliff at dusk]}
"#;
const TINY_CELLS: usize = 3 * 2 * 4 * 2;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddrep-exp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the tiny experiment with its results under `dir/results`.
fn tiny(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.yaml");
    std::fs::write(&p, format!("{TINY}outputs: {{dir: {}}}\n", dir.join("results").display())).unwrap();
    p
}

fn ddrep(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ddrep"));
    c.args(args).env("RAYON_NUM_THREADS", "1");
    c
}

fn run(file: &Path, extra: &[&str]) -> Output {
    let mut a = vec!["run", file.to_str().unwrap()];
    a.extend(extra);
    let o = ddrep(&a).output().unwrap();
    assert!(o.status.success(), "ddrep run failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// id -> (file name -> bytes) of the output files of every complete cell; asserts that
/// every directory under cells/ is complete.
fn cells(dir: &Path) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let root = dir.join("results/tiny/cells");
    let Ok(rd) = std::fs::read_dir(&root) else { return out };
    for e in rd {
        let e = e.unwrap();
        let id = e.file_name().to_string_lossy().into_owned();
        let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path().join("cell.json")).unwrap_or_else(|_| panic!("partial cell {id}: no cell.json"))).unwrap_or_else(|_| panic!("corrupt cell.json in {id}"));
        assert_eq!(rec["cell_id"], id.as_str());
        let mut files = BTreeMap::new();
        for f in rec["files"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            files.insert(f.to_string(), std::fs::read(e.path().join(f)).unwrap_or_else(|_| panic!("cell {id} lacks {f}")));
        }
        assert!(files.contains_key("image.png") && files.contains_key("output.safetensors"));
        out.insert(id, files);
    }
    out
}

#[test]
fn kill_9_at_random_moments_then_resume_gives_identical_cells() {
    let clean = tmp("clean");
    let t0 = Instant::now();
    run(&tiny(&clean), &[]);
    let full = t0.elapsed();
    let want = cells(&clean);
    assert_eq!(want.len(), TINY_CELLS);

    let crash = tmp("crash");
    let file = tiny(&crash);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20240517);
    let (mut kills, mut interrupted) = (0, 0);
    while kills < 12 {
        // Each run gets a random slice of the time the cells still missing took in the full
        // run, so twelve kills spread over the grid (start-up, mid-cell, between cells) and
        // the work left shrinks geometrically instead of running out: a fixed slice of the
        // full time let the last runs finish the grid before their kill on a fast machine.
        let left = (TINY_CELLS - cells(&crash).len()) as f64 / TINY_CELLS as f64;
        let at = full.mul_f64(left * rng.random_range(0.02..0.25));
        let mut child = ddrep(&["run", file.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            interrupted += 1;
        }
        child.kill().ok();
        child.wait().unwrap();
        kills += 1;
        // Never a partial cell, whatever the moment.
        let got = cells(&crash);
        for (id, files) in &got {
            assert_eq!(files, &want[id], "cell {id} differs after a kill");
        }
    }
    assert!(interrupted >= 10, "only {interrupted} of {kills} kills hit a running process");
    let before_resume = cells(&crash).len();
    eprintln!("{interrupted} of {kills} kills hit a running process; {before_resume} of {TINY_CELLS} cells were done before the resume");
    assert!(before_resume < TINY_CELLS, "the kills left nothing for the resume to do");
    let o = run(&file, &[]);
    let got = cells(&crash);
    assert_eq!(got.len(), want.len(), "{}", stdout(&o));
    assert!(got == want, "resumed cells differ from the uninterrupted run");
}

#[test]
fn cached_grid_costs_nothing_and_a_changed_field_recomputes_its_cells() {
    let d = tmp("cache");
    let file = tiny(&d);
    let first = stdout(&run(&file, &[]));
    assert!(first.contains(&format!("{TINY_CELLS} computed")), "{first}");
    let before = cells(&d);
    let second = stdout(&run(&file, &[]));
    assert!(second.contains("(0 NFEs)"), "{second}");
    let dry = stdout(&run(&file, &["--dry-run"]));
    assert!(dry.contains(&format!("{TINY_CELLS} cached, 0 to run, about 0 NFEs")), "{dry}");
    // SJC's iterations change the 16 SJC cells and nothing else.
    let dry = stdout(&run(&file, &["methods.2.iters=13", "--dry-run"]));
    assert!(dry.contains("32 cached, 16 to run, about 208 NFEs"), "{dry}");
    let third = stdout(&run(&file, &["methods.2.iters=13"]));
    assert!(third.contains("32 cached, 16 computed (208 NFEs)"), "{third}");
    let after = cells(&d);
    assert_eq!(after.len(), TINY_CELLS + 16);
    for (id, f) in &before {
        assert_eq!(&after[id], f, "an unaffected cell was rewritten");
    }
    let st = stdout(&ddrep(&["status", file.to_str().unwrap()]).output().unwrap());
    assert!(st.contains(&format!("{TINY_CELLS} done, 0 pending, 0 failed")) && st.contains("16 other complete cells"), "{st}");
}

/// A cell damaged after it was committed (a changed image, a lost file, a broken record) still
/// counts as done for `status` and `run`; `status --verify` finds each against the sha256 in
/// its cell.json, and `run --verify` sets them aside under damaged/ and recomputes them, equal
/// to the cells of before.
#[test]
fn verify_finds_damaged_cells_and_run_verify_recomputes_them() {
    let d = tmp("verify");
    let file = tiny(&d);
    let f = file.to_str().unwrap();
    run(&file, &[]);
    let want = cells(&d);
    let status = |extra: &[&str]| {
        let mut a = vec!["status", f];
        a.extend(extra);
        ddrep(&a).output().unwrap()
    };
    let o = status(&["--verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains(&format!("verified {TINY_CELLS} of {TINY_CELLS} done cells against their recorded sha256: 0 damaged")), "{}", stdout(&o));

    let root = d.join("results/tiny/cells");
    let ids: Vec<&String> = want.keys().take(4).collect();
    let mut png = std::fs::read(root.join(ids[0]).join("image.png")).unwrap();
    let last = png.len() - 20;
    png[last] ^= 0x55;
    std::fs::write(root.join(ids[0]).join("image.png"), &png).unwrap();
    std::fs::remove_file(root.join(ids[1]).join("output.safetensors")).unwrap();
    let rec = std::fs::read(root.join(ids[2]).join("cell.json")).unwrap();
    std::fs::write(root.join(ids[2]).join("cell.json"), &rec[..rec.len() / 2]).unwrap();
    // A record from before hashes were recorded: checked for presence only.
    let old = root.join(ids[3]).join("cell.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&old).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("files_sha256").unwrap();
    std::fs::write(&old, serde_json::to_vec_pretty(&v).unwrap()).unwrap();

    // Without --verify the damage is not looked for.
    assert!(stdout(&status(&[])).contains(&format!("{TINY_CELLS} done, 0 pending")));
    let o = status(&["--verify"]);
    let (out, err) = (stdout(&o), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(!o.status.success() && err.trim_end().lines().count() == 1 && err.contains("3 damaged cells") && err.contains("--verify"), "{err}");
    for (id, why) in [(ids[0], "image.png differs from its recorded sha256"), (ids[1], "output.safetensors cannot be read"), (ids[2], "cell.json cannot be read")] {
        assert!(out.lines().any(|l| l.contains("damaged:") && l.contains(why) && l.contains(id.as_str())), "{id}: {why} not in {out}");
    }
    assert!(out.contains(&format!("verified {} of {TINY_CELLS} done cells", TINY_CELLS - 1)) && out.contains("1 cells predate recorded hashes"), "{out}");

    let dry = stdout(&run(&file, &["--verify", "--dry-run"]));
    assert!(dry.contains(&format!("{} cached, 3 to run", TINY_CELLS - 3)), "{dry}");
    let o = run(&file, &["--verify"]);
    assert!(stdout(&o).contains(&format!("{} cached, 3 computed", TINY_CELLS - 3)), "{}", stdout(&o));
    assert!(cells(&d) == want, "recomputed cells differ from the first run's");
    // The damaged copies are kept, as they were.
    let aside = d.join("results/tiny/damaged");
    assert_eq!(std::fs::read(aside.join(format!("{}.0", ids[0])).join("image.png")).unwrap(), png);
    assert_eq!(std::fs::read_dir(&aside).unwrap().count(), 3);
    let o = status(&["--verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("(3 damaged cells set aside by `run --verify` are kept in"), "{}", stdout(&o));
    std::fs::remove_dir_all(&d).ok();
}

/// `status` shows what a live run works on (its heartbeat under running/), a killed run's
/// heartbeat as stale, and nothing once the next run has cleared it.
#[test]
fn status_shows_a_running_grid_and_a_killed_one() {
    let d = tmp("running");
    let file = d.join("slow.yaml");
    // Two cells of ~15 s each (20 000 Adam steps per DDIM step): the run is caught mid-cell.
    let yaml = TINY.replace("steps: 8, lr", "steps: 20000, lr").replace("seeds: \"0..4\"", "seeds: \"0..2\"");
    std::fs::write(&file, format!("{yaml}outputs: {{dir: {}}}\n", d.join("results").display())).unwrap();
    let f = file.to_str().unwrap();
    let only_ddrep = "methods=[{method: ddrep, solver: {kind: adam, steps: 20000, lr: 0.003}}]";
    let mut child = ddrep(&["run", f, only_ddrep, "cfg=[3]", "captions.inline=[a red fox]"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let status = || stdout(&ddrep(&["status", f, only_ddrep, "cfg=[3]", "captions.inline=[a red fox]"]).output().unwrap());
    let host = ddrep::experiment::store::host_name();
    let want = format!("running: on {host} (pid {}), cell 1 of 2: ddrep cfg 3 seed 0 caption 0, for ", child.id());
    let t0 = Instant::now();
    let seen = loop {
        let st = status();
        if st.contains(&want) || t0.elapsed() > Duration::from_secs(60) {
            break st;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.contains(&want), "{want} not in {seen}");
    let st = status();
    assert!(st.contains(&format!("stale: a run on {host} (pid {}) is gone (killed?)", child.id())) && !st.contains("running:"), "{st}");
    // The next run into the folder (one cheap cell of the same grid) clears it, and its own.
    let o = ddrep(&["run", f, "methods=[{method: reference}]", "cfg=[3]", "captions.inline=[a red fox]"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = status();
    assert!(!st.contains("stale:") && !st.contains("running:"), "{st}");
    assert_eq!(std::fs::read_dir(d.join("results/tiny/running")).unwrap().count(), 0);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn concurrent_shards_make_exactly_the_cells_of_one_run() {
    let single = tmp("single");
    run(&tiny(&single), &[]);
    let want = cells(&single);
    let d = tmp("shards");
    let file = tiny(&d);
    let n = 3;
    let children: Vec<_> = (0..n)
        .map(|i| ddrep(&["run", file.to_str().unwrap(), "--shard", &format!("{i}/{n}")]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let mut computed = 0;
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let s = stdout(&o);
        let k: usize = s.split(" computed").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{s}"));
        computed += k;
    }
    assert_eq!(computed, TINY_CELLS, "each cell computed once");
    assert!(cells(&d) == want, "sharded cells differ from the single run");
    // A whole-grid run cannot start beside a shard holding the folder.
    std::fs::remove_dir_all(d.join("results/tiny/cells")).unwrap();
    let mut shard = ddrep(&["run", file.to_str().unwrap(), "--shard", "0/1"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let o = ddrep(&["run", file.to_str().unwrap()]).output().unwrap();
    let still_running = shard.try_wait().unwrap().is_none();
    shard.wait().unwrap();
    if still_running {
        assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("another `ddrep run`"), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn slurm_script_runs_the_shards() {
    let d = tmp("slurm");
    let file = tiny(&d);
    let out = d.join("job.sbatch");
    let o = ddrep(&["slurm", file.to_str().unwrap(), "--array", "4", "--sbatch=--time=00:10:00", "--out", out.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = std::fs::read_to_string(&out).unwrap();
    assert!(s.contains("#SBATCH --array=0-3") && s.contains("#SBATCH --time=00:10:00") && s.contains("--shard \"${SLURM_ARRAY_TASK_ID}/4\""), "{s}");
    // The script's tasks, run here one after another as Slurm would run them, give the grid.
    for i in 0..4 {
        let o = Command::new("bash").arg(&out).env("SLURM_ARRAY_TASK_ID", i.to_string()).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(cells(&d).len(), TINY_CELLS);
}

#[test]
fn a_failed_cell_is_recorded_the_grid_goes_on_and_the_exit_status_is_nonzero() {
    let d = tmp("fail");
    let file = d.join("fail.yaml");
    // SJC at an absurd learning rate diverges: those cells fail, the references complete.
    let yaml = TINY.replace("iters: 12", "iters: 20\n    lr: 1.0e+30").replace("seeds: \"0..4\"", "seeds: \"0..2\"");
    std::fs::write(&file, format!("{yaml}outputs: {{dir: {}}}\n", d.join("results").display())).unwrap();
    let o = ddrep(&["run", file.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("8 of 24 cells failed"), "{err}");
    assert_eq!(cells(&d).len(), 16, "the other cells completed");
    assert_eq!(std::fs::read_dir(d.join("results/tiny/failed")).unwrap().count(), 8);
    let st = stdout(&ddrep(&["status", file.to_str().unwrap()]).output().unwrap());
    assert!(st.contains("16 done, 0 pending, 8 failed"), "{st}");
    // status says why: the first five failures' errors, and how many more there are.
    let why: Vec<&str> = st.lines().filter(|l| l.starts_with("  failed: sjc cfg ")).collect();
    assert_eq!(why.len(), 5, "{st}");
    assert!(why.iter().all(|l| l.contains("non-finite values (NaN or inf) in the denoiser output at SJC iteration")), "{st}");
    assert!(st.contains("... and 3 more failed cells"), "{st}");
}
