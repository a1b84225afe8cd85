//! LPIPS parity with lpips 0.1.4 (AlexNet trunk from the splitmix64 weight rule, real v0.1 heads).
//!
//! The heads are read from `$DDREP_SHARED/lpips/alex_v0.1.pth` (legacy torch pickle, read in pure
//! Rust); the tests that need them print "skipped: DDREP_SHARED not set" and return when unset.

mod metrics_support;

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use ddrep::backend::Cpu;
use ddrep::metrics::legacy_pth::read_legacy_pth;
use ddrep::metrics::lpips::{load_lpips_heads, ALEX_CHANNELS};
use ddrep::metrics::{ImageBatch, Lpips, MetricError, TensorStore};
use metrics_support::*;

type B = Cpu;

fn heads_path() -> Option<PathBuf> {
    match std::env::var_os("DDREP_SHARED") {
        Some(d) => Some(PathBuf::from(d).join("lpips/alex_v0.1.pth")),
        None => {
            println!("skipped: DDREP_SHARED not set");
            None
        }
    }
}

/// Heads of the right shapes filled with ones (for the trunk-only checks).
fn dummy_heads() -> TensorStore {
    let mut s = TensorStore::new("dummy heads");
    for (k, &c) in ALEX_CHANNELS.iter().enumerate() {
        s.insert(format!("lin{k}.model.1.weight"), vec![1, c, 1, 1], vec![1.0; c]).unwrap();
    }
    s
}

fn tensor(fx: &Fixture, name: &str) -> Tensor<B, 4> {
    let (s, v) = fx.get(name);
    Tensor::from_data(TensorData::new(v, shape4(&s)), &Default::default())
}

fn host(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

#[test]
fn alexnet_rule_trunk_matches_debug_activations() {
    let trunk = rule_store("alexnet");
    let lp = Lpips::<B>::from_stores(&trunk, &dummy_heads(), &Default::default()).unwrap();
    let fx = Fixture::open("lpips.safetensors");
    let j = load_json("lpips.json");
    let rel = j["tolerance_abs"].as_f64().map(|_| 1e-3).unwrap();
    let t = lp.trace(tensor(&fx, "p00.in0"), tensor(&fx, "p00.in1"));
    let mut worst = 0.0f64;
    for k in 0..5 {
        for (side, ours) in [("in0", &t.relu0[k]), ("in1", &t.relu1[k])] {
            let (s, want) = fx.get(&format!("debug.relu{}.{side}", k + 1));
            assert_eq!(ours.dims().to_vec(), s);
            worst = worst.max(check_rel(&format!("relu{} {side}", k + 1), &host(ours.clone()), &want, rel));
        }
    }
    println!("AlexNet trunk (rule weights): max |a-b|/max|b| = {worst:.3e}");
}

#[test]
fn lpips_matches_lpips_package() {
    let Some(hp) = heads_path() else { return };
    let heads = load_lpips_heads(&hp).unwrap();
    let j = load_json("lpips.json");
    // The pure-Rust legacy reader gives the heads lpips.json describes.
    for (k, h) in j["heads"]["keys"].as_array().unwrap().iter().enumerate() {
        let name = h["key"].as_str().unwrap();
        let t = heads.get(name, &[1, ALEX_CHANNELS[k], 1, 1]).unwrap();
        let sum: f64 = t.data.iter().map(|&x| x as f64).sum();
        assert!((sum - h["sum_f64"].as_f64().unwrap()).abs() < 1e-9, "{name} sum {sum}");
        for (a, b) in t.data.iter().zip(nums(&h["first4"]).unwrap()) {
            assert!((*a as f64 - b).abs() <= 1e-12 * b.abs().max(1e-30), "{name}: {a} vs {b}");
        }
    }
    let trunk = rule_store("alexnet");
    let dev = Default::default();
    let lp = Lpips::<B>::from_stores(&trunk, &heads, &dev).unwrap();
    let fx = Fixture::open("lpips.safetensors");
    let tol = j["tolerance_abs"].as_f64().unwrap();
    let (mut worst, mut worst_layer) = (0.0f64, 0.0f64);
    let pairs = j["pairs"].as_array().unwrap();
    assert!(pairs.len() >= 10);
    for p in pairs {
        let name = p["name"].as_str().unwrap();
        let (s0, a) = fx.get(p["in0"].as_str().unwrap());
        let (s1, b) = fx.get(p["in1"].as_str().unwrap());
        let i0 = ImageBatch::new("in0", &a, shape4(&s0)).unwrap();
        let i1 = ImageBatch::new("in1", &b, shape4(&s1)).unwrap();
        let v = lp.distance(&i0, &i1, false, &dev).unwrap();
        for (x, y) in v.distance.iter().zip(nums(&p["lpips"]).unwrap()) {
            let d = (*x as f64 - y).abs();
            assert!(d <= tol, "{name}: lpips {x} vs {y}");
            worst = worst.max(d);
        }
        for (k, layer) in p["per_layer"].as_array().unwrap().iter().enumerate() {
            for (x, y) in v.per_layer[k].iter().zip(nums(layer).unwrap()) {
                let d = (*x as f64 - y).abs();
                assert!(d <= tol, "{name}: layer {k}: {x} vs {y}");
                worst_layer = worst_layer.max(d);
            }
        }
    }
    // Debug head maps of p00.
    let t = lp.trace(tensor(&fx, "p00.in0"), tensor(&fx, "p00.in1"));
    let mut worst_map = 0.0f64;
    for k in 0..5 {
        let (_, want) = fx.get(&format!("debug.lin{k}_map"));
        worst_map = worst_map.max(check_rel(&format!("lin{k}_map"), &host(t.lin_maps[k].clone()), &want, 1e-3));
    }
    println!("LPIPS max abs error: distance {worst:.3e}, per layer {worst_layer:.3e}; head maps rel {worst_map:.3e}");
}

#[test]
fn lpips_bad_input_errors() {
    let trunk = rule_store("alexnet");
    let dev = Default::default();
    let lp = Lpips::<B>::from_stores(&trunk, &dummy_heads(), &dev).unwrap();
    let a = vec![0.0f32; 3 * 32 * 32];
    let b = vec![0.0f32; 3 * 32 * 40];
    let ia = ImageBatch::new("in0", &a, [1, 3, 32, 32]).unwrap();
    let ib = ImageBatch::new("in1", &b, [1, 3, 32, 40]).unwrap();
    assert!(matches!(lp.distance(&ia, &ib, false, &dev), Err(MetricError::ShapeMismatch { .. })));
    let g = vec![0.0f32; 32 * 32];
    let ig = ImageBatch::new("in0", &g, [1, 1, 32, 32]).unwrap();
    assert!(matches!(lp.distance(&ig, &ig, false, &dev), Err(MetricError::ShapeMismatch { .. })));
    let s = vec![0.0f32; 3 * 30 * 30];
    let is = ImageBatch::new("in0", &s, [1, 3, 30, 30]).unwrap();
    let e = lp.distance(&is, &is, false, &dev).unwrap_err();
    assert!(matches!(e, MetricError::TooSmall { .. }), "{e}");
    let s31 = vec![0.0f32; 3 * 31 * 31];
    let i31 = ImageBatch::new("in0", &s31, [1, 3, 31, 31]).unwrap();
    assert_eq!(lp.distance(&i31, &i31, false, &dev).unwrap().distance, vec![0.0]);
    // Missing / wrong weights: clear errors naming the file or tensor.
    let e = Lpips::<B>::from_files("/nonexistent/alexnet.safetensors", "/nonexistent/alex.pth", &dev).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/alexnet.safetensors"), "{e}");
    let e = load_lpips_heads("/nonexistent/alex.pth").unwrap_err();
    assert!(e.to_string().contains("alex.pth"), "{e}");
    let mut partial = dummy_heads();
    partial.insert("lin2.model.1.weight", vec![1, 7, 1, 1], vec![0.0; 7]).unwrap();
    let e = Lpips::<B>::from_stores(&trunk, &partial, &dev).err().unwrap();
    assert!(e.to_string().contains("lin2.model.1.weight"), "{e}");
    // Not a legacy torch file.
    let tmp = std::env::temp_dir().join(format!("ddrep-not-a-pth-{}", std::process::id()));
    std::fs::write(&tmp, b"PK\x03\x04 zip").unwrap();
    let e = read_legacy_pth(&tmp).unwrap_err();
    assert!(e.to_string().contains("zip-format"), "{e}");
    std::fs::write(&tmp, b"garbage").unwrap();
    assert!(read_legacy_pth(&tmp).is_err());
    let _ = std::fs::remove_file(&tmp);
}
