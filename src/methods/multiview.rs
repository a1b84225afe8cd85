//! DDRep and SJC over multiview diffreps (paper §3.2, Eq. 6-8): panoramas and voxel NeRFs.
//!
//! DDRep: each sample draws its batch of `V` views once, from its own `"views"` stream, and
//! keeps them for the whole chain, so that each view carries its own separated noise `eps`
//! (ALGORITHM.md §4: one fixed noise tensor per view) through DDIM and RePaint moves. Every
//! move denoises all `n * V` views in one denoiser call (one NFE), each view conditioned on
//! its own prompt (the sample's prompt plus the view's suffix, e.g. ", front view"), and the
//! least-squares fit averages over the sample's views (Eq. 8). Before each fit the
//! disagreement of overlapping views' targets is logged (panoramas: measured on the update
//! `target - render`, the render being consistent by construction); the fit residual over
//! all views is the NeRF's multiview residual.
//!
//! SJC: fresh views every iteration, as its authors do.

use anyhow::{bail, Result};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor};
use rand_chacha::ChaCha8Rng;

use super::adamax::Adamax;
use super::ddrep::{DdrepConfig, MoveTarget, PullbackChain};
use super::sjc::{sjc_direction, SjcConfig};
use super::solver::fit_with;
use super::{MethodOutput, StepDiagnostic};
use crate::diffrep::{Camera, MultiviewDiffrep};
use crate::diffusion::{Denoiser, Guidance, GuidedDenoiser};
use crate::noise::{rng_for, NoiseSource};
use crate::tensor_util::{ensure_finite, per_sample_mse, tensor_to_vec};

/// What a multiview sampler returns.
pub struct MultiviewOutput<B: Backend, P> {
    /// `image` is the diffrep's canonical render (`Diffrep::render`: the whole panorama,
    /// a NeRF's front view), `[n, C, H, W]`.
    pub output: MethodOutput<B, P>,
    /// Final renders of the last batch of views, `[n * V, C, H, W]`, sample-major.
    pub views: Tensor<B, 4>,
    pub cameras: Vec<Camera>,
}

/// The per-row prompts of a batch of views: `"{prompt}, {suffix}"` or the prompt alone.
pub fn view_prompts(prompts: &[String], suffixes: &[Option<String>]) -> Vec<String> {
    let v = suffixes.len() / prompts.len().max(1);
    suffixes
        .iter()
        .enumerate()
        .map(|(row, s)| match s {
            Some(s) => format!("{}, {s}", prompts[row / v]),
            None => prompts[row / v].clone(),
        })
        .collect()
}

/// `[n * V, C, H, W]` standard normal noise, sample `i`'s rows from `noise`'s row `i`.
fn view_noise<B: Backend>(noise: &mut dyn NoiseSource<B>, n: usize, v: usize, [c, h, w]: [usize; 3], device: &B::Device) -> Result<Tensor<B, 4>> {
    Ok(noise.normal([n, v * c, h, w], device)?.reshape([n * v, c, h, w]))
}

/// Per sample: RMS over all its views' pixels.
fn per_sample_rms<B: Backend>(diff: Tensor<B, 4>, n: usize) -> Vec<f64> {
    let [rows, c, h, w] = diff.dims();
    per_sample_mse(diff.reshape([n, rows / n * c, h, w])).into_iter().map(f64::sqrt).collect()
}

fn check_prompts(prompts: &[String], seeds: &[u64]) -> Result<()> {
    if seeds.is_empty() {
        bail!("at least one seed is needed");
    }
    if prompts.len() != seeds.len() {
        bail!("{} prompts for {} seeds", prompts.len(), seeds.len());
    }
    Ok(())
}

/// DDRep over a multiview diffrep: `n = seeds.len()` samples, `prompts[i]` for sample `i`.
/// Noise order as [`super::ddrep()`]: `eps` first, then one `z` per move.
#[allow(clippy::too_many_arguments)]
pub fn ddrep_views<B, D, R>(
    model: &D,
    prompts: &[String],
    guidance: Guidance,
    rep: &R,
    seeds: &[u64],
    cfg: &DdrepConfig,
    noise: &mut dyn NoiseSource<B::InnerBackend>,
    device: &B::Device,
) -> Result<MultiviewOutput<B::InnerBackend, R::Params>>
where
    B: AutodiffBackend,
    D: Denoiser<B::InnerBackend> + ?Sized,
    R: MultiviewDiffrep<B>,
{
    cfg.validate()?;
    check_prompts(prompts, seeds)?;
    if matches!(cfg.solver, super::SolverConfig::Exact) {
        bail!("the exact solver needs a linear single-view diffrep; '{}' is multiview", rep.name());
    }
    let (n, v) = (seeds.len(), rep.views_per_sample());
    let vshape = rep.view_shape();
    if model.sample_shape() != vshape {
        bail!("the denoiser's samples are {:?} but the views are {:?}", model.sample_shape(), vshape);
    }

    let mut rngs: Vec<ChaCha8Rng> = seeds.iter().map(|&s| rng_for(s, "views")).collect();
    let views = rep.sample_views(&mut rngs, device)?;
    let den = GuidedDenoiser::<B::InnerBackend, D>::new(model, view_prompts(prompts, &rep.view_suffixes(&views)), guidance)?;
    let render = |p: &R::Params| rep.render_views(p, &views);

    let mut params = rep.init(seeds, device)?;
    let mut xhat = render(&params).inner();
    let mut chain = PullbackChain::new(model.schedule(), cfg, view_noise(noise, n, v, vshape, device)?)?;
    let mut diagnostics = Vec::with_capacity(chain.moves.len());
    for step in 0..chain.moves.len() {
        let z = view_noise(noise, n, v, vshape, device)?;
        let MoveTarget { kind, t, sigma, target } = chain.pullback_step(step, &den, &xhat, z)?;
        // The render is consistent across views by construction: measure the disagreement of
        // what the views ask for, `target - render`, which also removes the panorama's own
        // within-cell spread from the measure.
        let overlap = rep.overlap_disagreement(&views, &tensor_to_vec(target.clone() - xhat.clone()));
        params = fit_with(&render, n, params, target.clone(), &cfg.solver)?;
        xhat = render(&params).inner();
        ensure_finite(&xhat, || format!("the diffrep render after the least-squares fit at step {step} (t = {t})"))?;
        let residual = per_sample_rms(xhat.clone() - target, n);
        super::solver::check_residual(&residual, step, t)?;
        diagnostics.push(StepDiagnostic { step, kind: kind.into(), t, sigma, residual, nfe: den.nfe(), overlap });
    }
    let image = rep.render(&params).inner();
    let cameras = rep.cameras(&views).to_vec();
    Ok(MultiviewOutput { output: MethodOutput { params: Some(params), image, diagnostics, nfe: den.nfe() }, views: xhat, cameras })
}

/// SJC over a multiview diffrep: fresh views every iteration (from each sample's
/// `"sjc-views"` stream), one sigma per sample and iteration shared by its views (from its
/// `"sjc"` stream), the ascent direction averaged over the views. With `cfg.emptiness`, SJC's
/// emptiness loss on the compositing weights is added (its depth loss, off in SJC's own
/// runs, is not included).
#[allow(clippy::too_many_arguments)]
pub fn sjc_views<B, D, R>(
    model: &D,
    prompts: &[String],
    guidance: Guidance,
    rep: &R,
    seeds: &[u64],
    cfg: &SjcConfig,
    noise: &mut dyn NoiseSource<B::InnerBackend>,
    device: &B::Device,
) -> Result<MultiviewOutput<B::InnerBackend, R::Params>>
where
    B: AutodiffBackend,
    D: Denoiser<B::InnerBackend> + ?Sized,
    R: MultiviewDiffrep<B>,
{
    check_prompts(prompts, seeds)?;
    let t_train = model.schedule().num_train_timesteps();
    cfg.validate(t_train)?;
    let (n, v) = (seeds.len(), rep.views_per_sample());
    let vshape = rep.view_shape();
    if model.sample_shape() != vshape {
        bail!("the denoiser's samples are {:?} but the views are {:?}", model.sample_shape(), vshape);
    }
    let mut rngs: Vec<_> = seeds.iter().map(|&s| rng_for(s, "sjc")).collect();
    let mut view_rngs: Vec<ChaCha8Rng> = seeds.iter().map(|&s| rng_for(s, "sjc-views")).collect();
    let mut params = rep.init(seeds, device)?;
    let mut optim = Adamax::default().init::<B, R::Params>();
    let mut diagnostics = Vec::new();
    let mut nfe = 0;
    let mut views = rep.sample_views(&mut view_rngs, device)?;
    for it in 0..cfg.iters {
        if it > 0 {
            views = rep.sample_views(&mut view_rngs, device)?;
        }
        let den = GuidedDenoiser::<B::InnerBackend, D>::new(model, view_prompts(prompts, &rep.view_suffixes(&views)), guidance)?;
        let ts: Vec<usize> = rngs.iter_mut().flat_map(|r| std::iter::repeat_n(cfg.draw_timestep(r, t_train), v)).collect();
        let y = rep.render_views(&params, &views);
        let z = view_noise(noise, n, v, vshape, device)?;
        let (g, sig) = sjc_direction(&den, y.clone().inner(), &ts, z, it)?;
        nfe += den.nfe();
        if cfg.logs(it) {
            diagnostics.push(StepDiagnostic { step: it, kind: "iteration".into(), t: ts[0], sigma: sig[0], residual: per_sample_rms(g.clone(), n), nfe, overlap: None });
        }
        let mut l = (y * Tensor::<B, 4>::from_inner(g)).sum().div_scalar(v as f64).neg();
        if let Some(e) = &cfg.emptiness {
            let Some(empty) = rep.emptiness(&params, &views, e.scale) else {
                bail!("sjc.emptiness needs a diffrep with compositing weights (voxnerf); '{}' has none", rep.name());
            };
            l = l + empty.mul_scalar(e.weight_at(it, cfg.iters));
        }
        let grads = GradientsParams::from_grads(l.backward(), &params);
        params = optim.step(cfg.lr, params, grads);
    }
    let views_out = rep.render_views(&params, &views).inner();
    ensure_finite(&views_out, || "the final SJC render".into())?;
    let image = rep.render(&params).inner();
    let cameras = rep.cameras(&views).to_vec();
    Ok(MultiviewOutput { output: MethodOutput { params: Some(params), image, diagnostics, nfe }, views: views_out, cameras })
}
