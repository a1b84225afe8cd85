//! Exact-answer oracles on the Gaussian prior (ALGORITHM.md §7): every discrete sampler is a
//! linear-Gaussian recursion per DCT coordinate, so its output law is known in closed form.
//! Samples are compared with it within computed Monte-Carlo error bars (fixed seeds).

mod common;

use burn::tensor::Tensor;
use common::{assert_law, mean_var, propagate, Update};
use ddrep::backend::{Cpu, CpuAutodiff};
use ddrep::diffrep::LinearDiffrep;
use ddrep::diffusion::{
    chain_moves, ddim_step, repaint_forward, repaint_forward_plain, separated_noise, CfgConvention, DdimCoeffs, Guidance,
    GuidedDenoiser, Level, Move, RepaintConfig, Schedule,
};
use ddrep::methods::{ddrep as ddrep_sampler, sds, sjc, DdrepConfig, RepaintX0, SdsConfig, SjcConfig, SolverConfig};
use ddrep::models::AnalyticPrior;
use ddrep::noise::{NoiseSource, SeededNoise};
use ddrep::tensor_util::{tensor_from_f64, tensor_to_vec};

const SHAPE: [usize; 3] = [1, 4, 4];
/// The coefficients the linear diffrep spans: (ky, kx), prior variance, prior mean.
const COORDS: [((usize, usize), f64, f64); 3] = [((0, 1), 4.0, 0.5), ((1, 0), 1.0, -0.3), ((1, 1), 0.25, 0.2)];
const N: usize = 512;
const Z: f64 = 4.0;

fn prior() -> AnalyticPrior {
    let mut var = vec![0.5; 16];
    let mut mean = vec![0.0; 16];
    for ((ky, kx), v, m) in COORDS {
        var[ky * 4 + kx] = v;
        mean[ky * 4 + kx] = m;
    }
    AnalyticPrior::gaussian_with(SHAPE, var, mean).unwrap()
}

fn linear(p: &AnalyticPrior, scales: [f64; 3]) -> LinearDiffrep<CpuAutodiff> {
    let cols: Vec<Vec<f64>> = COORDS
        .iter()
        .zip(scales)
        .map(|(((ky, kx), _, _), s)| p.basis().basis_image(0, *ky, *kx).iter().map(|x| x * s).collect())
        .collect();
    LinearDiffrep::new(SHAPE, &cols, &Default::default()).unwrap()
}

/// DCT coordinates of each sample of `images` (`[n, 1, 4, 4]`) at the spanned coefficients.
fn coords(p: &AnalyticPrior, images: Tensor<Cpu, 4>) -> Vec<Vec<f64>> {
    let flat = tensor_to_vec(images);
    let mut out = vec![Vec::new(); COORDS.len()];
    for row in flat.chunks(16) {
        let c = p.basis().forward(&row.iter().map(|&x| x as f64).collect::<Vec<_>>());
        for (k, ((ky, kx), _, _)) in COORDS.iter().enumerate() {
            out[k].push(c[ky * 4 + kx]);
        }
    }
    out
}

fn run_ddrep(p: &AnalyticPrior, scales: [f64; 3], cfg: &DdrepConfig) -> Vec<Vec<f64>> {
    let device = Default::default();
    let rep = linear(p, scales);
    let seeds: Vec<u64> = (0..N as u64).collect();
    let den = GuidedDenoiser::<Cpu, _>::new(p, vec![String::new(); N], Guidance::new(0.0, CfgConvention::Diffusers)).unwrap();
    let out = ddrep_sampler::<CpuAutodiff, _, _>(&den, &rep, &seeds, cfg, &mut SeededNoise::new(&seeds), &device).unwrap();
    coords(p, out.image)
}

fn closed_form(cfg: &DdrepConfig, update: impl Fn(usize) -> Update) -> Vec<(f64, f64)> {
    let s = Schedule::sd15();
    let levels = s.ddim_levels(cfg.steps, cfg.steps_offset).unwrap();
    let moves = chain_moves(cfg.steps, cfg.repaint).unwrap();
    COORDS
        .iter()
        .enumerate()
        .map(|(k, (_, v, m))| {
            let law = propagate(&s, &levels, &moves, cfg.eta, *m, *v, update(k));
            (law.mean[0], law.var_xhat())
        })
        .collect()
}

fn exact_cfg(eta: f64, repaint: Option<RepaintConfig>) -> DdrepConfig {
    DdrepConfig { steps: 20, eta, steps_offset: 1, solver: SolverConfig::Exact, repaint, repaint_x0: RepaintX0::Latest }
}

#[test]
fn ddrep_linear_orthonormal_matches_closed_form() {
    let p = prior();
    for eta in [1.0, 0.5, 0.0] {
        let cfg = exact_cfg(eta, None);
        let samples = run_ddrep(&p, [1.0; 3], &cfg);
        for (k, (m, v)) in closed_form(&cfg, |_| Update::Exact).into_iter().enumerate() {
            assert_law(&format!("eta {eta}, coordinate {k}"), &samples[k], m, v, Z);
        }
    }
}

#[test]
fn ddrep_linear_with_repaint_matches_closed_form() {
    let p = prior();
    let cfg = exact_cfg(0.5, Some(RepaintConfig { jump_length: 2, jump_n_sample: 2 }));
    let samples = run_ddrep(&p, [1.0; 3], &cfg);
    for (k, (m, v)) in closed_form(&cfg, |_| Update::Exact).into_iter().enumerate() {
        assert_law(&format!("repaint, coordinate {k}"), &samples[k], m, v, Z);
    }
}

#[test]
fn ddrep_is_unchanged_by_rescaled_columns_but_the_transpose_update_is_wrong() {
    let p = prior();
    let scales = [2.0, 0.5, 1.0];
    let cfg = exact_cfg(1.0, None);
    let exact = closed_form(&cfg, |_| Update::Exact);
    let samples = run_ddrep(&p, scales, &cfg);
    for (k, (m, v)) in exact.iter().enumerate() {
        assert_law(&format!("rescaled, coordinate {k}"), &samples[k], *m, *v, Z);
    }
    // The same update without (J^T J)^{-1}: J^T (target - r), step 1.
    let tcfg = DdrepConfig { solver: SolverConfig::Transpose { lr: 1.0 }, ..cfg.clone() };
    let wrong = closed_form(&tcfg, |k| Update::Transpose { scale: scales[k] });
    eprintln!("closed-form variances: ddrep {:?}, without metric {:?}", exact.iter().map(|x| x.1).collect::<Vec<_>>(), wrong.iter().map(|x| x.1).collect::<Vec<_>>());
    let tsamples = run_ddrep(&p, scales, &tcfg);
    for k in 0..3 {
        // Sampled law matches its own recursion...
        assert_law(&format!("transpose, coordinate {k}"), &tsamples[k], wrong[k].0, wrong[k].1, Z);
    }
    // ...which is detectably not DDRep's on the rescaled columns (scale 2 and 0.5), and is
    // DDRep's where the column has unit norm.
    for k in 0..2 {
        let (_, v) = mean_var(&tsamples[k]);
        let se = exact[k].1 * (2.0 / (N as f64 - 1.0)).sqrt();
        assert!((v - exact[k].1).abs() > 10.0 * se, "coordinate {k}: transpose variance {v:.4} too close to DDRep's {:.4}", exact[k].1);
    }
    assert!((wrong[2].1 - exact[2].1).abs() < 1e-12);
}

#[test]
fn sjc_and_sds_collapse_toward_the_mode() {
    let p = prior();
    let device = Default::default();
    let rep = linear(&p, [1.0; 3]);
    let n = 256;
    let seeds: Vec<u64> = (0..n as u64).collect();
    let g = Guidance::new(0.0, CfgConvention::Diffusers);
    let den = GuidedDenoiser::<Cpu, _>::new(&p, vec![String::new(); n], g).unwrap();
    let out = sjc::<CpuAutodiff, _, _>(&den, &rep, &seeds, &SjcConfig { iters: 1500, ..Default::default() }, &mut SeededNoise::new(&seeds), &device).unwrap();
    let s = coords(&p, out.image);
    let den = GuidedDenoiser::<Cpu, _>::new(&p, vec![String::new(); n], g).unwrap();
    let cfg = SdsConfig { iters: 1500, lr: 0.05, ..Default::default() };
    let out = sds::<CpuAutodiff, _, _>(&den, &rep, &seeds, &cfg, &mut SeededNoise::new(&seeds), &device).unwrap();
    let d = coords(&p, out.image);
    for (k, (_, v, m)) in COORDS.iter().enumerate() {
        for (name, x) in [("sjc", &s[k]), ("sds", &d[k])] {
            let (sm, sv) = mean_var(x);
            eprintln!("{name} coordinate {k}: mean {sm:.4} (mode {m}), variance {sv:.5} (prior {v})");
            assert!(sv <= 0.2 * v, "{name} coordinate {k}: variance {sv:.4} is not <= 0.2 x the prior's {v}");
            assert!((sm - m).abs() < 0.25 * v.sqrt(), "{name} coordinate {k}: mean {sm:.3} is not near the mode {m}");
        }
    }
}

fn noise(n: usize, seed: u64) -> Tensor<Cpu, 4> {
    let mut src = SeededNoise::new(&(0..n as u64).map(|i| i + 1000 * seed).collect::<Vec<_>>());
    NoiseSource::<Cpu>::normal(&mut src, [n, 1, 4, 4], &Default::default()).unwrap()
}

#[test]
fn separated_noise_with_identity_diffrep_equals_plain_ddim() {
    // Both chains in lockstep with the same random numbers; exact analytic denoiser.
    let p = prior();
    let s = Schedule::sd15();
    let n = 8;
    let den = GuidedDenoiser::<Cpu, _>::new(&p, vec![String::new(); n], Guidance::new(0.0, CfgConvention::Diffusers)).unwrap();
    for eta in [0.0, 0.5, 1.0] {
        let levels = s.ddim_levels(25, 1).unwrap();
        let mut eps = noise(n, 1);
        let mut xhat = eps.clone().mul_scalar(0.0);
        let mut x = eps.clone().mul_scalar(s.sigma(levels[0]));
        let mut worst = 0.0f32;
        for k in 0..25 {
            let c = DdimCoeffs::new(&s, levels[k], levels[k + 1], eta);
            let Level::Timestep(t) = levels[k] else { unreachable!() };
            let z = noise(n, 10 + k as u64);
            x = ddim_step(x.clone(), den.x0(x, t).unwrap(), &c, z.clone());
            let x0 = den.x0(xhat.clone() + eps.clone().mul_scalar(c.sigma_from), t).unwrap();
            let (tgt, e) = separated_noise(xhat, eps, x0, &c, z);
            xhat = tgt;
            eps = e;
            let sep = xhat.clone() + eps.clone().mul_scalar(c.sigma_to);
            let err = tensor_to_vec((sep - x.clone()).abs().max());
            worst = worst.max(err[0]);
        }
        assert!(worst < 1e-5, "eta {eta}: separated and plain DDIM differ by {worst}");
    }
}

#[test]
fn ddim_step_with_true_x0_has_the_marginal_law() {
    // x~_i ~ N(x0, sigma^2)  =>  x~_j ~ N(x0, sigma'^2), and the RePaint forward step with
    // the true x0 gives back x~_i' ~ N(x0, sigma^2) with Cov(x~_i', x~_j) = Cov(x~_i, x~_j).
    let s = Schedule::sd15();
    let device = Default::default();
    let n = 20_000;
    let levels = s.ddim_levels(20, 1).unwrap();
    let mut rng = SeededNoise::new(&[7]);
    let mut draw = |len: usize| tensor_to_vec(NoiseSource::<Cpu>::normal(&mut rng, [1, 1, 1, len], &device).unwrap());
    for eta in [0.0, 0.5, 1.0] {
        for k in [0usize, 10, 19] {
            let c = DdimCoeffs::new(&s, levels[k], levels[k + 1], eta);
            let x0v = 0.7;
            let x0 = Tensor::<Cpu, 4>::full([n, 1, 1, 1], x0v, &device);
            let xi = tensor_from_f64::<Cpu, 4>(&draw(n).iter().map(|e| x0v + c.sigma_from * *e as f64).collect::<Vec<_>>(), [n, 1, 1, 1], &device);
            let z1 = tensor_from_f64::<Cpu, 4>(&draw(n).iter().map(|&e| e as f64).collect::<Vec<_>>(), [n, 1, 1, 1], &device);
            let z2 = tensor_from_f64::<Cpu, 4>(&draw(n).iter().map(|&e| e as f64).collect::<Vec<_>>(), [n, 1, 1, 1], &device);
            let xj = ddim_step(xi.clone(), x0.clone(), &c, z1);
            let xi2 = repaint_forward_plain(xj.clone(), x0, &c, z2);
            let (xi, xj, xi2): (Vec<f64>, Vec<f64>, Vec<f64>) = (
                tensor_to_vec(xi).into_iter().map(f64::from).collect(),
                tensor_to_vec(xj).into_iter().map(f64::from).collect(),
                tensor_to_vec(xi2).into_iter().map(f64::from).collect(),
            );
            let what = format!("eta {eta}, step {k}");
            assert_law(&format!("{what}: x_j"), &xj, x0v, c.sigma_to.powi(2), Z);
            assert_law(&format!("{what}: forward x_i"), &xi2, x0v, c.sigma_from.powi(2), Z);
            let cov = |a: &[f64], b: &[f64]| {
                let (ma, mb) = (mean_var(a).0, mean_var(b).0);
                a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum::<f64>() / (a.len() as f64 - 1.0)
            };
            let want = c.dir * c.sigma_from;
            // SE of a sample covariance: sqrt((s_a^2 s_b^2 + c^2) / n).
            let se = ((c.sigma_from.powi(2) * c.sigma_to.powi(2) + want * want) / n as f64).sqrt();
            for (name, got) in [("plain", cov(&xi, &xj)), ("forward", cov(&xi2, &xj))] {
                assert!((got - want).abs() < Z * se, "{what}: {name} Cov(x_i, x_j) {got:.5} vs {want:.5} (SE {se:.5})");
            }
        }
    }
}

#[test]
fn repaint_forward_separated_form_matches_plain_form() {
    let s = Schedule::sd15();
    let levels = s.ddim_levels(10, 1).unwrap();
    let c = DdimCoeffs::new(&s, levels[3], levels[4], 0.5);
    let (xhat, eps, x0, z) = (noise(4, 1), noise(4, 2), noise(4, 3), noise(4, 4));
    let (xi, ei) = repaint_forward(xhat.clone(), eps.clone(), x0.clone(), &c, z.clone());
    let plain = repaint_forward_plain(xhat + eps.mul_scalar(c.sigma_to), x0, &c, z);
    let err = tensor_to_vec((xi + ei.mul_scalar(c.sigma_from) - plain).abs().max())[0];
    assert!(err < 1e-5, "{err}");
    // With eta = 1 the forward step is the Markov forward: k = 1.
    let c1 = DdimCoeffs::new(&s, levels[3], levels[4], 1.0);
    assert!((c1.repaint_k() - 1.0).abs() < 1e-9);
    assert!((c1.repaint_noise().powi(2) - (c1.sigma_from.powi(2) - c1.sigma_to.powi(2))).abs() < 1e-9);
    let _ = Move::Reverse { from: 0 };
}

#[test]
fn adam_reaches_the_exact_least_squares_solution() {
    // The oracles above use the exact solve as a test double for Adam; here Adam, from the
    // same warm start, must land on that solution (rescaled columns: an ill-conditioned fit).
    use ddrep::diffrep::Diffrep;
    use ddrep::methods::solver::fit;
    let p = prior();
    let rep = linear(&p, [2.0, 0.5, 1.0]);
    let device = Default::default();
    let seeds: Vec<u64> = (0..16).collect();
    let target = noise(16, 99);
    let start = rep.init(&seeds, &device).unwrap();
    let exact = Diffrep::<CpuAutodiff>::exact_fit(&rep, &start, target.clone()).unwrap();
    let adam = SolverConfig::Adam { steps: 600, lr: 0.05, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 };
    let fitted = fit(&rep, start, target, &adam).unwrap();
    let (a, e) = (tensor_to_vec(fitted.theta.val().inner()), tensor_to_vec(exact.theta.val().inner()));
    let worst = a.iter().zip(&e).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let scale = e.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-3 * scale.max(1.0), "Adam is {worst} from the exact solution (scale {scale})");
}
