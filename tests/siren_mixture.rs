//! SIRENs on the analytic mixture prior: the analogue of Table 1 (DDRep renders vs the
//! reference sampler with the same noise) and of Fig. 4 (diversity over 8 seeds).

use ddrep::backend::{Cpu, CpuAutodiff};
use ddrep::demo::{mean_pairwise_rms, psnr_ssim, DemoSettings};
use ddrep::diffrep::{SirenConfig, SirenDiffrep};
use ddrep::diffusion::{CfgConvention, Denoiser, Guidance, GuidedDenoiser, Schedule};
use ddrep::methods::{ddrep as ddrep_sampler, run_method, DdrepConfig, MethodSpec, SolverConfig};
use ddrep::models::AnalyticPrior;
use ddrep::noise::SeededNoise;

#[test]
fn ddrep_matches_reference_and_keeps_its_diversity_while_sjc_collapses() {
    let s = DemoSettings::default();
    let model = AnalyticPrior::new(s.prior.clone()).unwrap();
    let device = Default::default();
    let seeds: Vec<u64> = (0..8).collect();
    let prompts = vec![s.prior.captions[1].clone(); 8];
    let g = Guidance::new(3.0, CfgConvention::Diffusers);
    let run = |m: &MethodSpec| run_method::<CpuAutodiff>(&model, m, &s.diffrep, &prompts, g, &seeds, &device).unwrap();
    let (reference, ddrep, sjc) = (run(&s.methods[0]), run(&s.methods[1]), run(&s.methods[2]));
    assert_eq!((reference.nfe, ddrep.nfe, sjc.nfe), (16, 16, 300));
    for (k, (a, b)) in ddrep.images.iter().zip(&reference.images).enumerate() {
        let (psnr, ssim) = psnr_ssim(a, b, ddrep.shape).unwrap();
        assert!(psnr >= 25.0, "seed {k}: DDRep PSNR vs reference {psnr:.2} dB < 25");
        assert!(ssim >= 0.9, "seed {k}: DDRep SSIM vs reference {ssim:.3} < 0.9");
    }
    let div = |r: &ddrep::methods::RunResult| mean_pairwise_rms(&r.images.iter().collect::<Vec<_>>());
    let (dr, dd, ds) = (div(&reference), div(&ddrep), div(&sjc));
    assert!((dd / dr - 1.0).abs() <= 0.2, "DDRep diversity {dd:.4} not within 20% of the reference's {dr:.4}");
    assert!(ds < 0.7 * dr, "SJC diversity {ds:.4} is not clearly below the reference's {dr:.4}");
}

/// A denoiser that turns to NaN below a timestep, to check that samplers stop cleanly.
struct Poisoned(AnalyticPrior, usize);

impl Denoiser<Cpu> for Poisoned {
    fn describe(&self) -> String {
        "poisoned".into()
    }
    fn sample_shape(&self) -> [usize; 3] {
        Denoiser::<Cpu>::sample_shape(&self.0)
    }
    fn schedule(&self) -> &Schedule {
        Denoiser::<Cpu>::schedule(&self.0)
    }
    fn eps(&self, x: burn::tensor::Tensor<Cpu, 4>, t: &[usize], p: &[Option<&str>]) -> anyhow::Result<burn::tensor::Tensor<Cpu, 4>> {
        let e = self.0.eps(x, t, p)?;
        Ok(if t[0] < self.1 { e.mul_scalar(f32::NAN) } else { e })
    }
}

fn small_siren() -> SirenDiffrep<CpuAutodiff> {
    let cfg = SirenConfig { resolution: [32, 32], out_channels: 3, embedding_size: 16, width: 16, depth: 1, ..Default::default() };
    SirenDiffrep::new(cfg, &Default::default()).unwrap()
}

#[test]
fn nan_in_the_denoiser_stops_the_run_naming_the_step() {
    let s = DemoSettings::default();
    let poisoned = Poisoned(AnalyticPrior::new(s.prior.clone()).unwrap(), 500);
    let den = GuidedDenoiser::<Cpu, _>::new(&poisoned, vec!["x".into()], Guidance::new(3.0, CfgConvention::Diffusers)).unwrap();
    let cfg = DdrepConfig { steps: 4, solver: SolverConfig::Adam { steps: 2, lr: 1e-3, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 }, ..Default::default() };
    let err = ddrep_sampler::<CpuAutodiff, _, _>(&den, &small_siren(), &[0], &cfg, &mut SeededNoise::new(&[0]), &Default::default())
        .err()
        .expect("a NaN must stop the run")
        .to_string();
    assert!(err.contains("step 2") && err.contains("t = 251") && err.contains("non-finite"), "{err}");
}

#[test]
fn a_diverging_solver_stops_the_run_naming_the_step() {
    let s = DemoSettings::default();
    let model = AnalyticPrior::new(s.prior.clone()).unwrap();
    let den = GuidedDenoiser::<Cpu, _>::new(&model, vec!["x".into()], Guidance::new(3.0, CfgConvention::Diffusers)).unwrap();
    let cfg = DdrepConfig { steps: 4, solver: SolverConfig::Transpose { lr: 1e30 }, ..Default::default() };
    let err = ddrep_sampler::<CpuAutodiff, _, _>(&den, &small_siren(), &[0], &cfg, &mut SeededNoise::new(&[0]), &Default::default())
        .err()
        .expect("a diverging fit must stop the run")
        .to_string();
    assert!(err.contains("least-squares fit at step") && err.contains("non-finite"), "{err}");
}
