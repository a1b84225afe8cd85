#!/usr/bin/env python3
"""diffusers reference for `ddrep bench unet`: seconds per UNet2DConditionModel eval (CPU or CUDA).

Builds a random-weight `UNet2DConditionModel.from_config(<config.json>)` (diffusers' default
init; timing does not depend on the values) on `--device` in `--dtype` (default cpu, fp32;
CUDA timings synchronise before and after each eval), eval mode, and times
`unet(sample, t, encoder_hidden_states=ctx)` under `torch.inference_mode()` with
`sample` [batch, in_channels, S, S] (S = the config's sample_size unless --size),
`ctx` [batch, 77, cross_attention_dim], all rows at timestep `--timestep`; batch 2 is one
classifier-free-guidance eval ([uncond; cond]), as the crate's `Sd15` denoiser batches it.

Prints one JSON line:
  {"framework":"diffusers","median_s":..,"mean_s":..,"min_s":..,"evals":..,"threads":..,"params":..,
   "torch":"..","diffusers":"..","shape":[..]}
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a diffusers unet/config.json")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=0, help="latent H = W (default: sample_size)")
    ap.add_argument("--evals", type=int, default=3, help="timed evals")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--timestep", type=int, default=500)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    a = ap.parse_args()

    import diffusers
    from diffusers import UNet2DConditionModel

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    with open(a.config) as f:
        cfg = json.load(f)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    dev = torch.device(a.device)
    unet = UNet2DConditionModel.from_config(cfg).eval().to(device=dev, dtype=dtype)
    params = sum(p.numel() for p in unet.parameters())
    c = unet.config
    size = a.size or (c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0])
    ctx_dim = c.cross_attention_dim if isinstance(c.cross_attention_dim, int) else c.cross_attention_dim[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, c.in_channels, size, size, generator=g).to(device=dev, dtype=dtype)
    ctx = torch.randn(a.batch, 77, ctx_dim, generator=g).to(device=dev, dtype=dtype)
    t = torch.full((a.batch,), a.timestep, dtype=torch.long, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.evals):
            sync()
            t0 = time.perf_counter()
            out = unet(x, t, encoder_hidden_states=ctx).sample
            sync()
            dt = time.perf_counter() - t0
            if i >= a.warmup:
                times.append(dt)
    assert torch.isfinite(out).all(), "non-finite UNet output"
    print(json.dumps({
        "framework": "diffusers",
        "median_s": statistics.median(times),
        "mean_s": sum(times) / len(times),
        "min_s": min(times),
        "evals": len(times),
        "threads": torch.get_num_threads(),
        "params": params,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "shape": list(x.shape),
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "dtype": a.dtype,
    }))


if __name__ == "__main__":
    main()
