//! Panoramas and voxel NeRFs through the experiment harness (`ddrep run`): the demo NeRF end
//! to end with the paper's schedule, the paper files' NFE budgets, the SD1.5 path (VAE-decoded
//! strips) on the tiny fixture model, and one-line errors for bad multiview YAML.

mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ddrep::experiment::{nfe_estimate, schema};
use common::assert_one_line_error;

fn ddrep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddrep")).args(args).output().expect("run ddrep")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddrep-views-harness-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn file(name: &str) -> String {
    format!("{}/experiments/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn ok(o: &Output) {
    assert!(o.status.success(), "ddrep failed:\nstdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// The complete cells of a run, as (directory, cell.json).
fn cells(root: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut out: Vec<_> = std::fs::read_dir(root.join("cells"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("cell.json").is_file())
        .map(|p| {
            let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("cell.json")).unwrap()).unwrap();
            (p, rec)
        })
        .collect();
    out.sort_by_key(|(_, r)| r["label"].as_str().unwrap().to_string());
    out
}

fn gif_frames(path: &Path) -> Vec<image::Frame> {
    use image::AnimationDecoder;
    let f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    image::codecs::gif::GifDecoder::new(f).unwrap().into_frames().collect_frames().unwrap()
}

fn png_size(path: &Path) -> (u32, u32) {
    image::image_dimensions(path).unwrap()
}

#[test]
fn demo_nerf_runs_end_to_end_with_the_paper_schedule_and_writes_a_turntable_gif() {
    let out = tmp("nerf");
    let dir = format!("outputs.dir={}", out.display());
    // Shrunk diffrep and solver; the DDRep schedule stays the paper's (100 + 99 RePaint).
    let o = ddrep(&["run", &file("demo_nerf.yaml"), &dir, "seeds=[0]", "diffrep.grid=6", "methods.0.solver.steps=1", "methods.1.iters=20"]);
    ok(&o);
    let cells = cells(&out.join("demo_nerf"));
    assert_eq!(cells.len(), 2);
    let (ddrep_dir, rec) = &cells[0];
    assert_eq!(rec["label"], "ddrep");
    assert_eq!(rec["nfe"], 199, "100 DDIM steps + one RePaint forward step each");
    let diags = rec["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 199 + 99);
    assert_eq!(diags.iter().filter(|d| d["kind"] == "forward").count(), 99);
    let mv = &rec["multiview"];
    assert_eq!(mv["views_per_sample"], 4);
    assert_eq!(mv["turntable_frames"], 12);
    assert_eq!(mv["cameras"].as_array().unwrap().len(), 4);
    assert_eq!(mv["decoded_by_vae"], false);
    let res = mv["final_residual"].as_array().unwrap();
    assert_eq!(res.len(), 1);
    assert!(res[0].as_f64().unwrap().is_finite() && res[0].as_f64().unwrap() >= 0.0, "{res:?}");
    assert_eq!(&mv["final_residual"], &diags.last().unwrap()["residual"]);
    for f in ["image.png", "views.png", "turntable.png", "turntable.gif", "params.safetensors", "output.safetensors"] {
        assert!(ddrep_dir.join(f).is_file(), "{f} missing");
        assert!(rec["files"].as_array().unwrap().iter().any(|x| x == f), "{f} not listed in cell.json");
    }
    let frames = gif_frames(&ddrep_dir.join("turntable.gif"));
    assert_eq!(frames.len(), 12);
    assert_eq!(frames[0].buffer().dimensions(), (64, 64), "8x8 views magnified 8x");
    // A row of 12 frames and a row of 4 views.
    let (tw, th) = png_size(&ddrep_dir.join("turntable.png"));
    assert_eq!((tw, th), (12 * 66 + 2, 68));
    assert_eq!(png_size(&ddrep_dir.join("views.png")), (4 * 66 + 2, 68));
    // SJC: one view per iteration, its emptiness loss, the same figures.
    let (sjc_dir, rec) = &cells[1];
    assert_eq!(rec["label"], "sjc");
    assert_eq!(rec["nfe"], 20);
    assert_eq!(rec["multiview"]["views_per_sample"], 1);
    assert_eq!(gif_frames(&sjc_dir.join("turntable.gif")).len(), 12);
    // Rerunning finds every cell done.
    let again = ddrep(&["run", &file("demo_nerf.yaml"), &dir, "seeds=[0]", "diffrep.grid=6", "methods.0.solver.steps=1", "methods.1.iters=20"]);
    ok(&again);
    assert!(String::from_utf8_lossy(&again.stdout).contains("all 2 cells"), "{}", String::from_utf8_lossy(&again.stdout));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn demo_panorama_cells_record_the_overlap_disagreement_and_write_the_panorama() {
    let out = tmp("pano");
    let dir = format!("outputs.dir={}", out.display());
    let o = ddrep(&["run", &file("demo_panorama_repaint.yaml"), &dir, "seeds=[0]", "cfg=[3]", "methods.0.solver.steps=2", "methods.1.solver.steps=2"]);
    ok(&o);
    let cells = cells(&out.join("demo_panorama_repaint"));
    assert_eq!(cells.len(), 2);
    for (d, rec) in &cells {
        assert_eq!(rec["nfe"], 19, "{}: equal NFEs", rec["label"]);
        let diags = rec["diagnostics"].as_array().unwrap();
        assert!(diags.iter().all(|s| s["overlap"].as_array().is_some_and(|o| o.len() == 1)), "overlap at every step");
        assert_eq!(&rec["multiview"]["final_overlap"], &diags.last().unwrap()["overlap"]);
        assert_eq!(rec["multiview"]["views_per_sample"], 6);
        // The whole panorama (8 x 50: 12 px per 73.7 degree view of a 24 mm lens) magnified 8x.
        assert_eq!(rec["multiview"]["image_shape"], serde_json::json!([3, 8, 50]));
        assert_eq!(png_size(&d.join("image.png")), (50 * 8 + 4, 8 * 8 + 4));
        assert!(d.join("views.png").is_file() && !d.join("turntable.gif").exists());
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn paper_experiment_files_spend_the_paper_nfes() {
    let nfes = |name: &str| -> Vec<(String, usize)> {
        let f = schema::load(Path::new(&file(name)), &[]).unwrap();
        f.methods.iter().map(|m| (m.label(), nfe_estimate(&m.spec))).collect()
    };
    assert_eq!(nfes("panorama_repaint.yaml"), vec![("repaint".into(), 460), ("none".into(), 460)]);
    assert_eq!(nfes("nerf.yaml"), vec![("ddrep".into(), 199), ("sjc".into(), 10_000)]);
    assert_eq!(nfes("demo_nerf.yaml")[0], ("ddrep".into(), 199));
    let demo = nfes("demo_panorama_repaint.yaml");
    assert_eq!(demo[0].1, demo[1].1, "the demo's arms must spend equal NFEs");
    // The paper's panorama lens: 50 mm on 3:2.
    let f = schema::load(Path::new(&file("panorama_repaint.yaml")), &[]).unwrap();
    let ddrep::methods::DiffrepSpec::Panorama(p) = &f.diffrep else { panic!("panorama_repaint.yaml is not a panorama") };
    let (fx, fy) = p.views.fov().unwrap();
    assert!((fx.to_degrees() - 39.6).abs() < 0.05 && (fy.to_degrees() - 27.0).abs() < 0.05);
    assert_eq!(p.views.resolution, [64, 96]);
    let f = schema::load(Path::new(&file("nerf.yaml")), &[]).unwrap();
    let ddrep::methods::DiffrepSpec::Voxnerf(v) = &f.diffrep else { panic!("nerf.yaml is not a voxnerf") };
    assert_eq!((v.views.views, v.grid, v.channels), (8, 100, 4));
}

#[test]
fn bad_panorama_and_nerf_yaml_give_one_line_errors() {
    let out = tmp("bad");
    let dir = format!("outputs.dir={}", out.display());
    let nerf = file("demo_nerf.yaml");
    let pano = file("demo_panorama_repaint.yaml");
    let run = |f: &str, ov: &[&str]| {
        let mut args = vec!["run", f, dir.as_str()];
        args.extend(ov);
        ddrep(&args)
    };
    assert_one_line_error(&run(&nerf, &["diffrep.views.views=0"]), "at least one view");
    assert_one_line_error(&run(&pano, &["diffrep.views.views=0"]), "at least one view");
    for fov in ["0", "-5", "180", "270"] {
        assert_one_line_error(&run(&nerf, &[&format!("diffrep.views.fov_deg={fov}")]), "(0, 180) degrees");
    }
    assert_one_line_error(&run(&pano, &["diffrep.views.focal_mm=0"]), "focal length must be positive");
    assert_one_line_error(&run(&nerf, &["diffrep.grid=0"]), "voxnerf.grid (cells per axis) must be at least 1");
    assert_one_line_error(&run(&pano, &["diffrep.views.resolution=[0,12]"]), "view resolution must be positive");
    assert_one_line_error(&run(&nerf, &["diffrep.views.radius=0.8"]), "inside the grid bounds");
    assert_one_line_error(&run(&nerf, &["diffrep.views.elevation_deg=[40,10]"]), "elevation range");
    assert_one_line_error(&run(&nerf, &["diffrep.turntable=0"]), "turntable");
    assert_one_line_error(&run(&nerf, &["diffrep.views.lens=50"]), "unknown field `lens`");
    assert_one_line_error(&run(&nerf, &["methods.1.emptiness.weigth=1"]), "unknown field `weigth`");
    assert_one_line_error(&run(&nerf, &["methods=[{method: reference}]"]), "method 'reference' does not apply to the multiview diffrep 'voxnerf'");
    assert_one_line_error(&run(&pano, &["methods=[{method: sds}]"]), "'sds' is not implemented for the multiview diffrep 'panorama'");
    assert_one_line_error(&run(&pano, &["methods=[{method: sjc, emptiness: {}}]"]), "sjc.emptiness applies to voxnerf diffreps only");
    assert_one_line_error(&run(&nerf, &["methods.1.views=0"]), "sjc.views must be at least 1");
    // The model's samples must be the views.
    assert_one_line_error(&run(&nerf, &["model.shape=[3,8,12]"]), "the voxnerf diffrep's denoised samples are [3, 8, 8] (channels, height, width) but the analytic prior's shape is [3, 8, 12]");
    // A bad file as written: the error names the file, line and column.
    std::fs::create_dir_all(&out).unwrap();
    let bad = out.join("bad_nerf.yaml");
    let text = std::fs::read_to_string(&nerf).unwrap().replace("    views: 4\n", "    views: 4\n    fov: 60\n");
    std::fs::write(&bad, text).unwrap();
    let o = ddrep(&["run", bad.to_str().unwrap(), &dir]);
    assert_one_line_error(&o, "unknown field `fov`");
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad_nerf.yaml:"), "{}", String::from_utf8_lossy(&o.stderr));
    // No cell was computed.
    let cells_dir = out.join("demo_nerf").join("cells");
    let n = std::fs::read_dir(&cells_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "cells were written to {}", cells_dir.display());
    std::fs::remove_dir_all(&out).ok();
}

/// SD1.5 path on the tiny fixture model: the views are latents the UNet samples at the
/// views' size, and the figures are decoded through the VAE (8x larger).
#[test]
fn sd15_nerf_and_panorama_cells_write_vae_decoded_figures() {
    let weights = format!("{}/tests/fixtures/sd15_tiny/model", env!("CARGO_MANIFEST_DIR"));
    let out = tmp("sd15");
    std::fs::create_dir_all(&out).unwrap();
    let nerf = out.join("sd15_nerf.yaml");
    std::fs::write(
        &nerf,
        format!(
            "name: sd15_nerf\nmodel: {{name: sd15, weights: {weights}}}\n\
             diffrep: {{diffrep: voxnerf, grid: 4, bound: 0.5, channels: 4, turntable: 3, views: {{views: 2, resolution: [8, 8]}}}}\n\
             methods:\n  - {{method: ddrep, steps: 2, repaint: {{jump_length: 1, jump_n_sample: 2}}, solver: {{kind: adam, steps: 1, lr: 0.1}}}}\n\
             cfg: [3]\nseeds: [0]\ncaptions: {{inline: [a burger]}}\noutputs: {{dir: {}}}\n",
            out.display()
        ),
    )
    .unwrap();
    ok(&ddrep(&["run", nerf.to_str().unwrap()]));
    let cells_n = cells(&out.join("sd15_nerf"));
    let (d, rec) = &cells_n[0];
    assert_eq!(rec["nfe"], 3);
    let mv = &rec["multiview"];
    assert_eq!(mv["decoded_by_vae"], true);
    assert_eq!(mv["view_shape"], serde_json::json!([4, 8, 8]));
    assert_eq!(mv["view_image_shape"], serde_json::json!([3, 64, 64]));
    assert_eq!(png_size(&d.join("image.png")), (68, 68));
    assert_eq!(png_size(&d.join("views.png")), (2 * 66 + 2, 68));
    let frames = gif_frames(&d.join("turntable.gif"));
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].buffer().dimensions(), (64, 64));
    // A panorama of 8x16 latent views: the whole panorama is decoded in tiles.
    let pano = out.join("sd15_pano.yaml");
    std::fs::write(
        &pano,
        format!(
            "name: sd15_pano\nmodel: {{name: sd15, weights: {weights}}}\n\
             diffrep: {{diffrep: panorama, out_channels: 4, embedding_size: 16, depth: 1, width: 16, views: {{views: 3, focal_mm: 50, resolution: [8, 48]}}}}\n\
             methods:\n  - {{method: ddrep, steps: 2, solver: {{kind: adam, steps: 1, lr: 0.01}}}}\n\
             cfg: [3]\nseeds: [0]\ncaptions: {{inline: [a beach]}}\noutputs: {{dir: {}}}\n",
            out.display()
        ),
    )
    .unwrap();
    ok(&ddrep(&["run", pano.to_str().unwrap()]));
    let cells_p = cells(&out.join("sd15_pano"));
    let (_, rec) = &cells_p[0];
    let mv = &rec["multiview"];
    assert_eq!(mv["view_image_shape"], serde_json::json!([3, 64, 384]));
    let w = mv["image_shape"][2].as_u64().unwrap();
    let lat_w = rec["diffrep"]["panorama_resolution"][1].as_u64().unwrap();
    assert!(lat_w > 128, "{lat_w} latent columns: the panorama must span several decode tiles");
    assert_eq!(w, 8 * lat_w, "the decoded panorama is 8x the latent panorama's width");
    // Latent view sizes the UNet cannot halve three times are refused before sampling, by
    // plan too (from unet/config.json); views whose channels the UNet does not take as well.
    assert_one_line_error(&ddrep(&["run", pano.to_str().unwrap(), "diffrep.views.resolution=[8,20]"]), "multiples of 8");
    assert_one_line_error(&ddrep(&["status", pano.to_str().unwrap(), "diffrep.views.resolution=[8,20]"]), "multiples of 8");
    assert_one_line_error(&ddrep(&["status", nerf.to_str().unwrap(), "diffrep.channels=3"]), "diffrep views [3, 8, 8] but the model samples [4, 8, 8]");
    std::fs::remove_dir_all(&out).ok();
}

/// SJC's emptiness: `sum_i mean log(1 + scale w)` of the compositing weights, its weight x20
/// from half the iterations on; and SJC's 1e-4 colour cut changes a render by little.
#[test]
fn emptiness_loss_and_weight_threshold_follow_sjc() {
    use ddrep::backend::{Cpu, CpuAutodiff};
    use ddrep::diffrep::cameras::SphereViews;
    use ddrep::diffrep::{MultiviewDiffrep, VoxNerfConfig, VoxNerfDiffrep};
    use ddrep::methods::EmptinessConfig;
    use ddrep::noise::rng_for;
    use ddrep::tensor_util::tensor_to_vec;
    let device = Default::default();
    let cfg = VoxNerfConfig { grid: 8, bound: 0.5, channels: 3, views: SphereViews { views: 2, resolution: [6, 6], ..Default::default() }, ..Default::default() };
    assert_eq!(cfg.weight_threshold, 1e-4, "SJC's ray_march_weight_thres");
    let rep = VoxNerfDiffrep::new(cfg.clone()).unwrap();
    let seeds = [3u64, 4];
    let params = ddrep::diffrep::Diffrep::<CpuAutodiff>::init(&rep, &seeds, &device).unwrap();
    let views = MultiviewDiffrep::<CpuAutodiff>::sample_views(&rep, &mut [rng_for(3, "v"), rng_for(4, "v")], &device).unwrap();
    let e = tensor_to_vec(MultiviewDiffrep::<CpuAutodiff>::emptiness(&rep, &params, &views, 10.0).unwrap().inner())[0] as f64;
    let w = tensor_to_vec(rep.render_full(&params, &views).weights.inner());
    let per_sample = w.len() / 2;
    let want: f64 = (0..2).map(|s| w[s * per_sample..(s + 1) * per_sample].iter().map(|&x| (1.0 + 10.0 * x as f64).ln()).sum::<f64>() / per_sample as f64).sum();
    assert!((e - want).abs() <= 1e-5 * want.abs().max(1.0), "emptiness {e} vs {want}");
    assert!(want > 0.0);
    let sched = EmptinessConfig::default();
    assert_eq!((sched.weight_at(4999, 10_000), sched.weight_at(5000, 10_000)), (1e4, 2e5));
    // The cut drops the colour of samples of weight < 1e-4 only.
    let inner = burn::module::AutodiffModule::valid(&params);
    let iviews = rep.prepare::<Cpu>(views.cameras.clone(), &device).unwrap();
    let cut = tensor_to_vec(rep.render_full(&inner, &iviews).image);
    let all = VoxNerfDiffrep::new(VoxNerfConfig { weight_threshold: 0.0, ..cfg }).unwrap();
    let full = tensor_to_vec(all.render_full(&inner, &iviews).image);
    let worst = cut.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 0.05, "the 1e-4 cut changed a pixel by {worst}");
}

/// Single-view cells on SD1.5 write the VAE decode as image.png (what Table 1 scores) and
/// keep the latent in output.safetensors.
#[test]
fn sd15_siren_and_reference_cells_write_the_decoded_image() {
    let weights = format!("{}/tests/fixtures/sd15_tiny/model", env!("CARGO_MANIFEST_DIR"));
    let out = tmp("sd15_siren");
    std::fs::create_dir_all(&out).unwrap();
    let yaml = out.join("sd15_siren.yaml");
    std::fs::write(
        &yaml,
        format!(
            "name: sd15_siren\nmodel: {{name: sd15, weights: {weights}}}\n\
             diffrep: {{diffrep: siren, resolution: [16, 16], out_channels: 4, embedding_size: 8, width: 16, depth: 1}}\n\
             sampler: {{steps: 2}}\n\
             methods:\n  - {{method: reference}}\n  - {{method: ddrep, solver: {{kind: adam, steps: 1, lr: 0.01}}}}\n\
             cfg: [3]\nseeds: [0]\ncaptions: {{inline: [a red bicycle]}}\noutputs: {{dir: {}}}\n",
            out.display()
        ),
    )
    .unwrap();
    // plan (status, --dry-run, slurm) reads the model's configs, not its weights, and refuses
    // what the first cell would: a render the UNet does not sample, steps past its schedule.
    let y = yaml.to_str().unwrap();
    assert_one_line_error(&ddrep(&["status", y, "diffrep.resolution=[8,8]"]), "diffrep renders [4, 8, 8] but the model samples [4, 16, 16]");
    assert_one_line_error(&ddrep(&["run", y, "--dry-run", "methods.1.steps_offset=5000"]), "methods[1] (ddrep): steps_offset 5000 pushes the first timestep past 999");
    // A reference-only grid samples the model's own shape: any SIREN setting goes.
    ok(&ddrep(&["status", y, "diffrep.resolution=[8,8]", "methods=[{method: reference}]"]));
    ok(&ddrep(&["run", y]));
    let cells = cells(&out.join("sd15_siren"));
    assert_eq!(cells.len(), 2);
    for (d, rec) in &cells {
        assert_eq!(rec["image_decoded_by_vae"], true, "{}", rec["label"]);
        assert_eq!(rec["shape"], serde_json::json!([4, 16, 16]));
        assert_eq!(png_size(&d.join("image.png")), (128, 128), "{}: the tiny VAE upsamples 8x", rec["label"]);
        let bytes = std::fs::read(d.join("output.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("image").unwrap().shape(), &[1, 4, 16, 16], "the latent is kept");
    }
}
