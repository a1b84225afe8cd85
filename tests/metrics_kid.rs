//! KID parity with torchmetrics' `KernelInceptionDistance` on fixed features and fixed subsets.

mod metrics_support;

use ddrep::metrics::kid::draw_subsets;
use ddrep::metrics::{kid, kid_with_subsets, FeatureMatrix, KidConfig, MetricError};
use metrics_support::*;

fn indices(v: &serde_json::Value) -> Vec<Vec<usize>> {
    v.as_array().unwrap().iter().map(|s| s.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect()).collect()
}

fn features() -> (FeatureMatrix, FeatureMatrix) {
    let fx = Fixture::open("kid.safetensors");
    let (sr, r) = fx.get("real_features");
    let (sf, f) = fx.get("fake_features");
    (
        FeatureMatrix::with_shape("real", r, [sr[0], sr[1]], 2048).unwrap(),
        FeatureMatrix::with_shape("fake", f, [sf[0], sf[1]], 2048).unwrap(),
    )
}

#[test]
fn kid_matches_torchmetrics_on_recorded_subsets() {
    let j = load_json("kid.json");
    let tol = j["tolerance_abs"].as_f64().unwrap();
    let (real, fake) = features();
    let p = &j["params"];
    let cfg = KidConfig {
        subsets: p["subsets"].as_u64().unwrap() as usize,
        subset_size: p["subset_size"].as_u64().unwrap() as usize,
        degree: p["degree"].as_i64().unwrap() as i32,
        gamma: None,
        coef: p["coef"].as_f64().unwrap(),
        seed: 0,
    };
    let (sr, sf) = (indices(&j["subset_indices_real"]), indices(&j["subset_indices_fake"]));
    let r = kid_with_subsets(&real, &fake, &cfg, &sr, &sf).unwrap();
    let want = nums(&j["per_subset_mmd_f64"]).unwrap();
    let mut worst = 0.0f64;
    for (a, b) in r.per_subset.iter().zip(&want) {
        worst = worst.max((a - b).abs());
    }
    let (m, s) = (j["kid_mean"].as_f64().unwrap(), j["kid_std"].as_f64().unwrap());
    let tm32 = (j["torchmetrics_f32"]["mean"].as_f64().unwrap(), j["torchmetrics_f32"]["std"].as_f64().unwrap());
    println!(
        "KID ours {:.10} ± {:.10}; f64 ref {m:.10} ± {s:.10}; max per-subset err {worst:.3e}; vs torchmetrics f32: mean {:.3e} std {:.3e}",
        r.mean, r.std, (r.mean - tm32.0).abs(), (r.std - tm32.1).abs()
    );
    assert!(worst <= 1e-9, "per-subset MMD deviates by {worst}");
    assert!((r.mean - m).abs() <= 1e-9 && (r.std - s).abs() <= 1e-9);
    assert!((r.mean - tm32.0).abs() <= tol && (r.std - tm32.1).abs() <= tol);
    // The population std, not the ddof=1 one.
    assert!((r.std - j["kid_std_sample_ddof1_for_reference"].as_f64().unwrap()).abs() > 1e-6);

    // The MMD of the first 100 real vs the first 100 fake rows (single subset, both code paths).
    let first: Vec<usize> = (0..100).collect();
    let one = kid_with_subsets(&real, &fake, &KidConfig { subset_size: 100, ..cfg }, std::slice::from_ref(&first), std::slice::from_ref(&first)).unwrap();
    let want = j["extra_mmd_first100_real_vs_first100_fake_f64"].as_f64().unwrap();
    assert!((one.mean - want).abs() <= 1e-9, "{} vs {want}", one.mean);
    assert_eq!(one.std, 0.0);
}

#[test]
fn kid_seeded_subsets_are_deterministic() {
    let (real, fake) = features();
    let cfg = KidConfig { subsets: 20, subset_size: 50, seed: 7, ..KidConfig::default() };
    let a = kid(&real, &fake, &cfg).unwrap();
    let b = kid(&real, &fake, &cfg).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.per_subset.len(), 20);
    let c = kid(&real, &fake, &KidConfig { seed: 8, ..cfg }).unwrap();
    assert_ne!(a.per_subset, c.per_subset);
    // Subsets: no repeats inside one, in range.
    let (sr, sf) = draw_subsets(120, 100, &cfg).unwrap();
    for s in sr.iter().chain(&sf) {
        let mut u = s.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 50);
    }
    assert!(sr.iter().flatten().all(|&i| i < 120) && sf.iter().flatten().all(|&i| i < 100));
    // Same value as the explicit-subset entry point on the drawn subsets.
    let d = kid_with_subsets(&real, &fake, &cfg, &sr, &sf).unwrap();
    assert_eq!(a, d);
    // Identical sets: KID close to 0.
    let z = kid(&real, &real, &KidConfig { subsets: 10, subset_size: 60, ..KidConfig::default() }).unwrap();
    assert!(z.mean.abs() < 0.01, "{z:?}");
}

#[test]
fn kid_bad_input_errors() {
    let (real, fake) = features();
    // Wrong feature dimension (a 64-d feature file where 2048 is expected).
    let e = FeatureMatrix::with_shape("fake", vec![0.0; 10 * 64], [10, 64], 2048).unwrap_err();
    assert!(matches!(e, MetricError::FeatureDim { expected: 2048, got: 64, .. }), "{e}");
    println!("{e}");
    let small = FeatureMatrix::new("fake", vec![0.5; 10 * 64], 64).unwrap();
    assert!(matches!(kid(&real, &small, &KidConfig { subset_size: 5, ..KidConfig::default() }), Err(MetricError::FeatureDim { .. })));
    // Ragged data.
    assert!(matches!(FeatureMatrix::new("real", vec![0.0; 2049], 2048), Err(MetricError::FeatureDim { .. })));
    // Empty set.
    assert!(matches!(FeatureMatrix::new("real", vec![], 2048), Err(MetricError::Empty(_))));
    // NaN feature.
    let mut v = vec![0.0f32; 4096];
    v[3000] = f32::NAN;
    assert!(matches!(FeatureMatrix::new("real", v, 2048), Err(MetricError::NonFinite { index: 3000, .. })));
    // Default subset size 1000 > 120 real samples: torchmetrics raises too.
    let e = kid(&real, &fake, &KidConfig::default()).unwrap_err();
    assert!(matches!(e, MetricError::SubsetTooLarge { subset_size: 1000, .. }), "{e}");
    println!("{e}");
    let e = kid(&real, &fake, &KidConfig { subset_size: 110, ..KidConfig::default() }).unwrap_err();
    assert!(matches!(e, MetricError::SubsetTooLarge { which: "fake", n: 100, .. }), "{e}");
    // Subset of one sample, zero subsets, out-of-range index.
    assert!(kid(&real, &fake, &KidConfig { subset_size: 1, ..KidConfig::default() }).is_err());
    assert!(kid(&real, &fake, &KidConfig { subsets: 0, subset_size: 10, ..KidConfig::default() }).is_err());
    assert!(kid_with_subsets(&real, &fake, &KidConfig::default(), &[vec![0, 500]], &[vec![0, 1]]).is_err());
}

/// `k(x, y) = (x·y / dim + 1)^3`, torchmetrics' default kernel, in f64.
fn poly_kernel(a: &FeatureMatrix, i: usize, b: &FeatureMatrix, j: usize) -> f64 {
    let d: f64 = a.row(i).iter().zip(b.row(j)).map(|(&x, &y)| x as f64 * y as f64).sum();
    (d / a.dim() as f64 + 1.0).powi(3)
}

/// The expectation of one subset's MMD² when each subset is a uniform draw without
/// replacement: the unbiased estimator's terms average to the full sets' pair means
/// (i != j within a set, all pairs across).
fn expected_subset_mmd2(real: &FeatureMatrix, fake: &FeatureMatrix) -> f64 {
    let within = |x: &FeatureMatrix| {
        let n = x.rows();
        let s: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| poly_kernel(x, i, x, j)).sum();
        s / (n * (n - 1)) as f64
    };
    let cross: f64 = (0..real.rows()).flat_map(|i| (0..fake.rows()).map(move |j| (i, j))).map(|(i, j)| poly_kernel(real, i, fake, j)).sum::<f64>() / (real.rows() * fake.rows()) as f64;
    within(real) + within(fake) - 2.0 * cross
}

/// The seeded subset draw is uniform without replacement: each row is picked m/n of the time
/// (binomial error bars), and the mean KID over many subsets equals its exact expectation
/// within 4 standard errors. Draws with replacement, as a check that the test can fail, miss it.
#[test]
fn kid_subset_draw_is_uniform_and_its_mean_is_unbiased() {
    let (real, fake) = features();
    let (s, m) = (3000usize, 20usize);
    let cfg = KidConfig { subsets: s, subset_size: m, seed: 11, ..KidConfig::default() };
    let (sr, sf) = draw_subsets(real.rows(), fake.rows(), &cfg).unwrap();
    for (sets, n) in [(&sr, real.rows()), (&sf, fake.rows())] {
        let mut count = vec![0usize; n];
        for i in sets.iter().flatten() {
            count[*i] += 1;
        }
        let p = m as f64 / n as f64;
        let (mean, sd) = (s as f64 * p, (s as f64 * p * (1.0 - p)).sqrt());
        for (i, &c) in count.iter().enumerate() {
            assert!((c as f64 - mean).abs() <= 5.0 * sd, "row {i} of {n} drawn {c} times, expected {mean:.0} +- {sd:.1}");
        }
        let chi2: f64 = count.iter().map(|&c| (c as f64 - mean).powi(2) / (mean * (1.0 - p))).sum();
        // chi² with n - 1 degrees of freedom: mean n - 1, sd sqrt(2 (n - 1)).
        let dof = (n - 1) as f64;
        assert!((chi2 - dof).abs() <= 4.0 * (2.0 * dof).sqrt(), "chi² {chi2:.1} for {dof} degrees of freedom");
    }
    let want = expected_subset_mmd2(&real, &fake);
    let got = kid(&real, &fake, &cfg).unwrap();
    let se = got.std / (s as f64).sqrt();
    assert!(se > 0.0 && se < 0.1 * want.abs(), "standard error {se} against {want}");
    assert!((got.mean - want).abs() <= 4.0 * se, "mean KID over {s} subsets {} vs expected {want} (s.e. {se})", got.mean);
    // With replacement a subset can hold a row twice, and k(x, x) enters the within-set sums.
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut draw = |n: usize| (0..s).map(|_| (0..m).map(|_| rng.random_range(0..n)).collect::<Vec<_>>()).collect::<Vec<_>>();
    let (wr, wf) = (draw(real.rows()), draw(fake.rows()));
    let biased = kid_with_subsets(&real, &fake, &cfg, &wr, &wf).unwrap();
    let bse = biased.std / (s as f64).sqrt();
    eprintln!("expected {want:.6}; without replacement {:.6} +- {se:.6}; with replacement {:.6} +- {bse:.6}", got.mean, biased.mean);
    assert!((biased.mean - want).abs() > 4.0 * bse, "draws with replacement should miss: {} vs {want} (s.e. {bse})", biased.mean);
}
