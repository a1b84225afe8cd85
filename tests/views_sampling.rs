//! DDRep and SJC over multiview diffreps on the analytic prior: the RePaint ablation on
//! panoramas (a statistical test over seeds) and the demo NeRF end to end.

use std::time::Instant;

use ddrep::backend::{Cpu, CpuAutodiff};
use ddrep::diffrep::cameras::{CylinderViews, SphereViews};
use ddrep::diffrep::{PanoramaConfig, PanoramaDiffrep, VoxNerfConfig, VoxNerfDiffrep};
use ddrep::diffusion::{chain_moves, nfe_count, CfgConvention, Guidance, RepaintConfig};
use ddrep::methods::{ddrep_views, sjc_views, DdrepConfig, SjcConfig, SolverConfig};
use ddrep::models::{AnalyticConfig, AnalyticKind, AnalyticPrior};
use ddrep::noise::SeededNoise;

fn adam(steps: usize, lr: f64) -> SolverConfig {
    SolverConfig::Adam { steps, lr, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 }
}

fn prior(shape: [usize; 3]) -> AnalyticPrior {
    AnalyticPrior::new(AnalyticConfig { shape, captions: vec!["a mountain lake".into(), "a desert at noon".into()], ..Default::default() }).unwrap()
}

/// A stationary prior for panoramas: zero-mean Gaussian with the power-law spectrum (a
/// caption's mean image would pull every view towards the same picture, which overlapping
/// views cannot all show).
fn stationary(shape: [usize; 3]) -> AnalyticPrior {
    AnalyticPrior::new(AnalyticConfig { kind: AnalyticKind::Gaussian, shape, mean_scale: 0.0, ..Default::default() }).unwrap()
}

fn panorama() -> PanoramaDiffrep<CpuAutodiff> {
    let cfg = PanoramaConfig {
        out_channels: 3,
        embedding_size: 32,
        depth: 2,
        width: 48,
        views: CylinderViews { views: 6, focal_mm: 24.0, resolution: [8, 12], ..Default::default() },
        ..Default::default()
    };
    PanoramaDiffrep::new(cfg, &Default::default()).unwrap()
}

fn mean_se(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (v / n).sqrt())
}

/// Paper §4.2 / Fig. 5 on the analytic prior: at equal NFEs, DDRep with RePaint ends with
/// overlapping views that disagree less than without.
///
/// Ignored because it FAILS on this prior (measured when written: 16 seeds, 6 views of 8x12,
/// zero-mean power-law Gaussian, eta = 1, Adam 40 x 1e-2): final disagreement of the update
/// `target - render` RePaint 0.0113 ± 0.0001 vs none 0.0115 ± 0.0002, paired difference
/// -0.0001 ± 0.0002 (not significant); at the same 10 levels -0.0003 ± 0.0002; trajectory
/// means 0.0303 vs 0.0270 (RePaint higher). The analytic prior's denoiser acts on each view
/// independently, so what disagrees is the views' own noise, which RePaint cannot harmonise;
/// the paper's effect is about SD's content choices. Run with `--ignored` (about 40 s);
/// `DDREP_ABLATION_SAME_LEVELS=1` adds the equal-levels arm.
#[test]
#[ignore = "RePaint shows no significant effect on the analytic prior; see the doc comment"]
fn repaint_lowers_the_final_overlap_disagreement_of_panoramas_at_equal_nfes() {
    let model = stationary([3, 8, 12]);
    let rep = panorama();
    let seeds: Vec<u64> = (100..116).collect();
    let prompts = vec!["a mountain lake".to_string(); seeds.len()];
    let g = Guidance::new(1.0, CfgConvention::Diffusers);
    let device = Default::default();
    let solver = adam(40, 1e-2);
    let with = DdrepConfig { steps: 10, repaint: Some(RepaintConfig { jump_length: 1, jump_n_sample: 2 }), solver: solver.clone(), ..Default::default() };
    let without = DdrepConfig { steps: 19, solver, ..Default::default() };
    let run = |cfg: &DdrepConfig| {
        let t = Instant::now();
        let out = ddrep_views::<CpuAutodiff, _, _>(&model, &prompts, g, &rep, &seeds, cfg, &mut SeededNoise::new(&seeds), &device).unwrap();
        let last = out.output.diagnostics.last().unwrap();
        eprintln!(
            "{} moves, {} NFEs, {:.2} s; last overlap {:?}",
            out.output.diagnostics.len(),
            out.output.nfe,
            t.elapsed().as_secs_f64(),
            last.overlap.as_ref().map(|o| o.iter().sum::<f64>() / o.len() as f64)
        );
        let traj: Vec<f64> = (0..seeds.len())
            .map(|i| out.output.diagnostics.iter().map(|d| d.overlap.as_ref().unwrap()[i]).sum::<f64>() / out.output.diagnostics.len() as f64)
            .collect();
        eprintln!("  trajectory-mean overlap {:?}", mean_se(&traj));
        (out.output.nfe, last.overlap.clone().unwrap(), out.output.diagnostics)
    };
    let (nfe_r, ov_r, diag_r) = run(&with);
    let (nfe_n, ov_n, _) = run(&without);
    if std::env::var("DDREP_ABLATION_SAME_LEVELS").is_ok() {
        let (_, ov_s, _) = run(&DdrepConfig { steps: 10, ..without.clone() });
        let d: Vec<f64> = ov_r.iter().zip(&ov_s).map(|(a, b)| a - b).collect();
        eprintln!("same 10 levels without RePaint: {:?}; paired RePaint - none {:?}", mean_se(&ov_s), mean_se(&d));
    }
    assert_eq!((nfe_r, nfe_n), (19, 19), "the arms must spend equal NFEs");
    assert!(diag_r.iter().all(|d| d.overlap.is_some()), "overlap must be logged at every step");
    let diff: Vec<f64> = ov_r.iter().zip(&ov_n).map(|(a, b)| a - b).collect();
    let ((mr, ser), (mn, sen), (md, sed)) = (mean_se(&ov_r), mean_se(&ov_n), mean_se(&diff));
    let msg = format!(
        "final overlap disagreement over {} seeds: RePaint {mr:.4} ± {ser:.4}, none {mn:.4} ± {sen:.4}, paired difference {md:.4} ± {sed:.4} (mean ± s.e.)",
        seeds.len()
    );
    eprintln!("{msg}");
    assert!(md + 2.0 * sed < 0.0, "RePaint does not lower the disagreement by 2 s.e.: {msg}");
}

fn demo_nerf() -> VoxNerfDiffrep {
    VoxNerfDiffrep::new(VoxNerfConfig {
        grid: 10,
        bound: 0.5,
        channels: 3,
        feature_init_std: 0.0,
        view_prompts: false,
        views: SphereViews { views: 4, resolution: [8, 8], ..Default::default() },
        ..Default::default()
    })
    .unwrap()
}

/// The demo NeRF: the paper's schedule (100 DDIM steps, one RePaint forward step each: 199
/// NFEs) on a 10^3 grid with 4 views of 8x8 a batch, end to end on the CPU.
#[test]
fn demo_nerf_runs_the_paper_schedule_end_to_end() {
    let paper = RepaintConfig { jump_length: 1, jump_n_sample: 2 };
    assert_eq!(nfe_count(&chain_moves(100, Some(paper)).unwrap()), 199);
    let model = prior([3, 8, 8]);
    let rep = demo_nerf();
    let device = Default::default();
    let cfg = DdrepConfig { steps: 100, repaint: Some(paper), solver: adam(3, 1e-1), ..Default::default() };
    let t = Instant::now();
    let out = ddrep_views::<CpuAutodiff, _, _>(&model, &["a mountain lake".into()], Guidance::new(3.0, CfgConvention::Diffusers), &rep, &[1], &cfg, &mut SeededNoise::new(&[1]), &device).unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!("demo NeRF: {} NFEs, {} moves in {secs:.1} s = {:.3} s per NFE", out.output.nfe, out.output.diagnostics.len(), secs / out.output.nfe as f64);
    assert_eq!(out.output.nfe, 199);
    assert_eq!(out.output.diagnostics.len(), 199 + 99);
    assert!(secs < 60.0, "the demo NeRF took {secs:.1} s");
    assert_eq!(out.views.dims(), [4, 3, 8, 8]);
    let residual = &out.output.diagnostics.last().unwrap().residual;
    eprintln!("final multiview residual {residual:?}");
    assert!(residual.iter().all(|r| r.is_finite()));
    // The turntable strip (8 views) and a strip of the chain's own views.
    let dir = std::env::temp_dir().join(format!("ddrep-views-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let params = out.output.params.as_ref().unwrap();
    let inner = burn::module::AutodiffModule::valid(params);
    let tt = ddrep::diffrep::strips::write_nerf_turntable::<Cpu>(&dir.join("turntable.png"), &rep, &inner, 8).unwrap();
    assert_eq!(tt.dims(), [8, 3, 8, 8]);
    ddrep::diffrep::strips::write_view_strip(&dir.join("views.png"), out.views.clone(), 4).unwrap();
    for f in ["turntable.png", "views.png"] {
        assert!(std::fs::metadata(dir.join(f)).unwrap().len() > 0);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sjc_runs_on_a_nerf_and_a_panorama_with_fresh_views() {
    let device = Default::default();
    let g = Guidance::new(3.0, CfgConvention::Diffusers);
    let cfg = SjcConfig { iters: 6, log_every: 2, ..Default::default() };
    let model = prior([3, 8, 8]);
    let out = sjc_views::<CpuAutodiff, _, _>(&model, &["a desert at noon".into()], g, &demo_nerf(), &[2], &cfg, &mut SeededNoise::new(&[2]), &device).unwrap();
    assert_eq!(out.output.nfe, 6);
    assert_eq!(out.views.dims(), [4, 3, 8, 8]);
    let pm = prior([3, 8, 12]);
    let out = sjc_views::<CpuAutodiff, _, _>(&pm, &["a".into(), "b".into()], g, &panorama(), &[1, 2], &cfg, &mut SeededNoise::new(&[1, 2]), &device).unwrap();
    assert_eq!(out.output.image.dims()[0], 2);
    assert_eq!(out.views.dims(), [12, 3, 8, 12]);
    let path = std::env::temp_dir().join(format!("ddrep-pano-{}.png", std::process::id()));
    ddrep::diffrep::strips::write_panorama_strip(&path, out.output.image.clone()).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
    std::fs::remove_file(&path).ok();
}

#[test]
fn multiview_samplers_reject_bad_input() {
    let device = Default::default();
    let g = Guidance::new(1.0, CfgConvention::Diffusers);
    let cfg = DdrepConfig { steps: 2, solver: adam(1, 1e-3), ..Default::default() };
    let e = |r: anyhow::Result<()>| r.err().map(|e| e.to_string()).unwrap_or_default();
    // The prior's sample shape must be the view shape.
    let wrong = prior([3, 8, 8]);
    let msg = e(ddrep_views::<CpuAutodiff, _, _>(&wrong, &["x".into()], g, &panorama(), &[0], &cfg, &mut SeededNoise::new(&[0]), &device).map(|_| ()));
    assert!(msg.contains("[3, 8, 8]") && msg.contains("[3, 8, 12]"), "{msg}");
    // One prompt per seed.
    let model = prior([3, 8, 12]);
    let msg = e(ddrep_views::<CpuAutodiff, _, _>(&model, &["x".into()], g, &panorama(), &[0, 1], &cfg, &mut SeededNoise::new(&[0, 1]), &device).map(|_| ()));
    assert!(msg.contains("1 prompts for 2 seeds"), "{msg}");
    // The exact solver is for linear single-view diffreps.
    let msg = e(ddrep_views::<CpuAutodiff, _, _>(&model, &["x".into()], g, &panorama(), &[0], &DdrepConfig { solver: SolverConfig::Exact, ..cfg.clone() }, &mut SeededNoise::new(&[0]), &device).map(|_| ()));
    assert!(msg.contains("exact solver"), "{msg}");
}
