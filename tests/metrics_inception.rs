//! FID-variant Inception-v3 parity with torch-fidelity 0.4.0 / torchmetrics 1.9.0, using weights
//! regenerated from the splitmix64 rule (`weights_rule.json`, sha256-checked).

mod metrics_support;

use burn::tensor::Tensor;
use ddrep::backend::Cpu;
use ddrep::metrics::inception::{preprocess, to_u8_like_torchmetrics, INCEPTION_SIZE};
use ddrep::metrics::{InceptionV3, MetricError, ResizeMode};
use metrics_support::*;

type B = Cpu;

fn host(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

#[test]
fn inception_features_match_both_resize_paths() {
    let j = load_json("inception.json");
    let rel = j["tolerance_rel"].as_f64().unwrap();
    let fx = Fixture::open("inception.safetensors");
    let store = rule_store("inception");
    let dev = Default::default();
    let net = InceptionV3::<B>::from_store(&store, &dev).unwrap();
    let images = j["images_list"].as_array().unwrap();
    assert!(images.len() >= 4);
    let (mut worst_in, mut worst_f) = (0.0f64, 0.0f64);
    for im in images {
        let name = im["name"].as_str().unwrap();
        let (shape, px) = fx.get_u8(im["image"].as_str().unwrap());
        let shape = shape4(&shape);
        for (mode, key, levels) in [
            (ResizeMode::TorchFidelity, "torch_fidelity", &["64", "192", "768", "2048"][..]),
            (ResizeMode::Torchmetrics, "torchmetrics", &["64", "2048"][..]),
        ] {
            let rec = &im[key];
            // Resized, normalised input: top-left 3x16x16 crop.
            let x = preprocess(&px, shape, mode).unwrap();
            let s = INCEPTION_SIZE;
            let mut crop = Vec::new();
            for c in 0..3 {
                for y in 0..16 {
                    crop.extend_from_slice(&x[c * s * s + y * s..c * s * s + y * s + 16]);
                }
            }
            let (_, want) = fx.get(rec["input299"]["crop16"].as_str().unwrap());
            worst_in = worst_in.max(check_rel(&format!("{name} {key} input"), &crop, &want, 1e-5));
            let f = net.features(&px, shape, mode, &dev).unwrap();
            for &lv in levels {
                let ours = host(match lv {
                    "64" => f.f64.clone(),
                    "192" => f.f192.clone(),
                    "768" => f.f768.clone(),
                    _ => f.f2048.clone(),
                });
                let (_, want) = fx.get(rec[lv]["tensor"].as_str().unwrap());
                let w = check_rel(&format!("{name} {key} f{lv}"), &ours, &want, rel);
                println!("{name} {key} f{lv}: max |a-b|/max|b| = {w:.3e}");
                worst_f = worst_f.max(w);
            }
        }
    }
    println!("Inception: resized input max rel {worst_in:.3e}, features max |a-b|/max|b| {worst_f:.3e}");
}

#[test]
fn inception_bad_input_errors() {
    assert!(matches!(preprocess(&[0u8; 12], [1, 1, 3, 4], ResizeMode::Torchmetrics), Err(MetricError::ShapeMismatch { .. })));
    assert!(matches!(preprocess(&[], [0, 3, 3, 4], ResizeMode::Torchmetrics), Err(MetricError::Empty(_))));
    assert!(matches!(preprocess(&[0u8; 10], [1, 3, 3, 4], ResizeMode::TorchFidelity), Err(MetricError::DataLength { .. })));
    assert!(matches!(to_u8_like_torchmetrics(&[0.5, f32::NAN]), Err(MetricError::NonFinite { index: 1, .. })));
    assert_eq!(to_u8_like_torchmetrics(&[0.0, 0.999, 1.0, 2.0, -1.0]).unwrap(), vec![0, 254, 255, 255, 0]);
    let e = InceptionV3::<B>::from_file("/nonexistent/pt_inception.safetensors", &Default::default()).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/pt_inception.safetensors"), "{e}");
    let mut partial = ddrep::metrics::TensorStore::new("partial");
    partial.insert("Conv2d_1a_3x3.conv.weight", vec![32, 3, 3, 3], vec![0.0; 864]).unwrap();
    let e = InceptionV3::<B>::from_store(&partial, &Default::default()).err().unwrap();
    assert!(e.to_string().contains("Conv2d_1a_3x3.bn.weight"), "{e}");
}

/// Resizing an image that is already 299x299 is the identity on both paths.
#[test]
fn resize_identity_at_299() {
    let s = INCEPTION_SIZE;
    let px: Vec<u8> = (0..3 * s * s).map(|i| (i * 7 % 256) as u8).collect();
    for mode in [ResizeMode::TorchFidelity, ResizeMode::Torchmetrics] {
        let x = preprocess(&px, [1, 3, s, s], mode).unwrap();
        for (a, &b) in x.iter().zip(&px) {
            assert!((a - (b as f32 - 128.0) / 128.0).abs() < 1e-6, "{mode:?}");
        }
    }
}
