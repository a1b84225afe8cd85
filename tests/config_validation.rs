//! The numeric checks of the configs that YAML and the library hand the samplers: every
//! non-finite or out-of-range value is refused with an error naming the key, NaN included
//! (NaN compares false both ways, so a check written as `x <= 0` alone would let it through),
//! and the defaults and the boundary values that are allowed pass.

use ddrep::diffrep::{SirenConfig, VoxNerfConfig};
use ddrep::methods::solver::SolverConfig;
use ddrep::models::analytic::{AnalyticConfig, AnalyticPrior};

/// `result` is an error whose message contains `key`.
fn refused<T>(what: &str, result: anyhow::Result<T>, key: &str) {
    match result {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => assert!(format!("{e:#}").contains(key), "{what}: '{key}' not in: {e:#}"),
    }
}

#[test]
fn solver_refuses_nan_and_out_of_range() {
    let adam = |beta_1: f64, beta_2: f64, epsilon: f64| SolverConfig::Adam { steps: 10, lr: 1e-3, beta_1, beta_2, epsilon };
    SolverConfig::default().validate().unwrap();
    adam(0.0, 0.999, 1e-8).validate().unwrap();
    adam(0.9, 0.999, f64::INFINITY).validate().unwrap();
    for (beta_1, beta_2, epsilon) in [(0.9, 0.999, f64::NAN), (0.9, 0.999, 0.0), (0.9, 0.999, -1e-8), (f64::NAN, 0.999, 1e-8), (0.9, 1.0, 1e-8), (-0.1, 0.999, 1e-8)] {
        refused(&format!("betas ({beta_1}, {beta_2}), epsilon {epsilon}"), adam(beta_1, beta_2, epsilon).validate(), "epsilon positive");
    }
    for lr in [f64::NAN, 0.0, f64::INFINITY] {
        refused(&format!("lr {lr}"), SolverConfig::Adam { steps: 10, lr, beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 }.validate(), "solver.lr");
    }
}

#[test]
fn siren_refuses_nan_and_reversed_coordinates() {
    SirenConfig::default().validate().unwrap();
    for range in [[1.0, -1.0], [0.5, 0.5], [f64::NAN, 1.0], [-1.0, f64::NAN]] {
        refused(&format!("coord_range {range:?}"), SirenConfig { coord_range: range, ..Default::default() }.validate(), "siren.coord_range");
    }
}

#[test]
fn voxnerf_refuses_nan_and_out_of_range() {
    VoxNerfConfig::default().validate().unwrap();
    VoxNerfConfig { feature_init_std: 0.0, ..Default::default() }.validate().unwrap();
    let blob = [("blob_radius", f64::NAN), ("blob_radius", 0.0), ("blob_radius", f64::INFINITY), ("blob_lambda", f64::NAN), ("blob_lambda", f64::NEG_INFINITY)];
    for (key, x) in blob {
        let mut c = VoxNerfConfig::default();
        *if key == "blob_radius" { &mut c.blob_radius } else { &mut c.blob_lambda } = x;
        refused(&format!("{key} {x}"), c.validate(), "voxnerf.blob_radius");
    }
    for (key, x) in [("feature_init_std", f64::NAN), ("feature_init_std", -0.1), ("density_shift", f64::NAN), ("density_log_scale", f64::INFINITY)] {
        let mut c = VoxNerfConfig::default();
        *match key {
            "feature_init_std" => &mut c.feature_init_std,
            "density_shift" => &mut c.density_shift,
            _ => &mut c.density_log_scale,
        } = x;
        refused(&format!("{key} {x}"), c.validate(), "voxnerf.feature_init_std");
    }
}

#[test]
fn analytic_prior_refuses_nan_and_out_of_range() {
    let base = || AnalyticConfig { captions: vec!["a".into()], ..Default::default() };
    AnalyticPrior::new(base()).unwrap();
    AnalyticPrior::new(AnalyticConfig { mean_scale: 0.0, ..base() }).unwrap();
    type Set = fn(&mut AnalyticConfig, f64);
    let cases: [(&str, Set, f64); 7] = [
        ("exponent", |c, x| c.exponent = x, f64::NAN),
        ("exponent", |c, x| c.exponent = x, f64::INFINITY),
        ("mean_scale", |c, x| c.mean_scale = x, f64::NAN),
        ("mean_scale", |c, x| c.mean_scale = x, -0.5),
        ("chroma_weight", |c, x| c.chroma_weight = x, f64::NAN),
        ("chroma_weight", |c, x| c.chroma_weight = x, 0.0),
        ("chroma_weight", |c, x| c.chroma_weight = x, f64::INFINITY),
    ];
    for (key, set, x) in cases {
        let mut c = base();
        set(&mut c, x);
        refused(&format!("{key} {x}"), AnalyticPrior::new(c), "exponent, mean_scale and chroma_weight");
    }
}
