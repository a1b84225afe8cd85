//! One entry point over all samplers: a method spec, a diffrep spec, a model, a prompt, a
//! guidance setting and seeds in; host images, parameters and diagnostics out.

use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::{ddrep, reference, sds, sjc, DdrepConfig, MethodOutput, ReferenceConfig, SdsConfig, SjcConfig, StepDiagnostic};
use crate::diffrep::sine::SineBackend;
use crate::diffrep::{Diffrep, NamedTensor, SirenConfig, SirenDiffrep};
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
}

/// A diffrep and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "diffrep", rename_all = "lowercase")]
pub enum DiffrepSpec {
    Siren(SirenConfig),
}

impl DiffrepSpec {
    pub fn default_for(name: &str) -> Result<Self> {
        match name {
            "siren" => Ok(DiffrepSpec::Siren(SirenConfig::default())),
            other => bail!("unknown diffrep '{other}' (expected: siren)"),
        }
    }
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
    }
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
    let den = GuidedDenoiser::new(model, prompts.to_vec(), guidance)?;
    let mut noise = SeededNoise::new(seeds);
    let start = Instant::now();
    let DiffrepSpec::Siren(siren) = diffrep;
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
