//! Bad input: each broken copy of the tiny folder must fail with one line that names the
//! file or tensor and says how to fix it, without panicking. Also the key-name quirks and
//! dtypes real SD1.5 files have must load.

mod sd15_common;

use std::path::{Path, PathBuf};

use ddrep::diffusion::Denoiser;
use ddrep::models::sd15::{LoadOptions, Sd15};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use sd15_common::{copy_dir, model_dir, B};

/// A fresh copy of the tiny model folder in the temp dir, removed on drop.
struct TempModel(PathBuf);

impl std::ops::Deref for TempModel {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_model(tag: &str) -> TempModel {
    let dst = std::env::temp_dir().join(format!("ddrep-sd15-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    copy_dir(&model_dir(), &dst);
    TempModel(dst)
}

/// The load error as one string; panics if loading succeeded.
fn load_err(dir: &Path) -> String {
    let msg = match Sd15::<B>::load(dir, &Default::default()) {
        Ok(_) => panic!("loading {} should have failed", dir.display()),
        Err(e) => format!("{e:#}"),
    };
    println!("{msg}");
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
    msg
}

/// Rewrites a safetensors file; `edit` maps (name, dtype, shape, bytes) to the new entry
/// or `None` to drop it.
type Entry = (String, Dtype, Vec<usize>, Vec<u8>);
fn rewrite(path: &Path, edit: impl Fn(Entry) -> Option<Entry>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let entries: Vec<Entry> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, v)| edit((n, v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let views: Vec<(String, TensorView)> =
        entries.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
const VAE: &str = "vae/diffusion_pytorch_model.safetensors";
const TE: &str = "text_encoder/model.safetensors";

#[test]
fn missing_folder() {
    let msg = load_err(Path::new("/nonexistent/sd15"));
    assert!(msg.contains("/nonexistent/sd15") && msg.contains("no such folder"), "{msg}");
}

#[test]
fn missing_part() {
    let dir = copy_model("nopart");
    std::fs::remove_dir_all(dir.join("vae")).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("vae/ is missing"), "{msg}");
}

#[test]
fn missing_config() {
    let dir = copy_model("noconfig");
    std::fs::remove_file(dir.join("unet/config.json")).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("unet/config.json is missing"), "{msg}");
}

#[test]
fn missing_weights() {
    let dir = copy_model("noweights");
    std::fs::remove_file(dir.join(VAE)).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains(VAE) && msg.contains("missing"), "{msg}");
}

#[test]
fn truncated_safetensors() {
    let dir = copy_model("truncated");
    let p = dir.join(UNET);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains(UNET) && msg.contains("truncated"), "{msg}");
}

#[test]
fn wrong_dtype() {
    let dir = copy_model("dtype");
    rewrite(&dir.join(UNET), |(n, d, s, b)| {
        if n == "conv_in.bias" {
            let ints: Vec<u8> = f32s(&b).iter().flat_map(|&x| (x as i64).to_le_bytes()).collect();
            Some((n, Dtype::I64, s, ints))
        } else {
            Some((n, d, s, b))
        }
    });
    let msg = load_err(&dir);
    assert!(msg.contains(UNET) && msg.contains("unet.conv_in.bias: dtype I64") && msg.contains("float16"), "{msg}");
}

#[test]
fn wrong_shapes_are_all_reported() {
    let dir = copy_model("shape");
    let k = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    rewrite(&dir.join(UNET), |(n, d, s, b)| match n.as_str() {
        // [16, 32] -> [16, 24]: a UNet paired with another text encoder width.
        _ if n == k => Some((n, d, vec![16, 24], b[..16 * 24 * 4].to_vec())),
        "conv_out.bias" => Some((n, d, vec![2], b[..8].to_vec())),
        "mid_block.resnets.0.norm1.weight" => None,
        _ => Some((n, d, s, b)),
    });
    let msg = load_err(&dir);
    assert!(msg.contains(&format!("unet.{k}: expected [16, 32], found [16, 24]")), "{msg}");
    assert!(msg.contains("unet.conv_out.bias: expected [4], found [2]"), "{msg}");
    assert!(msg.contains("unet.mid_block.resnets.0.norm1.weight: missing"), "{msg}");
    assert!(msg.contains("3 tensor problem(s)"), "{msg}");
}

#[test]
fn tokenizer_not_json() {
    let dir = copy_model("tokjson");
    std::fs::write(dir.join("tokenizer/vocab.json"), "<html>not found</html>").unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("tokenizer/vocab.json is not valid JSON"), "{msg}");
}

#[test]
fn extra_tensor_refused_only_when_strict() {
    let dir = copy_model("extra");
    // Append a tensor the model does not use.
    let p = dir.join(VAE);
    let bytes = std::fs::read(&p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, TensorView)> = st.tensors();
    let extra = vec![0u8; 8];
    views.push(("model_ema.decay".into(), TensorView::new(Dtype::F32, vec![2], &extra).unwrap()));
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&p, out).unwrap();

    assert!(Sd15::<B>::load(dir.as_path(), &Default::default()).is_ok());
    let err = Sd15::<B>::load_with(dir.as_path(), &Default::default(), LoadOptions { strict: true }).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("vae.model_ema.decay: not used by the model (--strict)"), "{msg}");
}

/// Old VAE attention names (query/key/value/proj_attn), transformers-5 text-encoder keys
/// without `text_model.`, and fp16/bf16 weights all load and give the same model.
#[test]
fn legacy_names_and_half_precision_load() {
    let dir = copy_model("legacy");
    rewrite(&dir.join(VAE), |(n, d, s, b)| {
        let n = n
            .replace(".to_q.", ".query.")
            .replace(".to_k.", ".key.")
            .replace(".to_v.", ".value.")
            .replace(".to_out.0.", ".proj_attn.");
        Some((n, d, s, b))
    });
    rewrite(&dir.join(TE), |(n, d, s, b)| Some((n.trim_start_matches("text_model.").to_string(), d, s, b)));
    rewrite(&dir.join(UNET), |(n, _, s, b)| {
        let h: Vec<u8> = f32s(&b).iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        Some((n, Dtype::F16, s, h))
    });
    let reference = Sd15::<B>::load(model_dir(), &Default::default()).unwrap();
    let sd = Sd15::<B>::load_with(dir.as_path(), &Default::default(), LoadOptions { strict: true }).unwrap();

    let z = burn::tensor::Tensor::<B, 4>::random(
        [1, 4, 4, 4],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    sd15_common::check("vae with old attention names", sd.decode(z.clone()), reference.decode(z.clone()), 1e-7);
    let e = sd.encode_prompts(&["a cat"]).unwrap();
    sd15_common::check(
        "text encoder without text_model. prefix",
        e,
        reference.encode_prompts(&["a cat"]).unwrap(),
        1e-7,
    );
    // fp16 weights: only rounding of the weights differs.
    let x = burn::tensor::Tensor::<B, 4>::random(
        [1, 4, 8, 8],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let a = sd.eps(x.clone(), &[500], &[Some("a cat")]).unwrap();
    let b = reference.eps(x, &[500], &[Some("a cat")]).unwrap();
    sd15_common::check("unet from fp16 weights", a, b, 1e-2);
    assert!(sd.describe().contains("unet="));
}

/// Weight hashes for run records: the sha256 of the file bytes, the same on a second call.
#[test]
fn weight_hashes_are_sha256_of_the_files() {
    use sha2::{Digest, Sha256};
    let path = model_dir().join(VAE);
    let direct = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
    assert_eq!(ddrep::models::sd15::sha256_cached(&path).unwrap(), direct);
    assert_eq!(ddrep::models::sd15::sha256_cached(&path).unwrap(), direct);
    let sd = Sd15::<B>::load(model_dir(), &Default::default()).unwrap();
    let hashes = sd.weight_hashes().unwrap();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.contains(&("vae".to_string(), direct)));
}

/// Sets `key` of the JSON file `file` (relative to `dir`) to `value`.
fn set_json_key(dir: &Path, file: &str, key: &str, value: serde_json::Value) {
    let p = dir.join(file);
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c[key] = value;
    std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
}

/// A config whose channels the norms or the attention heads cannot split: a one-line error
/// naming the file and key at load time, not a failure inside the forward pass.
#[test]
fn config_with_indivisible_channels() {
    let dir = copy_model("groups");
    set_json_key(&dir, "unet/config.json", "norm_num_groups", serde_json::json!(7));
    let msg = load_err(&dir);
    assert!(msg.contains("unet/config.json") && msg.contains("not a multiple of norm_num_groups = 7"), "{msg}");

    let dir = copy_model("heads");
    set_json_key(&dir, "unet/config.json", "attention_head_dim", serde_json::json!(7));
    let msg = load_err(&dir);
    assert!(msg.contains("unet/config.json") && msg.contains("7 attention heads"), "{msg}");

    let dir = copy_model("vaegroups");
    set_json_key(&dir, "vae/config.json", "norm_num_groups", serde_json::json!(0));
    let msg = load_err(&dir);
    assert!(msg.contains("vae/config.json") && msg.contains("norm_num_groups = 0"), "{msg}");
}

/// Values that used to load and failed far away (a NaN denoiser output, a tokenizer without
/// merges): refused at load, naming the file, key or tensor.
#[test]
fn values_that_break_sampling_are_refused_at_load() {
    let sched = "scheduler/scheduler_config.json";
    for (key, value, needle) in [
        ("num_train_timesteps", serde_json::json!(1_000_000_000_000u64), "num_train_timesteps must be in [2, 100000]"),
        ("beta_start", serde_json::json!(-1.0), "0 < beta_start <= beta_end < 1"),
        ("beta_end", serde_json::json!(2.0), "0 < beta_start <= beta_end < 1"),
        ("beta_start", serde_json::json!(0.5), "0 < beta_start <= beta_end < 1"),
    ] {
        let dir = copy_model("sched");
        set_json_key(&dir, sched, key, value);
        let msg = load_err(&dir);
        assert!(msg.contains(sched) && msg.contains(needle), "{key}: {msg}");
    }
    let dir = copy_model("scaling");
    set_json_key(&dir, "vae/config.json", "scaling_factor", serde_json::json!(0.0));
    let msg = load_err(&dir);
    assert!(msg.contains("vae/config.json: scaling_factor must be a positive number"), "{msg}");

    let dir = copy_model("merges");
    std::fs::write(dir.join("tokenizer/merges.txt"), "#version: 0.2\n").unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("tokenizer/merges.txt holds no merges"), "{msg}");

    // A NaN, an inf, and an f64 beyond f32's range, each named by tensor.
    for (tag, dtype, bytes) in [
        ("nan", Dtype::F32, f32::NAN.to_le_bytes().to_vec()),
        ("inf", Dtype::F16, half::f16::INFINITY.to_le_bytes().to_vec()),
        ("f64", Dtype::F64, 1e300f64.to_le_bytes().to_vec()),
    ] {
        let dir = copy_model(tag);
        rewrite(&dir.join(UNET), |(n, d, s, b)| {
            if n == "conv_in.bias" {
                let mut v: Vec<u8> = Vec::new();
                for _ in 0..s.iter().product::<usize>() {
                    v.extend(&bytes);
                }
                Some((n, dtype, s, v))
            } else {
                Some((n, d, s, b))
            }
        });
        let msg = load_err(&dir);
        assert!(msg.contains(UNET) && msg.contains("unet.conv_in.bias: element 0 is") && msg.contains("NaN or inf"), "{tag}: {msg}");
    }
}

/// Config values found by mutating the tiny folder's configs one key at a time (0, -1, 10^6,
/// 10^12, lists of the wrong length, ...) that used to panic in a conv, abort on a capacity
/// overflow or exhaust memory building 10^12 layers: refused at load, one line naming the
/// file and key.
#[test]
fn config_values_that_used_to_panic_or_exhaust_memory() {
    let (unet, vae, te) = ("unet/config.json", "vae/config.json", "text_encoder/config.json");
    let cases = [
        (unet, "downsample_padding", serde_json::json!(0), "unet/config.json: downsample_padding = 0 (SD1.5: 1) is not supported"),
        (unet, "downsample_padding", serde_json::json!(1_000_000_000u64), "downsample_padding = 1000000000 (SD1.5: 1) is not supported"),
        (unet, "layers_per_block", serde_json::json!(1_000_000_000_000u64), "unet/config.json: layers_per_block (block 0) is 1000000000000; at most 1024"),
        (unet, "transformer_layers_per_block", serde_json::json!([1, 1, 5000, 1]), "unet/config.json: transformer_layers_per_block (block 2) is 5000; at most 1024"),
        (unet, "layers_per_block", serde_json::json!([2, 2, 2]), "unet/config.json: layers_per_block lists 3 values for 4 blocks"),
        (unet, "cross_attention_dim", serde_json::json!([32, 32]), "unet/config.json: cross_attention_dim lists 2 values for 4 blocks"),
        (unet, "attention_head_dim", serde_json::json!([2]), "unet/config.json: attention_head_dim lists 1 value for 4 blocks"),
        (vae, "layers_per_block", serde_json::json!(1_000_000_000_000u64), "vae/config.json: layers_per_block is 1000000000000; at most 1024"),
        (te, "num_hidden_layers", serde_json::json!(1_000_000_000_000u64), "text_encoder/config.json: num_hidden_layers is 1000000000000; at most 1024"),
    ];
    for (file, key, value, needle) in cases {
        let dir = copy_model("mutated");
        set_json_key(&dir, file, key, value.clone());
        let msg = load_err(&dir);
        assert!(msg.contains(needle), "{file} {key} = {value}: {msg}");
    }
}
