//! Parity with diffusers/transformers on the tiny random-weight SD1.5 folder
//! (`tests/fixtures/sd15_tiny`). Metric everywhere: `max|a-b| / max|b|` (b = reference),
//! fp32 on the CPU, tolerance 1e-4.

mod sd15_common;

use burn::tensor::Tensor;
use ddrep::diffusion::{
    ddim_step_vp, CfgConvention, DdimCoeffs, Denoiser, Guidance, GuidedDenoiser, Level,
};
use ddrep::models::sd15::Sd15;
use ddrep::noise::{NoiseSource, ReplayNoise};
use sd15_common::{check, model_dir, Expected, B};
use serde_json::Value;

const TOL: f64 = 1e-4;

fn load() -> Sd15<B> {
    Sd15::load(model_dir(), &Default::default()).unwrap()
}

fn manifest_inputs(file: &str) -> Value {
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(sd15_common::fixture("expected/manifest.json")).unwrap(),
    )
    .unwrap();
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == file)
        .unwrap()["inputs"]
        .clone()
}

#[test]
fn text_encoder_hidden_states() {
    let sd = load();
    let exp = Expected::open("text_encoder.safetensors");
    let inputs = manifest_inputs("text_encoder.safetensors");
    let ids: Vec<Vec<u32>> = inputs["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    // The tokenizer must give the same ids the reference encoded.
    for (p, row) in inputs["prompts"].as_array().unwrap().iter().zip(&ids) {
        assert_eq!(&sd.tokenizer.encode(p.as_str().unwrap()), row);
    }
    let out = sd.text_encoder.forward(&ids).unwrap();
    check(
        "last_hidden_state",
        out.last_hidden_state,
        exp.get::<3>("last_hidden_state"),
        TOL,
    );
    for (i, h) in out.hidden_states.into_iter().enumerate() {
        check(
            &format!("hidden_states.{i}"),
            h,
            exp.get::<3>(&format!("hidden_states.{i}")),
            TOL,
        );
    }
}

#[test]
fn unet_eps_at_several_timesteps() {
    let sd = load();
    let exp = Expected::open("unet.safetensors");
    let x = exp.get::<4>("sample");
    let ctx = exp.get::<3>("encoder_hidden_states");
    for t in [999.0, 500.0, 1.0] {
        let eps = sd.unet.forward(x.clone(), &[t, t], ctx.clone()).unwrap();
        check(
            &format!("eps_t{t}"),
            eps,
            exp.get::<4>(&format!("eps_t{t}")),
            TOL,
        );
    }
    let eps = sd.unet.forward(x, &[999.0, 1.0], ctx).unwrap();
    check(
        "eps_tvec_999_1 (per-row timesteps)",
        eps,
        exp.get::<4>("eps_tvec_999_1"),
        TOL,
    );
    let eps = sd
        .unet
        .forward(
            exp.get::<4>("nonsquare_sample"),
            &[250.0],
            exp.get::<3>("nonsquare_encoder_hidden_states"),
        )
        .unwrap();
    check(
        "nonsquare_eps_t250 (16x8)",
        eps,
        exp.get::<4>("nonsquare_eps_t250"),
        TOL,
    );
}

#[test]
fn unet_intermediates() {
    let sd = load();
    let exp = Expected::open("unet.safetensors");
    let hooks = Expected::open("unet_intermediates.safetensors");
    let mut seen = Vec::new();
    sd.unet
        .forward_traced(
            exp.get::<4>("sample"),
            &[500.0, 500.0],
            exp.get::<3>("encoder_hidden_states"),
            &mut |name, t| {
                let reference: Tensor<B, 4> = if name.starts_with("time_") {
                    hooks.get::<2>(name).unsqueeze_dims(&[2, 3])
                } else {
                    hooks.get::<4>(name)
                };
                check(name, t.clone(), reference, TOL);
                seen.push(name.to_string());
            },
        )
        .unwrap();
    assert_eq!(seen.len(), 13, "{seen:?}");
}

#[test]
fn denoiser_cfg_matches_pipeline() {
    let sd = load();
    let exp = Expected::open("unet_cfg.safetensors");
    assert_eq!(sd.sample_shape(), [4, 16, 16]);
    let prompt = "a photo of an astronaut riding a horse";
    let x = exp.get::<4>("sample");
    // Through the Denoiser trait: prompts tokenized and encoded here, '' for the None row.
    let both = sd
        .eps(
            Tensor::cat(vec![x.clone(), x.clone()], 0),
            &[500, 500],
            &[None, Some(prompt)],
        )
        .unwrap();
    check(
        "eps_uncond",
        both.clone().narrow(0, 0, 1),
        exp.get::<4>("eps_uncond"),
        TOL,
    );
    check(
        "eps_cond",
        both.narrow(0, 1, 1),
        exp.get::<4>("eps_cond"),
        TOL,
    );
    check(
        "prompt embeddings",
        sd.encode_prompts(&["", prompt]).unwrap(),
        exp.get::<3>("encoder_hidden_states"),
        TOL,
    );
    let guided = GuidedDenoiser::new(
        &sd,
        vec![prompt.to_string()],
        Guidance::new(7.5, CfgConvention::Diffusers),
    )
    .unwrap();
    check(
        "eps_guided (w = 7.5)",
        guided.eps(x, &[500]).unwrap(),
        exp.get::<4>("eps_guided"),
        TOL,
    );
    assert_eq!(guided.nfe(), 1);
}

#[test]
fn vae_decode_and_encode() {
    let sd = load();
    let exp = Expected::open("vae.safetensors");
    assert_eq!(sd.vae.config.scaling_factor, 0.18215);
    check(
        "decode_image",
        sd.decode(exp.get::<4>("decode_latents")),
        exp.get::<4>("decode_image"),
        TOL,
    );
    let post = sd.vae.encode(exp.get::<4>("encode_image"));
    check(
        "encode_mean",
        post.mean.clone(),
        exp.get::<4>("encode_mean"),
        TOL,
    );
    check(
        "encode_logvar",
        post.logvar,
        exp.get::<4>("encode_logvar"),
        TOL,
    );
    check("encode_std", post.std, exp.get::<4>("encode_std"), TOL);
    check(
        "encode (scaled latents)",
        sd.encode(exp.get::<4>("encode_image")),
        exp.get::<4>("encode_mean").mul_scalar(0.18215),
        TOL,
    );
}

/// The 4-step DDIM + CFG trajectory replayed with the crate's `ddim_step_vp`, `ReplayNoise`
/// and `GuidedDenoiser` over `Sd15`; every step's latents compared with diffusers'.
#[test]
fn ddim_trajectory_replay() {
    let sd = load();
    let exp = Expected::open("ddim.safetensors");
    let prompt = "a watercolor painting of a lighthouse at dawn";
    let schedule = sd.schedule().clone();
    let abar = exp.get::<1>("alphas_cumprod");
    let ours = Tensor::<B, 1>::from_floats(
        schedule
            .alphas_cumprod()
            .iter()
            .map(|&a| a as f32)
            .collect::<Vec<_>>()
            .as_slice(),
        &Default::default(),
    );
    check("alphas_cumprod", ours, abar, 1e-6);
    let levels = schedule.ddim_levels(4, sd.scheduler.steps_offset).unwrap();
    assert_eq!(levels[..4], [751, 501, 251, 1].map(Level::Timestep));
    check(
        "prompt_embeds",
        sd.encode_prompts(&["", prompt]).unwrap(),
        exp.get::<3>("prompt_embeds"),
        TOL,
    );

    let guided = GuidedDenoiser::new(
        &sd,
        vec![prompt.to_string()],
        Guidance::new(7.5, CfgConvention::Diffusers),
    )
    .unwrap();
    for (eta, tag) in [(0.0, "eta0"), (1.0, "eta1")] {
        let steps = |name: &str| -> Vec<Tensor<B, 4>> {
            let t = exp.get::<5>(&format!("{tag}.{name}"));
            (0..4)
                .map(|i| t.clone().narrow(0, i, 1).squeeze_dim::<4>(0))
                .collect()
        };
        let noise = if eta > 0.0 {
            steps("variance_noise")
        } else {
            vec![Tensor::zeros([1, 4, 8, 16], &Default::default()); 4]
        };
        let mut noise = ReplayNoise::new(noise);
        let (lat, eps_ref) = (steps("latents"), steps("noise_pred"));
        let mut x = exp.get::<4>("init_latents");
        let mut worst: f64 = 0.0;
        for i in 0..4 {
            let Level::Timestep(t) = levels[i] else {
                unreachable!()
            };
            let eps = guided.eps(x.clone(), &[t]).unwrap();
            worst = worst.max(check(
                &format!("{tag} step {i} noise_pred"),
                eps.clone(),
                eps_ref[i].clone(),
                TOL,
            ));
            let c = DdimCoeffs::new(&schedule, levels[i], levels[i + 1], eta);
            let z = noise.normal([1, 4, 8, 16], &Default::default()).unwrap();
            x = ddim_step_vp(x, eps, &c, z);
            worst = worst.max(check(
                &format!("{tag} step {i} latents"),
                x.clone(),
                lat[i].clone(),
                TOL,
            ));
        }
        println!("{tag}: worst per-step error {worst:.3e}");
        if eta == 0.0 {
            check("eta0.image", sd.decode(x), exp.get::<4>("eta0.image"), TOL);
        }
    }
}

/// The same parity through burn's own tensor ops: under `Autodiff<Cpu>` the layers do not take
/// the f32 CPU kernels (`cpu_kernels`), so this is the code path GPU backends run.
#[test]
fn backend_ops_path_matches_too() {
    type Ad = burn::backend::Autodiff<B>;
    let to_ad = |t: Tensor<B, 4>| Tensor::<Ad, 4>::from_data(t.into_data(), &Default::default());
    let to_ad3 = |t: Tensor<B, 3>| Tensor::<Ad, 3>::from_data(t.into_data(), &Default::default());
    let sd = Sd15::<Ad>::load(model_dir(), &Default::default()).unwrap();
    let exp = Expected::open("unet.safetensors");
    let eps = sd
        .unet
        .forward(
            to_ad(exp.get::<4>("sample")),
            &[500.0, 500.0],
            to_ad3(exp.get::<3>("encoder_hidden_states")),
        )
        .unwrap();
    check(
        "backend ops: eps_t500",
        eps,
        to_ad(exp.get::<4>("eps_t500")),
        TOL,
    );
    let vae = Expected::open("vae.safetensors");
    check(
        "backend ops: decode_image",
        sd.decode(to_ad(vae.get::<4>("decode_latents"))),
        to_ad(vae.get::<4>("decode_image")),
        TOL,
    );
    let te = Expected::open("text_encoder.safetensors");
    let prompts = manifest_inputs("text_encoder.safetensors")["prompts"].clone();
    let ids: Vec<Vec<u32>> = prompts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| sd.tokenizer.encode(p.as_str().unwrap()))
        .collect();
    check(
        "backend ops: last_hidden_state",
        sd.text_encoder.forward(&ids).unwrap().last_hidden_state,
        to_ad3(te.get::<3>("last_hidden_state")),
        TOL,
    );
}
