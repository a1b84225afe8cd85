//! `ddrep compare A B`: PSNR / SSIM / LPIPS (paired by file name) and KID (set against set)
//! for two images or two folders of images, like torch-fidelity's `fidelity` command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::backend::Cpu;
use super::metric_args::{load_rgb as load, KidArgs, Loaded, WeightArgs};
use crate::metrics::{self, ImageBatch, ResizeMode, SsimConfig};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// An image, or a folder of PNG/JPEG images.
    pub a: PathBuf,
    /// The image or folder to compare with (per-image metrics pair files by name).
    pub b: PathBuf,
    /// Metrics: psnr, ssim, lpips, kid.
    #[arg(long, default_value = "psnr,ssim", value_delimiter = ',')]
    pub metrics: Vec<String>,
    #[command(flatten)]
    pub weights: WeightArgs,
    #[command(flatten)]
    pub kid: KidArgs,
}

/// The images of a file or folder, by file name.
fn list(path: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    if path.is_file() {
        out.insert(path.file_name().unwrap_or_default().to_string_lossy().into_owned(), path.to_path_buf());
    } else if path.is_dir() {
        for e in std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))? {
            let p = e?.path();
            let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            if p.is_file() && ["png", "jpg", "jpeg"].contains(&ext.as_str()) {
                out.insert(p.file_name().unwrap_or_default().to_string_lossy().into_owned(), p);
            }
        }
    } else if path.exists() {
        bail!("{} is neither an image file nor a folder of images", path.display());
    } else {
        bail!("{} does not exist", path.display());
    }
    if out.is_empty() {
        bail!("{} holds no PNG or JPEG images", path.display());
    }
    Ok(out)
}

pub fn compare(a: &CompareArgs) -> Result<()> {
    for m in &a.metrics {
        if !["psnr", "ssim", "lpips", "kid"].contains(&m.as_str()) {
            bail!("unknown metric '{m}' (expected psnr, ssim, lpips, kid)");
        }
    }
    let want = |m: &str| a.metrics.iter().any(|x| x == m);
    let (la, lb) = (list(&a.a)?, list(&a.b)?);
    // Two single files pair with each other whatever their names.
    let pairs: Vec<(PathBuf, PathBuf)> = if a.a.is_file() && a.b.is_file() {
        vec![(a.a.clone(), a.b.clone())]
    } else {
        la.iter().filter_map(|(n, p)| lb.get(n).map(|q| (p.clone(), q.clone()))).collect()
    };
    let device = Default::default();
    // Printed once everything is computed: an error leaves no half table on stdout.
    let mut table = vec!["| metric | mean ± std | n |\n|---|---|---|".to_string()];
    let per_image = ["psnr", "ssim", "lpips"].iter().any(|m| want(m));
    if per_image && pairs.is_empty() {
        bail!("no image names in common between {} and {}: per-image metrics pair files by name", a.a.display(), a.b.display());
    }
    let lpips = if want("lpips") {
        match a.weights.lpips::<Cpu>(&device) {
            Ok(l) => Some(l),
            Err(u) if u.configured => bail!("{u}"),
            Err(u) => {
                table.push(format!("| lpips | unavailable: {}; supply {} | - |", u.reason, u.supply));
                None
            }
        }
    } else {
        None
    };
    if per_image {
        let (mut ps, mut ss, mut ls) = (Vec::new(), Vec::new(), Vec::new());
        for (pa, pb) in &pairs {
            let (x, y) = (load(pa)?, load(pb)?);
            if x.shape != y.shape {
                bail!("{} is {:?} but {} is {:?}: paired images must have the same size", pa.display(), x.shape, pb.display(), y.shape);
            }
            let what = pa.display().to_string();
            let (ix, iy) = (ImageBatch::single(&what, &x.unit, x.shape)?, ImageBatch::single(&what, &y.unit, y.shape)?);
            if want("psnr") {
                ps.push(metrics::psnr(&ix, &iy, 1.0)?);
            }
            if want("ssim") {
                ss.push(metrics::ssim(&ix, &iy, &SsimConfig::default())?);
            }
            if let Some(l) = &lpips {
                ls.push(l.distance(&ix, &iy, true, &device)?.distance[0] as f64);
            }
        }
        for (name, v) in [("psnr", &ps), ("ssim", &ss), ("lpips", &ls)] {
            if !v.is_empty() {
                table.push(format!("| {name} | {} | {} |", super::score::mean_pm(v, 4), v.len()));
            }
        }
        let unpaired = la.len().max(lb.len()) - pairs.len();
        if unpaired > 0 {
            table.push(format!("\n{unpaired} image(s) had no partner of the same name and were left out of the per-image metrics"));
        }
    }
    if want("kid") {
        match a.weights.inception::<Cpu>(&device) {
            Err(u) if u.configured => bail!("{u}"),
            Err(u) => table.push(format!("| kid | unavailable: {}; supply {} | - |", u.reason, u.supply)),
            Ok((net, _)) => {
                let feats = |set: &BTreeMap<String, PathBuf>| -> Result<metrics::FeatureMatrix> {
                    let imgs: Vec<Loaded> = set.values().map(|p| load(p)).collect::<Result<_>>()?;
                    let shape = imgs[0].shape;
                    if let Some((n, _)) = set.iter().zip(&imgs).find(|(_, i)| i.shape != shape) {
                        bail!("{} has a different size from the rest of its set: KID batches need one size", n.1.display());
                    }
                    let bytes: Vec<u8> = imgs.iter().flat_map(|i| i.bytes.iter().cloned()).collect();
                    Ok(net.pool_features(&bytes, [imgs.len(), 3, shape[1], shape[2]], ResizeMode::Torchmetrics, 16, &device)?)
                };
                let (fa, fb) = (feats(&la)?, feats(&lb)?);
                let (cfg, _) = a.kid.config(fb.rows(), fa.rows());
                let r = metrics::kid(&fb, &fa, &cfg)?;
                table.push(format!("| kid | {:.6} ± {:.6} | {} vs {} (subsets {} of {}) |", r.mean, r.std, la.len(), lb.len(), cfg.subsets, cfg.subset_size));
            }
        }
    }
    println!("{}", table.join("\n"));
    Ok(())
}
