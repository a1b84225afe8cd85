//! The experiment schema: round trip, overrides, and a corpus of malformed files
//! (`tests/fixtures/bad_yaml/`, plus a 10 MB file made here) that must each give a clear error
//! naming the file, never a panic.

use std::path::{Path, PathBuf};

use ddrep::experiment::{plan, schema};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad_yaml")
}

fn experiments() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments")
}

#[test]
fn experiment_files_round_trip() {
    for name in ["demo_table1.yaml", "demo_fig4.yaml", "table1.yaml", "fig4_diversity.yaml"] {
        let p = experiments().join(name);
        let f = schema::load(&p, &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let text = schema::to_yaml(&f).unwrap();
        let g = schema::parse(Path::new("roundtrip.yaml"), &text, &[]).unwrap_or_else(|e| panic!("{name} after a round trip: {e:#}\n{text}"));
        assert_eq!(f, g, "{name}");
    }
}

#[test]
fn demo_grid_has_the_expected_cells() {
    let p = plan(&experiments().join("demo_table1.yaml"), &["outputs.dir=/nonexistent-never-written".into()]).unwrap();
    // 4 method rows x 3 CFG x 3 captions x 2 seeds.
    assert_eq!(p.cells.len(), 72);
    let ids: std::collections::BTreeSet<_> = p.cells.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), 72, "cell ids must be distinct");
    // The sampler's steps reach the methods that did not set their own.
    let ddrep = p.cells.iter().find(|c| c.label == "ddrep").unwrap();
    assert_eq!(ddrep.key["method"]["steps"], 16);
    // The baseline reference runs at other seeds.
    let b = p.cells.iter().find(|c| c.label == "baseline").unwrap();
    assert_eq!(b.run_seed, b.seed + 1000);
}

#[test]
fn overrides_and_exclude() {
    let p = experiments().join("demo_table1.yaml");
    let ov = |o: &[&str]| plan(&p, &o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let a = ov(&["cfg=[3]", "seeds=[5]", "methods.2.solver.lr=0.01"]).unwrap();
    assert_eq!(a.cells.len(), 4 * 3);
    let d = a.cells.iter().find(|c| c.label == "ddrep").unwrap();
    assert_eq!(d.key["method"]["solver"]["lr"], 0.01);
    assert_eq!(d.seed, 5);
    let x = ov(&["exclude=[{method: sjc, cfg: 10}, {caption: a red fox in fresh snow}]"]).unwrap();
    assert_eq!(x.cells.len(), 72 - 24 - 4);
    // Bad overrides: one clear error each.
    for (o, needle) in [
        ("methods.9.iters=3", "out of range"),
        ("nokey=1", "unknown field `nokey`"),
        ("cfg", "KEY=VALUE"),
        ("name.x=1", "single value"),
        ("cfg=[0, .nan]", "not a finite number"),
        ("methods.2.solver.kind=sgd", "unknown variant `sgd`"),
        ("seeds=9..3", "is empty"),
        // A number where a name belongs: never a variant by position, and said in plain words.
        ("methods.2.method=3", "methods[2].method must be a name (one of: reference, ddrep, sjc, sds), got 3"),
        ("methods.2.solver.kind=1", "methods[2].solver.kind must be a name (one of: adam, exact, transpose), got 1"),
        ("device=0", "invalid type: integer `0`, expected a name"),
    ] {
        let e = format!("{:#}", ov(&[o]).err().unwrap_or_else(|| panic!("override {o} was accepted")));
        assert!(e.contains(needle), "override {o}: '{needle}' not in: {e}");
    }
}

fn expect_error(path: &Path, needle: &str) {
    let r = std::panic::catch_unwind(|| plan(path, &[]));
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let res = r.unwrap_or_else(|_| panic!("{name}: panicked"));
    let e = match res {
        Ok(_) => panic!("{name}: accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains(&name), "{name}: error does not name the file: {e}");
    assert!(e.contains(needle), "{name}: '{needle}' not in: {e}");
    assert!(e.len() < 2000, "{name}: error is {} bytes long", e.len());
    println!("{name}: {e}");
}

#[test]
fn malformed_files_give_clear_errors() {
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(fixtures()).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        let text = std::fs::read(&p).unwrap();
        // (A byte-order mark before the comment is part of what bom_then_error.yaml tests.)
        let first = String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim_start_matches('\u{feff}').to_string();
        let needle = match p.file_name().unwrap().to_str().unwrap() {
            "empty_file.yaml" => "empty",
            "not_utf8.yaml" => "not UTF-8",
            _ => first.strip_prefix("# expect: ").unwrap_or_else(|| panic!("{}: first line must be '# expect: ...'", p.display())),
        }
        .to_string();
        expect_error(&p, &needle);
        n += 1;
    }
    // The 10 MB file is made here rather than committed.
    let big = std::env::temp_dir().join(format!("ddrep-big-{}.yaml", std::process::id()));
    let mut s = String::from("name: t\ncaptions:\n  inline:\n");
    while s.len() < 10_000_000 {
        s.push_str("    - a caption that goes on and on to make a very large experiment file\n");
    }
    std::fs::write(&big, s).unwrap();
    expect_error(&big, "too large");
    std::fs::remove_file(&big).ok();
    n += 1;
    assert!(n >= 30, "only {n} malformed files");
}

#[test]
fn errors_carry_line_and_column() {
    let e = format!("{:#}", plan(&fixtures().join("unknown_method_key.yaml"), &[]).err().unwrap());
    assert!(e.contains("unknown_method_key.yaml:8:5:"), "{e}");
    assert!(e.contains("expected one of"), "allowed values missing: {e}");
    let e = format!("{:#}", plan(&fixtures().join("unknown_model.yaml"), &[]).err().unwrap());
    assert!(e.contains("`analytic`") && e.contains("`sd15`"), "{e}");
}

/// A file error that overrides leave in place is said once, with its line and column; one that
/// an override removes gives way to what is wrong after the overrides.
#[test]
fn file_errors_under_overrides_are_said_once() {
    let f = fixtures().join("unknown_method_key.yaml");
    let ov = |o: &[&str]| format!("{:#}", plan(&f, &o.iter().map(|s| s.to_string()).collect::<Vec<_>>()).err().unwrap());
    let e = ov(&["cfg=[0]"]);
    assert!(e.contains("unknown_method_key.yaml:8:5:") && e.matches("unknown field").count() == 1 && !e.contains("after overrides"), "{e}");
    let e = ov(&["methods=[{method: ddrep}]", "seeds=[-1]"]);
    assert!(!e.contains("unknown field") && e.contains("(after overrides methods=[{method: ddrep}] seeds=[-1]): invalid value: integer `-1`"), "{e}");
    // An override that supplies what the file lacks leaves nothing to report.
    assert!(plan(&f, &["methods=[{method: ddrep}]".to_string()]).is_ok());
}

/// `model.precision` (SD1.5 only): f32 leaves the cell keys as they were; f16/bf16 need
/// `device: cuda` and enter the keys; anything else is an error naming the value.
#[test]
fn sd15_precision_key() {
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd15_tiny/model");
    let dir = std::env::temp_dir().join(format!("ddrep-precision-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = dir.join("p.yaml");
    std::fs::write(
        &yaml,
        format!(
            "name: p\nmodel: {{name: sd15, weights: {}}}\n\
             diffrep: {{diffrep: siren, resolution: [16, 16], out_channels: 4}}\n\
             methods:\n  - {{method: reference}}\ncfg: [3]\nseeds: [0]\ncaptions: {{inline: [a red bicycle]}}\noutputs: {{dir: {}}}\n",
            weights.display(),
            dir.join("out").display()
        ),
    )
    .unwrap();
    let ov = |o: &[&str]| plan(&yaml, &o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let plain = ov(&[]).unwrap();
    let f32 = ov(&["model.precision=f32"]).unwrap();
    assert_eq!(plain.cells[0].id, f32.cells[0].id, "f32 must not change the cell keys");
    assert!(plain.cells[0].key["model"]["sd15"].get("precision").is_none());

    let e = format!("{:#}", ov(&["model.precision=f16"]).err().unwrap());
    assert!(e.contains("runs on the GPU only") && e.contains("device: cuda"), "{e}");
    let e = format!("{:#}", ov(&["model.precision=f8"]).err().unwrap());
    assert!(e.contains("f8"), "{e}");
    assert!(!dir.join("out").exists(), "planning writes nothing");
    // With device: cuda the plan is made (running it needs a cuda build) and the key differs.
    let half = ov(&["model.precision=bf16", "device=cuda"]).unwrap();
    assert_eq!(half.cells[0].key["model"]["sd15"]["precision"], "bf16");
    assert_ne!(half.cells[0].id, plain.cells[0].id);
    let _ = std::fs::remove_dir_all(&dir);
}
