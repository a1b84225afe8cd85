//! DDRep and SJC over multiview diffreps on the analytic prior: the demo NeRF end to end,
//! SJC over views, and bad input. The RePaint ablation is tests/repaint_ablation.rs.

use std::time::Instant;

use ddrep::backend::{Cpu, CpuAutodiff};
use ddrep::diffrep::{PanoramaConfig, PanoramaDiffrep, VoxNerfConfig, VoxNerfDiffrep};
use ddrep::diffusion::{chain_moves, nfe_count, CfgConvention, Guidance, RepaintConfig};
use ddrep::methods::{ddrep_views, sjc_views, DdrepConfig, SjcConfig, SolverConfig};
use ddrep::models::{AnalyticConfig, AnalyticPrior};
use ddrep::noise::SeededNoise;

fn adam(steps: usize, lr: f64) -> SolverConfig {
    SolverConfig::Adam { steps, lr, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 }
}

fn prior(shape: [usize; 3]) -> AnalyticPrior {
    AnalyticPrior::new(AnalyticConfig { shape, captions: vec!["a mountain lake".into(), "a desert at noon".into()], ..Default::default() }).unwrap()
}

fn panorama() -> PanoramaDiffrep<CpuAutodiff> {
    PanoramaDiffrep::new(PanoramaConfig::demo(), &Default::default()).unwrap()
}

fn demo_nerf() -> VoxNerfDiffrep {
    VoxNerfDiffrep::new(VoxNerfConfig::demo()).unwrap()
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
    // Its speed is measured by `ddrep bench views`, not asserted here.
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
