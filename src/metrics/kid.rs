//! Kernel Inception Distance (Bińkowski et al. 2018) as torchmetrics 1.9.0
//! `KernelInceptionDistance` computes it from feature matrices.
//!
//! Per subset of `m` real and `m` fake rows, with `k(x, y) = (gamma x·y + coef)^degree`
//! (`gamma = 1/d` by default):
//! `mmd² = (ΣKxx - tr Kxx + ΣKyy - tr Kyy) / (m(m-1)) - 2 ΣKxy / m²` (unbiased).
//! The result is the mean and the **population** std (`std(unbiased=False)`) over the subsets.
//! torchmetrics defaults: 100 subsets of 1000, degree 3, coef 1.
//!
//! torchmetrics draws each subset with `torch.randperm(n)[:m]` (real, then fake), which cannot be
//! reproduced outside torch; [`kid`] draws them from a seeded ChaCha8 stream instead
//! (`rand::seq::index::sample`, without replacement), and [`kid_with_subsets`] takes explicit
//! index lists (used for the parity test). Sums are accumulated in f64 (torchmetrics works in the
//! features' dtype, f32 by default; the difference is ~1e-9 on KID).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{check_finite, mean_std, MetricError, MetricResult};

/// `n x dim` row-major feature vectors (e.g. 2048-d Inception pool features).
#[derive(Clone, Debug)]
pub struct FeatureMatrix {
    data: Vec<f32>,
    n: usize,
    dim: usize,
}

impl FeatureMatrix {
    /// Wraps `data` as rows of `dim` values; errors if empty, ragged or non-finite.
    pub fn new(what: &str, data: Vec<f32>, dim: usize) -> MetricResult<Self> {
        if dim == 0 {
            return Err(MetricError::InvalidParam(format!("{what}: feature dimension 0")));
        }
        if data.is_empty() {
            return Err(MetricError::Empty(format!("{what}: no feature vectors")));
        }
        if !data.len().is_multiple_of(dim) {
            return Err(MetricError::FeatureDim {
                what: format!("{what}: {} values are not a whole number of rows", data.len()),
                expected: dim,
                got: data.len() % dim,
            });
        }
        check_finite(what, &data)?;
        let n = data.len() / dim;
        Ok(Self { data, n, dim })
    }

    /// Wraps an `[n, dim]` matrix and checks `dim == expected_dim` (e.g. 2048 for a feature file).
    pub fn with_shape(what: &str, data: Vec<f32>, shape: [usize; 2], expected_dim: usize) -> MetricResult<Self> {
        if shape[1] != expected_dim {
            return Err(MetricError::FeatureDim { what: what.to_string(), expected: expected_dim, got: shape[1] });
        }
        if data.len() != shape[0] * shape[1] {
            return Err(MetricError::DataLength {
                what: what.to_string(),
                shape: shape.to_vec(),
                expected: shape[0] * shape[1],
                got: data.len(),
            });
        }
        Self::new(what, data, expected_dim)
    }

    pub fn rows(&self) -> usize {
        self.n
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
}

/// KID parameters; `Default` is torchmetrics' (`subsets=100, subset_size=1000, degree=3,
/// gamma=None, coef=1.0`) plus the seed of the subset draw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KidConfig {
    pub subsets: usize,
    pub subset_size: usize,
    pub degree: i32,
    /// `None`: `1 / dim`.
    pub gamma: Option<f64>,
    pub coef: f64,
    pub seed: u64,
}

impl Default for KidConfig {
    fn default() -> Self {
        Self { subsets: 100, subset_size: 1000, degree: 3, gamma: None, coef: 1.0, seed: 0 }
    }
}

/// KID over the subsets: mean, population std, and each subset's MMD².
#[derive(Clone, Debug, PartialEq)]
pub struct KidResult {
    pub mean: f64,
    pub std: f64,
    pub per_subset: Vec<f64>,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for q in 0..4 {
            acc[q] += x[q] as f64 * y[q] as f64;
        }
    }
    let mut s = acc[0] + acc[1] + acc[2] + acc[3];
    for (x, y) in ra.iter().zip(rb) {
        s += *x as f64 * *y as f64;
    }
    s
}

/// `out[i*bj.len() + j] = a.row(ai[i]) · b.row(bj[j])`, split over threads by rows.
fn dots(a: &FeatureMatrix, ai: &[usize], b: &FeatureMatrix, bj: &[usize]) -> Vec<f64> {
    let cols = bj.len();
    let mut out = vec![0.0f64; ai.len() * cols];
    if out.is_empty() {
        return out;
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(ai.len()).max(1);
    let rows_per = ai.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (chunk, rows) in out.chunks_mut(rows_per * cols).zip(ai.chunks(rows_per)) {
            s.spawn(move || {
                for (r, &i) in rows.iter().enumerate() {
                    let x = a.row(i);
                    for (c, &j) in bj.iter().enumerate() {
                        chunk[r * cols + c] = dot(x, b.row(j));
                    }
                }
            });
        }
    });
    out
}

/// Dot products for the subsets: either full Gram matrices (computed once) or per subset.
enum Dots {
    Full { rr: Vec<f64>, ff: Vec<f64>, rf: Vec<f64>, nr: usize, nf: usize },
    PerSubset,
}

/// Precompute full Gram matrices when they take at most this many f64 entries (256 MiB).
const FULL_GRAM_MAX_ENTRIES: usize = 1 << 25;

fn mmd2(k: impl Fn(f64) -> f64, m: usize, xx: &dyn Fn(usize, usize) -> f64, yy: &dyn Fn(usize, usize) -> f64, xy: &dyn Fn(usize, usize) -> f64) -> f64 {
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for i in 0..m {
        for j in 0..m {
            if i != j {
                sxx += k(xx(i, j));
                syy += k(yy(i, j));
            }
            sxy += k(xy(i, j));
        }
    }
    let mf = m as f64;
    (sxx + syy) / (mf * (mf - 1.0)) - 2.0 * sxy / (mf * mf)
}

/// KID on explicit subsets: `subsets_real[s]` and `subsets_fake[s]` are the row indices of
/// subset `s` (all of one size `m >= 2`), as torchmetrics' `randperm(n)[:m]` would give.
pub fn kid_with_subsets(
    real: &FeatureMatrix,
    fake: &FeatureMatrix,
    cfg: &KidConfig,
    subsets_real: &[Vec<usize>],
    subsets_fake: &[Vec<usize>],
) -> MetricResult<KidResult> {
    if real.dim() != fake.dim() {
        return Err(MetricError::FeatureDim { what: "fake features vs real features".into(), expected: real.dim(), got: fake.dim() });
    }
    if subsets_real.is_empty() || subsets_real.len() != subsets_fake.len() {
        return Err(MetricError::InvalidParam(format!(
            "need the same non-zero number of real and fake subsets, got {} and {}",
            subsets_real.len(),
            subsets_fake.len()
        )));
    }
    let m = subsets_real[0].len();
    if m < 2 {
        return Err(MetricError::InvalidParam(format!("KID subset size must be >= 2 (unbiased MMD divides by m(m-1)), got {m}")));
    }
    for (which, sets, n) in [("real", subsets_real, real.rows()), ("fake", subsets_fake, fake.rows())] {
        if m > n {
            return Err(MetricError::SubsetTooLarge { subset_size: m, which, n });
        }
        for s in sets {
            if s.len() != m {
                return Err(MetricError::InvalidParam(format!("{which} subsets differ in size ({} vs {m})", s.len())));
            }
            if let Some(&bad) = s.iter().find(|&&i| i >= n) {
                return Err(MetricError::InvalidParam(format!("{which} subset index {bad} out of range (n = {n})")));
            }
        }
    }
    let gamma = cfg.gamma.unwrap_or(1.0 / real.dim() as f64);
    if !(gamma.is_finite() && cfg.coef.is_finite() && cfg.degree >= 1) {
        return Err(MetricError::InvalidParam(format!("KID kernel needs finite gamma/coef and degree >= 1: {cfg:?}")));
    }
    let (coef, degree) = (cfg.coef, cfg.degree);
    let k = move |d: f64| (gamma * d + coef).powi(degree);

    let (nr, nf) = (real.rows(), fake.rows());
    let total = (nr + nf) * (nr + nf);
    let full_cost = total;
    let subset_cost = subsets_real.len() * 3 * m * m;
    let plan = if total <= FULL_GRAM_MAX_ENTRIES && full_cost <= subset_cost.saturating_mul(2) {
        let (ar, af): (Vec<usize>, Vec<usize>) = ((0..nr).collect(), (0..nf).collect());
        Dots::Full { rr: dots(real, &ar, real, &ar), ff: dots(fake, &af, fake, &af), rf: dots(real, &ar, fake, &af), nr, nf }
    } else {
        Dots::PerSubset
    };
    let mut per_subset = Vec::with_capacity(subsets_real.len());
    for (sr, sf) in subsets_real.iter().zip(subsets_fake) {
        let v = match &plan {
            Dots::Full { rr, ff, rf, nr, nf } => mmd2(
                k,
                m,
                &|i, j| rr[sr[i] * nr + sr[j]],
                &|i, j| ff[sf[i] * nf + sf[j]],
                &|i, j| rf[sr[i] * nf + sf[j]],
            ),
            Dots::PerSubset => {
                let xx = dots(real, sr, real, sr);
                let yy = dots(fake, sf, fake, sf);
                let xy = dots(real, sr, fake, sf);
                mmd2(k, m, &|i, j| xx[i * m + j], &|i, j| yy[i * m + j], &|i, j| xy[i * m + j])
            }
        };
        per_subset.push(v);
    }
    let (mean, std) = mean_std(&per_subset);
    Ok(KidResult { mean, std, per_subset })
}

/// Row-index subsets: `(real subsets, fake subsets)`.
pub type Subsets = (Vec<Vec<usize>>, Vec<Vec<usize>>);

/// Draws `cfg.subsets` pairs of index subsets of size `cfg.subset_size` without replacement from
/// a ChaCha8 stream seeded with `cfg.seed` (real first, then fake, per subset).
pub fn draw_subsets(n_real: usize, n_fake: usize, cfg: &KidConfig) -> MetricResult<Subsets> {
    let m = cfg.subset_size;
    if cfg.subsets == 0 {
        return Err(MetricError::InvalidParam("KID needs at least one subset".into()));
    }
    if n_real == 0 || n_fake == 0 {
        return Err(MetricError::Empty(format!("KID feature sets: {n_real} real, {n_fake} fake")));
    }
    if m > n_real {
        return Err(MetricError::SubsetTooLarge { subset_size: m, which: "real", n: n_real });
    }
    if m > n_fake {
        return Err(MetricError::SubsetTooLarge { subset_size: m, which: "fake", n: n_fake });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut r = Vec::with_capacity(cfg.subsets);
    let mut f = Vec::with_capacity(cfg.subsets);
    for _ in 0..cfg.subsets {
        r.push(rand::seq::index::sample(&mut rng, n_real, m).into_vec());
        f.push(rand::seq::index::sample(&mut rng, n_fake, m).into_vec());
    }
    Ok((r, f))
}

/// KID with `cfg.subsets` seeded random subsets of `cfg.subset_size` (torchmetrics' procedure,
/// with a seeded ChaCha8 draw in place of `torch.randperm`).
pub fn kid(real: &FeatureMatrix, fake: &FeatureMatrix, cfg: &KidConfig) -> MetricResult<KidResult> {
    if real.dim() != fake.dim() {
        return Err(MetricError::FeatureDim { what: "fake features vs real features".into(), expected: real.dim(), got: fake.dim() });
    }
    let (sr, sf) = draw_subsets(real.rows(), fake.rows(), cfg)?;
    kid_with_subsets(real, fake, cfg, &sr, &sf)
}
