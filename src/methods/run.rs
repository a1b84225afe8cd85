//! One entry point over all samplers: a method spec, a diffrep spec, a model, a prompt, a
//! guidance setting and seeds in; host images, parameters and diagnostics out.

use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use burn::module::AutodiffModule;
use burn::tensor::{backend::Backend, Tensor};

use super::multiview::{ddrep_views, sjc_views, MultiviewOutput};
use super::{ddrep, reference, sds, sjc, DdrepConfig, MethodOutput, ReferenceConfig, SdsConfig, SjcConfig, StepDiagnostic};
use crate::diffrep::cameras::Camera;
use crate::diffrep::sine::SineBackend;
use crate::diffrep::{Diffrep, MultiviewDiffrep, NamedTensor, PanoramaConfig, PanoramaDiffrep, SirenConfig, SirenDiffrep, VoxNerfConfig, VoxNerfDiffrep};
use crate::diffusion::{Denoiser, Guidance, GuidedDenoiser};
use crate::noise::SeededNoise;
use crate::tensor_util::tensor_to_vec;

/// A sampler and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum MethodSpec {
    Ddrep(DdrepConfig),
    Sjc(SjcConfig),
    Sds(SdsConfig),
    Reference(ReferenceConfig),
}

impl MethodSpec {
    pub fn name(&self) -> &'static str {
        match self {
            MethodSpec::Ddrep(_) => "ddrep",
            MethodSpec::Sjc(_) => "sjc",
            MethodSpec::Sds(_) => "sds",
            MethodSpec::Reference(_) => "reference",
        }
    }

    /// The method with default settings, by name; a one-line error for unknown names.
    pub fn default_for(name: &str) -> Result<Self> {
        Ok(match name {
            "ddrep" => MethodSpec::Ddrep(DdrepConfig::default()),
            "sjc" => MethodSpec::Sjc(SjcConfig::default()),
            "sds" => MethodSpec::Sds(SdsConfig::default()),
            "reference" => MethodSpec::Reference(ReferenceConfig::default()),
            other => bail!("unknown method '{other}' (expected one of: ddrep, sjc, sds, reference)"),
        })
    }

    /// The checks that need the model's training schedule (the DDIM levels, SJC's skips), as
    /// the sampler makes them when it starts.
    pub fn check_schedule(&self, schedule: &crate::diffusion::Schedule) -> Result<()> {
        match self {
            MethodSpec::Ddrep(c) => schedule.ddim_levels(c.steps, c.steps_offset).map(drop),
            MethodSpec::Reference(c) => schedule.ddim_levels(c.steps, c.steps_offset).map(drop),
            MethodSpec::Sjc(c) => c.validate(schedule.num_train_timesteps()),
            MethodSpec::Sds(_) => Ok(()),
        }
    }
}

/// A diffrep and its settings: an image SIREN, or a multiview diffrep (paper §4.2-4.3) whose
/// view settings (views per batch, lens, resolution, view prompts) live in its config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "diffrep", rename_all = "lowercase")]
pub enum DiffrepSpec {
    Siren(SirenConfig),
    /// The SIREN panorama seen through a ring of pinhole views.
    Panorama(PanoramaConfig),
    /// SJC's voxel NeRF seen from cameras on a sphere.
    Voxnerf(VoxNerfConfig),
}

impl DiffrepSpec {
    pub fn default_for(name: &str) -> Result<Self> {
        match name {
            "siren" => Ok(DiffrepSpec::Siren(SirenConfig::default())),
            "panorama" => Ok(DiffrepSpec::Panorama(PanoramaConfig::default())),
            "voxnerf" => Ok(DiffrepSpec::Voxnerf(VoxNerfConfig::default())),
            other => bail!("unknown diffrep '{other}' (expected one of: siren, panorama, voxnerf)"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            DiffrepSpec::Siren(_) => "siren",
            DiffrepSpec::Panorama(_) => "panorama",
            DiffrepSpec::Voxnerf(_) => "voxnerf",
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            DiffrepSpec::Siren(c) => c.validate(),
            DiffrepSpec::Panorama(c) => c.validate(),
            DiffrepSpec::Voxnerf(c) => c.validate(),
        }
    }

    /// Panoramas and NeRFs: the denoiser sees their views, not their canonical render.
    pub fn is_multiview(&self) -> bool {
        !matches!(self, DiffrepSpec::Siren(_))
    }

    /// `[C, H, W]` of what the denoiser must sample: the render (SIREN) or one view.
    pub fn denoised_shape(&self) -> [usize; 3] {
        match self {
            DiffrepSpec::Siren(s) => [s.out_channels, s.resolution[0], s.resolution[1]],
            DiffrepSpec::Panorama(p) => [p.out_channels, p.views.resolution[0], p.views.resolution[1]],
            DiffrepSpec::Voxnerf(v) => [v.channels, v.views.resolution[0], v.views.resolution[1]],
        }
    }

    /// Whether `method` can run on this diffrep; a one-line reason if not.
    pub fn check_method(&self, method: &MethodSpec) -> Result<()> {
        if self.is_multiview() {
            match method {
                MethodSpec::Ddrep(_) | MethodSpec::Sjc(_) => {}
                MethodSpec::Reference(_) => bail!(
                    "method 'reference' does not apply to the multiview diffrep '{}': it samples one image, not a set of views (use ddrep or sjc)",
                    self.name()
                ),
                MethodSpec::Sds(_) => bail!("method 'sds' is not implemented for the multiview diffrep '{}' (use ddrep or sjc)", self.name()),
            }
        }
        if let MethodSpec::Sjc(c) = method {
            if c.views.is_some() && !self.is_multiview() {
                bail!("sjc.views applies to multiview diffreps (panorama, voxnerf), not '{}'", self.name());
            }
            if c.views == Some(0) {
                bail!("sjc.views must be at least 1");
            }
            crate::limits::at_most("sjc.views", c.views.unwrap_or(0), crate::limits::MAX_VIEWS)?;
            if let Some(e) = &c.emptiness {
                e.validate()?;
                if !matches!(self, DiffrepSpec::Voxnerf(_)) {
                    bail!("sjc.emptiness applies to voxnerf diffreps only, not '{}'", self.name());
                }
            }
        }
        Ok(())
    }
}

/// The multiview part of a run, on the host.
pub struct MultiviewResult {
    /// The final renders of the last batch of views, `n * V` images, sample-major.
    pub views: Vec<Vec<f32>>,
    pub view_shape: [usize; 3],
    pub views_per_sample: usize,
    pub cameras: Vec<Camera>,
    /// NeRFs: a turntable of `turntable_per_sample` frames per sample, sample-major.
    pub turntable: Option<Vec<Vec<f32>>>,
    pub turntable_per_sample: usize,
    /// Per sample: the last logged residual (DDRep: RMS of `render - target` over all views
    /// after the last fit, the multiview residual; SJC: RMS of the ascent direction).
    pub final_residual: Vec<f64>,
    /// Per sample: the last logged overlap disagreement (panoramas).
    pub final_overlap: Option<Vec<f64>>,
}

/// What a run produced, on the host.
pub struct RunResult {
    /// One `[C, H, W]` image per seed.
    pub images: Vec<Vec<f32>>,
    pub shape: [usize; 3],
    /// Diffrep parameters (absent for the reference sampler).
    pub params: Option<Vec<NamedTensor>>,
    pub diagnostics: Vec<StepDiagnostic>,
    pub nfe: usize,
    pub seconds: f64,
    pub diffrep: serde_json::Value,
    /// Panoramas and NeRFs: views, cameras, turntable, final residual.
    pub multiview: Option<MultiviewResult>,
}

fn collect<B: AutodiffBackend, R: Diffrep<B>>(
    rep: Option<&R>,
    out: MethodOutput<B::InnerBackend, R::Params>,
    start: Instant,
) -> RunResult {
    let [n, c, h, w] = out.image.dims();
    let flat = tensor_to_vec(out.image);
    let per = c * h * w;
    RunResult {
        images: (0..n).map(|i| flat[i * per..(i + 1) * per].to_vec()).collect(),
        shape: [c, h, w],
        params: match (rep, &out.params) {
            (Some(r), Some(p)) => Some(r.export(p)),
            _ => None,
        },
        diagnostics: out.diagnostics,
        nfe: out.nfe,
        seconds: start.elapsed().as_secs_f64(),
        diffrep: rep.map(|r| r.describe()).unwrap_or(serde_json::Value::Null),
        multiview: None,
    }
}

/// `[n, C, H, W]` to host images.
fn host_images<B: Backend>(t: Tensor<B, 4>) -> (Vec<Vec<f32>>, [usize; 3]) {
    let [n, c, h, w] = t.dims();
    let flat = crate::tensor_util::tensor_to_vec(t);
    let per = c * h * w;
    ((0..n).map(|i| flat[i * per..(i + 1) * per].to_vec()).collect(), [c, h, w])
}

/// A multiview sampler's output to a [`RunResult`], with `turntable` (if any) rendered from
/// the final parameters.
fn collect_views<B: AutodiffBackend, R: MultiviewDiffrep<B>>(
    rep: &R,
    out: MultiviewOutput<B::InnerBackend, R::Params>,
    turntable: Option<(usize, Tensor<B::InnerBackend, 4>)>,
    start: Instant,
) -> RunResult {
    let MultiviewOutput { output, views, cameras } = out;
    let (views, view_shape) = host_images(views);
    let last = output.diagnostics.last();
    let final_residual = last.map(|d| d.residual.clone()).unwrap_or_default();
    let final_overlap = last.and_then(|d| d.overlap.clone());
    let views_per_sample = rep.views_per_sample();
    let (tt, tt_n) = match turntable {
        Some((k, t)) => (Some(host_images(t).0), k),
        None => (None, 0),
    };
    let mut res = collect::<B, R>(Some(rep), output, start);
    res.multiview = Some(MultiviewResult { views, view_shape, views_per_sample, cameras, turntable: tt, turntable_per_sample: tt_n, final_residual, final_overlap });
    res
}

/// Renders a fitted multiview diffrep's turntable: `(frames, images)`, or `None` for none.
type Turntable<'a, R, B> = dyn Fn(&R, &<R as crate::diffrep::Diffrep<B>>::Params) -> Result<Option<(usize, Tensor<<B as AutodiffBackend>::InnerBackend, 4>)>> + 'a;

/// DDRep or SJC on a multiview diffrep built by `make` (SJC may ask for its own number of
/// views per iteration).
#[allow(clippy::too_many_arguments)]
fn run_views<B, R>(
    model: &dyn Denoiser<B::InnerBackend>,
    method: &MethodSpec,
    make: &dyn Fn(Option<usize>) -> Result<R>,
    turntable: &Turntable<'_, R, B>,
    prompts: &[String],
    guidance: Guidance,
    seeds: &[u64],
    device: &B::Device,
) -> Result<RunResult>
where
    B: AutodiffBackend,
    R: MultiviewDiffrep<B>,
{
    let mut noise = SeededNoise::new(seeds);
    let start = Instant::now();
    let (rep, out) = match method {
        MethodSpec::Ddrep(cfg) => {
            let rep = make(None)?;
            let out = ddrep_views::<B, _, _>(model, prompts, guidance, &rep, seeds, cfg, &mut noise, device)?;
            (rep, out)
        }
        MethodSpec::Sjc(cfg) => {
            let rep = make(cfg.views)?;
            let out = sjc_views::<B, _, _>(model, prompts, guidance, &rep, seeds, cfg, &mut noise, device)?;
            (rep, out)
        }
        other => bail!("method '{}' does not apply to multiview diffreps (use ddrep or sjc)", other.name()),
    };
    let tt = match &out.output.params {
        Some(p) => turntable(&rep, p)?,
        None => None,
    };
    Ok(collect_views(&rep, out, tt, start))
}


/// Runs one method on a batch of independent samples, sample `i` with `prompts[i]` and
/// `seeds[i]`. A sample's result depends only on its own prompt and seed.
pub fn run_method<B: AutodiffBackend + SineBackend>(
    model: &dyn Denoiser<B::InnerBackend>,
    method: &MethodSpec,
    diffrep: &DiffrepSpec,
    prompts: &[String],
    guidance: Guidance,
    seeds: &[u64],
    device: &B::Device,
) -> Result<RunResult> {
    if seeds.is_empty() || seeds.len() != prompts.len() {
        bail!("{} seeds for {} prompts: one seed per sample is needed", seeds.len(), prompts.len());
    }
    diffrep.check_method(method)?;
    let siren = match diffrep {
        DiffrepSpec::Siren(s) => s,
        DiffrepSpec::Panorama(pc) => {
            let make = |views: Option<usize>| {
                let mut c = pc.clone();
                if let Some(v) = views {
                    c.views.views = v;
                }
                PanoramaDiffrep::<B>::new(c, device)
            };
            return run_views::<B, _>(model, method, &make, &|_, _| Ok(None), prompts, guidance, seeds, device);
        }
        DiffrepSpec::Voxnerf(vc) => {
            let make = |views: Option<usize>| {
                let mut c = vc.clone();
                if let Some(v) = views {
                    c.views.views = v;
                }
                VoxNerfDiffrep::new(c)
            };
            let turntable = |rep: &VoxNerfDiffrep, p: &<VoxNerfDiffrep as Diffrep<B>>::Params| -> Result<Option<(usize, Tensor<B::InnerBackend, 4>)>> {
                let k = rep.config().turntable;
                let inner = p.valid();
                let views = rep.turntable::<B::InnerBackend>(k, inner.density.dims()[0], device)?;
                Ok(Some((k, rep.render_full(&inner, &views).image)))
            };
            return run_views::<B, _>(model, method, &make, &turntable, prompts, guidance, seeds, device);
        }
    };
    let den = GuidedDenoiser::new(model, prompts.to_vec(), guidance)?;
    let mut noise = SeededNoise::new(seeds);
    let start = Instant::now();
    let rep = SirenDiffrep::<B>::new(siren.clone(), device)?;
    let (want, got) = (model.sample_shape(), Diffrep::<B>::render_shape(&rep));
    if want != got && !matches!(method, MethodSpec::Reference(_)) {
        bail!("the diffrep renders {got:?} but the model samples {want:?}: set the diffrep's resolution and out_channels to match");
    }
    Ok(match method {
        MethodSpec::Reference(cfg) => {
            let out = reference(&den, seeds.len(), cfg, &mut noise, device)?;
            let out = MethodOutput::<B::InnerBackend, <SirenDiffrep<B> as Diffrep<B>>::Params> {
                params: None,
                image: out.image,
                diagnostics: out.diagnostics,
                nfe: out.nfe,
            };
            collect::<B, SirenDiffrep<B>>(None, out, start)
        }
        MethodSpec::Ddrep(cfg) => collect(Some(&rep), ddrep::<B, _, _>(&den, &rep, seeds, cfg, &mut noise, device)?, start),
        MethodSpec::Sjc(cfg) => collect(Some(&rep), sjc::<B, _, _>(&den, &rep, seeds, cfg, &mut noise, device)?, start),
        MethodSpec::Sds(cfg) => collect(Some(&rep), sds::<B, _, _>(&den, &rep, seeds, cfg, &mut noise, device)?, start),
    })
}
