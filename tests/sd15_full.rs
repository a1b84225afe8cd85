//! Full-size SD1.5 architecture from its real config values (nothing downloaded):
//! parameter counts from shapes alone (no 3.4 GB allocation), and one slow random-weight
//! UNet eval at 1x4x64x64 on the CPU.

mod sd15_common;

use ddrep::models::sd15::{
    unet_param_count, AutoencoderKL, ClipTextConfig, ClipTextModel, Loader, UNet2DConditionModel, UnetConfig, VaeConfig,
};
use sd15_common::B;

/// runwayml/stable-diffusion-v1-5 `unet/config.json`, as the benchmark builds it.
const SD15_UNET: &str = ddrep::bench::SD15_UNET_CONFIG;

/// SD1.5 `vae/config.json`.
const SD15_VAE: &str = r#"{
  "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
  "sample_size": 512,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#;

/// SD1.5 `text_encoder/config.json` (CLIP ViT-L/14 text tower), abridged.
const SD15_TEXT: &str = r#"{
  "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
  "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
  "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
  "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "torch_dtype": "float32",
  "transformers_version": "4.22.0.dev0", "vocab_size": 49408
}"#;

#[test]
fn full_unet_has_859_520_964_parameters() {
    let cfg: UnetConfig = serde_json::from_str(SD15_UNET).unwrap();
    let (params, tensors) = unet_param_count::<B>(&cfg, &Default::default()).unwrap();
    println!("SD1.5 UNet: {params} parameters in {tensors} tensors");
    assert_eq!(params, 859_520_964);
    assert_eq!(tensors, 686);
}

#[test]
fn full_vae_and_text_encoder_parameter_counts() {
    let vae: VaeConfig = serde_json::from_str(SD15_VAE).unwrap();
    let mut ld = Loader::<B>::spec("vae", &Default::default());
    AutoencoderKL::load(&mut ld, &vae).unwrap();
    println!("SD1.5 VAE: {} parameters in {} tensors", ld.num_params(), ld.expected().len());
    assert_eq!(ld.num_params(), 83_653_863);
    assert_eq!(ld.expected().len(), 248);

    let te: ClipTextConfig = serde_json::from_str(SD15_TEXT).unwrap();
    let mut ld = Loader::<B>::spec("text_encoder", &Default::default());
    ClipTextModel::load(&mut ld, &te).unwrap();
    println!("SD1.5 text encoder: {} parameters in {} tensors", ld.num_params(), ld.expected().len());
    assert_eq!(ld.num_params(), 123_060_480);
}

/// Builds the real-size UNet with random weights (~3.5 GB) and runs one 1x4x64x64 eval.
/// About 25 s and 3.6 GB peak RSS on 2 cores (18 s of it drawing the random weights).
#[test]
fn full_unet_eval_on_cpu() {
    let cfg: UnetConfig = serde_json::from_str(SD15_UNET).unwrap();
    let device = Default::default();
    let t0 = std::time::Instant::now();
    let mut ld = Loader::<B>::random("unet", &device);
    let unet = UNet2DConditionModel::load(&mut ld, &cfg).unwrap();
    assert_eq!(ld.num_params(), 859_520_964);
    println!("built in {:.1} s", t0.elapsed().as_secs_f64());
    let x = burn::tensor::Tensor::<B, 4>::random([1, 4, 64, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let ctx = burn::tensor::Tensor::<B, 3>::random([1, 77, 768], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let t1 = std::time::Instant::now();
    let eps = unet.forward(x, &[500.0], ctx).unwrap();
    println!("one eval in {:.1} s", t1.elapsed().as_secs_f64());
    assert_eq!(eps.dims(), [1, 4, 64, 64]);
    ddrep::tensor_util::ensure_finite(&eps, || "full-size eps".into()).unwrap();
}
