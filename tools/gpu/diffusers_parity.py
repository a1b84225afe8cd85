"""The checks of `ddrep parity` done by diffusers/transformers themselves, on a device and in a
dtype: how far PyTorch's own low-precision (and TF32) runs land from the fixture's fp32 CPU
outputs. It gives the reference column beside ddrep's in the issue's GPU report, so that a
tolerance is judged against what the reference library does on the same card.

    python3 tools/gpu/diffusers_parity.py --device cuda [--fixtures tests/fixtures/sd15_tiny]

Modes (one column each): f32 strict (no TF32 anywhere), f32 torch default (TF32 in cuDNN
convolutions only), f32 with TF32 matmuls too, f16, bf16. Error = max|a-b| / max|b|, as in
src/parity.rs; the same inputs (the fixture's, its encoder_hidden_states for the UNet checks,
the text encoder in the run's dtype for the CFG batch).
"""
import argparse
import json
import os

import torch
from safetensors.torch import load_file


def rel_err(a, b):
    a = a.detach().float().cpu()
    b = b.float()
    return float((a - b).abs().max() / b.abs().max())


def run(fix, device, dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model = os.path.join(fix, "model")
    exp = lambda f: load_file(os.path.join(fix, "expected", f))
    manifest = json.load(open(os.path.join(fix, "expected", "manifest.json")))
    inputs = {f["file"]: f.get("inputs") for f in manifest["files"]}
    tok = CLIPTokenizer.from_pretrained(os.path.join(model, "tokenizer"))
    te = CLIPTextModel.from_pretrained(os.path.join(model, "text_encoder"), torch_dtype=dtype).to(device).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(model, "unet"), torch_dtype=dtype).to(device).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(model, "vae"), torch_dtype=dtype).to(device).eval()
    d = lambda t: t.to(device=device, dtype=dtype)

    def embed(prompts):
        ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return te(ids.to(device)).last_hidden_state

    out = {}
    with torch.no_grad():
        e = exp("text_encoder.safetensors")
        out["text_encoder last_hidden_state"] = rel_err(embed(inputs["text_encoder.safetensors"]["prompts"]), e["last_hidden_state"])
        u = exp("unet.safetensors")
        for t in (999, 500, 1):
            eps = unet(d(u["sample"]), torch.tensor(t, device=device), encoder_hidden_states=d(u["encoder_hidden_states"])).sample
            out[f"unet eps t={t}.0"] = rel_err(eps, u[f"eps_t{t}"])
        c = exp("unet_cfg.safetensors")
        ci = inputs["unet_cfg.safetensors"]
        ehs = embed(ci["prompts"])
        eps = unet(d(torch.cat([c["sample"]] * 2)), torch.tensor(ci["timestep"], device=device), encoder_hidden_states=ehs).sample
        out["denoiser eps uncond (CFG batch)"] = rel_err(eps[0:1], c["eps_uncond"])
        out["denoiser eps cond (CFG batch)"] = rel_err(eps[1:2], c["eps_cond"])
        v = exp("vae.safetensors")
        out["vae decode"] = rel_err(vae.decode(d(v["decode_latents"]) / 0.18215).sample, v["decode_image"])
        out["vae encode mean"] = rel_err(vae.encode(d(v["encode_image"])).latent_dist.mean, v["encode_mean"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="tests/fixtures/sd15_tiny")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    modes = [
        ("f32 strict", torch.float32, False, False),
        ("f32 torch default", torch.float32, False, True),
        ("f32 tf32", torch.float32, True, True),
        ("f16", torch.float16, False, True),
        ("bf16", torch.bfloat16, False, True),
    ]
    cols = {}
    for name, dtype, mm_tf32, conv_tf32 in modes:
        torch.backends.cuda.matmul.allow_tf32 = mm_tf32
        torch.backends.cudnn.allow_tf32 = conv_tf32
        cols[name] = run(a.fixtures, dev, dtype)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True
    dn = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"diffusers parity on {dn} (torch {torch.__version__}): max|a-b|/max|b| against the fixture's fp32 CPU outputs")
    print("| check | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for check in next(iter(cols.values())):
        print(f"| {check} | " + " | ".join(f"{cols[m][check]:.3e}" for m in cols) + " |")


if __name__ == "__main__":
    main()
