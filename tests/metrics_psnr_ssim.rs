//! PSNR / SSIM parity with torchmetrics 1.9.0 (and scikit-image 0.26) on the committed fixtures.

mod metrics_support;

use ddrep::metrics::{
    psnr, psnr_mean_of_per_image, psnr_per_image, ssim, ssim_per_image, ssim_per_image_cropped, ImageBatch, MetricError,
    SsimConfig,
};
use metrics_support::*;

fn close(what: &str, a: f64, b: f64, tol: f64) -> f64 {
    if b.is_infinite() {
        assert_eq!(a, b, "{what}");
        return 0.0;
    }
    assert!((a - b).abs() <= tol, "{what}: ours {a} vs reference {b} (tol {tol})");
    (a - b).abs()
}

#[test]
fn psnr_ssim_match_torchmetrics_fixtures() {
    let j = load_json("psnr_ssim.json");
    let tol = j["tolerance_abs"].as_f64().unwrap();
    let fx = Fixture::open("psnr_ssim.safetensors");
    let cfg = SsimConfig::default();
    let (mut worst_psnr, mut worst_ssim, mut worst_crop, mut worst_sk) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut n_ssim = 0;
    let cases = j["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let (sp, p) = fx.get(c["preds"].as_str().unwrap());
        let (st, t) = fx.get(c["target"].as_str().unwrap());
        assert_eq!(sp, st);
        let preds = ImageBatch::new("preds", &p, shape4(&sp)).unwrap();
        let target = ImageBatch::new("target", &t, shape4(&st)).unwrap();
        let tm = &c["torchmetrics"];

        worst_psnr = worst_psnr.max(close(&format!("{name} psnr"), psnr(&preds, &target, 1.0).unwrap(), num(&tm["psnr"]).unwrap(), tol));
        let per = psnr_per_image(&preds, &target, 1.0).unwrap();
        for (a, b) in per.iter().zip(nums(&tm["psnr_per_image"]).unwrap()) {
            worst_psnr = worst_psnr.max(close(&format!("{name} psnr_per_image"), *a, b, tol));
        }
        close(&format!("{name} psnr_mean"), psnr_mean_of_per_image(&preds, &target, 1.0).unwrap(), num(&tm["psnr_mean_of_per_image"]).unwrap(), tol);

        let sensitive = c["precision_sensitive"].as_bool().unwrap();
        match num(&tm["ssim"]) {
            Some(reference) => {
                n_ssim += 1;
                let per = ssim_per_image(&preds, &target, &cfg).unwrap();
                let batch = ssim(&preds, &target, &cfg).unwrap();
                if sensitive {
                    // torchmetrics' f32 run loses ~1e-3 to cancellation; compare with its f64 run.
                    for (a, b) in per.iter().zip(nums(&tm["ssim_per_image_f64"]).unwrap()) {
                        close(&format!("{name} ssim_per_image_f64"), *a, b, 1e-3);
                    }
                    close(&format!("{name} ssim (f32 ref, loose)"), batch, reference, 1e-3);
                } else {
                    worst_ssim = worst_ssim.max(close(&format!("{name} ssim"), batch, reference, tol));
                    for (a, b) in per.iter().zip(nums(&tm["ssim_per_image"]).unwrap()) {
                        worst_ssim = worst_ssim.max(close(&format!("{name} ssim_per_image"), *a, b, tol));
                    }
                    for (a, b) in per.iter().zip(nums(&tm["ssim_per_image_f64"]).unwrap()) {
                        close(&format!("{name} ssim_per_image_f64"), *a, b, 1e-8);
                    }
                }
                // Cropped (valid-interior) variant vs torchmetrics' cropped map and scikit-image.
                match ssim_per_image_cropped(&preds, &target, &cfg) {
                    Ok(crop) => {
                        if !sensitive {
                            for (a, b) in crop.iter().zip(nums(&tm["ssim_per_image_cropped5"]).unwrap()) {
                                worst_crop = worst_crop.max(close(&format!("{name} cropped5"), *a, b, tol));
                            }
                        }
                        let sk = nums(&c["skimage_ssim_per_image"]).expect("skimage value where the crop works");
                        for (a, b) in crop.iter().zip(sk) {
                            worst_sk = worst_sk.max(close(&format!("{name} skimage"), *a, b, if sensitive { 1e-3 } else { tol }));
                        }
                    }
                    Err(MetricError::TooSmall { .. }) => {
                        assert!(c["skimage_ssim_per_image"].get("error").is_some(), "{name}: skimage gave a value");
                    }
                    Err(e) => panic!("{name}: {e}"),
                }
            }
            None => {
                // torchmetrics raised (reflect padding needs H, W >= 6).
                let msg = tm["ssim"]["error"]["message"].as_str().unwrap();
                assert!(msg.contains("Padding size should be less"), "{msg}");
                let e = ssim(&preds, &target, &cfg).unwrap_err();
                assert!(matches!(e, MetricError::TooSmall { .. }), "{name}: {e}");
                assert!(e.to_string().contains("Padding size should be less"), "{e}");
                assert!(ssim_per_image(&preds, &target, &cfg).is_err());
            }
        }
    }
    assert!(n_ssim >= 20);
    println!(
        "max abs error: psnr {worst_psnr:.3e} dB, ssim {worst_ssim:.3e}, ssim cropped5 {worst_crop:.3e}, vs skimage {worst_sk:.3e}"
    );
}

#[test]
fn psnr_ssim_bad_input_errors() {
    let a = vec![0.5f32; 3 * 8 * 8];
    let b = vec![0.25f32; 3 * 8 * 9];
    let ia = ImageBatch::new("preds", &a, [1, 3, 8, 8]).unwrap();
    let ib = ImageBatch::new("target", &b, [1, 3, 8, 9]).unwrap();
    let cfg = SsimConfig::default();
    assert!(matches!(psnr(&ia, &ib, 1.0), Err(MetricError::ShapeMismatch { .. })));
    assert!(matches!(ssim(&ia, &ib, &cfg), Err(MetricError::ShapeMismatch { .. })));
    assert!(matches!(psnr_per_image(&ia, &ib, 1.0), Err(MetricError::ShapeMismatch { .. })));

    // Empty batch / zero-sized image.
    assert!(matches!(ImageBatch::new("preds", &[], [0, 3, 8, 8]), Err(MetricError::Empty(_))));
    assert!(matches!(ImageBatch::new("preds", &[], [1, 3, 0, 8]), Err(MetricError::Empty(_))));
    // Length / shape disagreement.
    assert!(matches!(ImageBatch::new("preds", &a, [1, 3, 8, 7]), Err(MetricError::DataLength { .. })));

    // NaN / inf pixels.
    let mut n = a.clone();
    n[17] = f32::NAN;
    let e = ImageBatch::new("preds", &n, [1, 3, 8, 8]).unwrap_err();
    assert!(matches!(e, MetricError::NonFinite { index: 17, .. }), "{e}");
    n[17] = f32::INFINITY;
    assert!(ImageBatch::new("preds", &n, [1, 3, 8, 8]).is_err());

    // Too small for the window: 5x5 fails (torchmetrics raises), 6x6 works, cropped needs 11.
    let s5 = vec![0.1f32; 3 * 25];
    let i5 = ImageBatch::new("preds", &s5, [1, 3, 5, 5]).unwrap();
    let e = ssim(&i5, &i5, &cfg).unwrap_err();
    assert!(matches!(e, MetricError::TooSmall { h: 5, w: 5, .. }), "{e}");
    println!("5x5 error: {e}");
    assert_eq!(psnr(&i5, &i5, 1.0).unwrap(), f64::INFINITY);
    let s6 = vec![0.1f32; 3 * 36];
    let i6 = ImageBatch::new("preds", &s6, [1, 3, 6, 6]).unwrap();
    assert!(ssim(&i6, &i6, &cfg).is_ok());
    assert!(matches!(ssim_per_image_cropped(&i6, &i6, &cfg), Err(MetricError::TooSmall { .. })));

    // Bad parameters.
    assert!(matches!(psnr(&ia, &ia, 0.0), Err(MetricError::InvalidParam(_))));
    assert!(matches!(psnr(&ia, &ia, f64::NAN), Err(MetricError::InvalidParam(_))));
    let bad = SsimConfig { sigma: -1.0, ..cfg };
    assert!(matches!(ssim(&ia, &ia, &bad), Err(MetricError::InvalidParam(_))));
}

#[test]
fn ssim_kernel_is_torchmetrics_default() {
    let cfg = SsimConfig::default();
    assert_eq!(cfg.kernel_size(), 11);
    let t = cfg.taps();
    assert!((t.iter().sum::<f64>() - 1.0).abs() < 1e-15);
    assert!((t[5] - 0.2659).abs() < 1e-3);
}
