//! What `ddrep compare` and `ddrep score` share: where the LPIPS and Inception weight files
//! come from (flags with environment fallbacks), KID's subset settings, and how a metric whose
//! weights are missing is reported.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use clap::Args;

use crate::metrics::{InceptionV3, KidConfig, Lpips};

/// Weight files of the learned metrics.
#[derive(Args, Debug, Clone, Default)]
pub struct WeightArgs {
    /// LPIPS trunk: torchvision AlexNet `features.*` weights as safetensors.
    #[arg(long, env = "DDREP_LPIPS_TRUNK")]
    pub lpips_trunk: Option<PathBuf>,
    /// LPIPS v0.1 linear heads: lpips' `weights/v0.1/alex.pth` (or a safetensors copy).
    #[arg(long, env = "DDREP_LPIPS_HEADS")]
    pub lpips_heads: Option<PathBuf>,
    /// FID-variant Inception-v3 weights (`pt_inception-2015-12-05`) as safetensors, for KID.
    #[arg(long, env = "DDREP_INCEPTION")]
    pub inception: Option<PathBuf>,
}

/// KID's subset draw (torchmetrics' defaults; the subset size is capped at the smaller set).
#[derive(Args, Debug, Clone)]
pub struct KidArgs {
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    /// Capped at the smaller set's size.
    #[arg(long, default_value_t = 1000)]
    pub kid_subset_size: usize,
    #[arg(long, default_value_t = 0)]
    pub kid_seed: u64,
}

impl Default for KidArgs {
    fn default() -> Self {
        let d = KidConfig::default();
        Self { kid_subsets: d.subsets, kid_subset_size: d.subset_size, kid_seed: d.seed }
    }
}

impl KidArgs {
    /// The KID settings for sets of `n_real` and `n_fake` features, and whether the subset size
    /// was lowered to fit them.
    pub fn config(&self, n_real: usize, n_fake: usize) -> (KidConfig, bool) {
        let size = self.kid_subset_size.min(n_real).min(n_fake);
        let cfg = KidConfig { subsets: self.kid_subsets, subset_size: size, seed: self.kid_seed, ..Default::default() };
        (cfg, size < self.kid_subset_size)
    }
}

/// A metric that cannot be computed, why, and what to supply.
#[derive(Clone, Debug, PartialEq)]
pub struct Unavailable {
    pub metric: &'static str,
    pub reason: String,
    /// The flag / environment variable and the file it wants.
    pub supply: String,
    /// A file was named but could not be used (as opposed to none given).
    pub configured: bool,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} unavailable: {}; supply {}", self.metric, self.reason, self.supply)
    }
}

const TRUNK: &str = "--lpips-trunk FILE or DDREP_LPIPS_TRUNK (torchvision AlexNet `features.*` weights as safetensors)";
const HEADS: &str = "--lpips-heads FILE or DDREP_LPIPS_HEADS (lpips' weights/v0.1/alex.pth from the lpips 0.1.4 wheel, or a safetensors copy)";
const INCEPTION: &str = "--inception FILE or DDREP_INCEPTION (FID Inception-v3 weights pt_inception-2015-12-05 as safetensors)";

/// `Ok(path)` if given and present, else why not.
fn locate<'a>(metric: &'static str, what: &str, path: &'a Option<PathBuf>, supply: &str) -> Result<&'a Path, Unavailable> {
    match path {
        None => Err(Unavailable { metric, reason: format!("no {what} file given"), supply: supply.into(), configured: false }),
        Some(p) if !p.is_file() => {
            Err(Unavailable { metric, reason: format!("{what} file {} not found", p.display()), supply: supply.into(), configured: true })
        }
        Some(p) => Ok(p),
    }
}

impl WeightArgs {
    /// LPIPS from the trunk and heads files.
    pub fn lpips<B: Backend>(&self, device: &B::Device) -> Result<Lpips<B>, Unavailable> {
        let t = locate("lpips", "LPIPS trunk", &self.lpips_trunk, TRUNK)?;
        let h = locate("lpips", "LPIPS heads", &self.lpips_heads, HEADS)?;
        Lpips::from_files(t, h, device).map_err(|e| Unavailable {
            metric: "lpips",
            reason: format!("cannot load LPIPS from {} and {}: {e}", t.display(), h.display()),
            supply: format!("{TRUNK} and {HEADS}"),
            configured: true,
        })
    }

    /// The Inception network and the path it was read from.
    pub fn inception<B: Backend>(&self, device: &B::Device) -> Result<(InceptionV3<B>, PathBuf), Unavailable> {
        let p = locate("kid", "Inception", &self.inception, INCEPTION)?;
        match InceptionV3::from_file(p, device) {
            Ok(net) => Ok((net, p.to_path_buf())),
            Err(e) => Err(Unavailable { metric: "kid", reason: format!("cannot load Inception from {}: {e}", p.display()), supply: INCEPTION.into(), configured: true }),
        }
    }
}

/// An RGB image: `[3, H, W]` in [0, 1] and its 8-bit pixels (CHW).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub unit: Vec<f32>,
    pub bytes: Vec<u8>,
    pub shape: [usize; 3],
}

/// Reads a PNG/JPEG as RGB.
pub fn load_rgb(path: &Path) -> anyhow::Result<Loaded> {
    use anyhow::Context;
    let img = image::open(path).with_context(|| format!("cannot read image {}", path.display()))?.to_rgb8();
    Ok(rgb_to_loaded(img))
}

/// `load_rgb` on a file's bytes already read; `path` names it in errors.
pub fn load_rgb_bytes(bytes: &[u8], path: &Path) -> anyhow::Result<Loaded> {
    use anyhow::Context;
    let img = image::load_from_memory(bytes).with_context(|| format!("cannot read image {}", path.display()))?.to_rgb8();
    Ok(rgb_to_loaded(img))
}

fn rgb_to_loaded(img: image::RgbImage) -> Loaded {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.into_raw();
    let mut bytes = vec![0u8; raw.len()];
    for (i, px) in raw.chunks(3).enumerate() {
        for c in 0..3 {
            bytes[c * h * w + i] = px[c];
        }
    }
    Loaded { unit: bytes.iter().map(|&b| b as f32 / 255.0).collect(), bytes, shape: [3, h, w] }
}
