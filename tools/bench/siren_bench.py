#!/usr/bin/env python3
"""PyTorch reference for the batched-SIREN Adam benchmark (CPU).

Times Adam steps/s for `--sirens` independent image SIRENs trained together, built exactly
like the crate's `src/diffrep/siren.rs` (defaults = the paper size):

  * grid: `res x res` coordinates in [-1, 1], row-major (y, then x);
  * embedding (size 128): for u = y then x, for each of 32 frequencies f_j geometric from
    0.5 to the Nyquist frequency (res - 1) / 2 cycles over the range (31.5 at res 64):
    sin(2 pi f u / 2), cos(2 pi f u / 2), interleaved;
  * `--depth` hidden layers of `--width` with sin activation (omega = 1), then a linear
    layer to 4 channels; weights [n, in, out], biases [n, 1, out], applied with baddbmm;
  * init: hidden weights U(+-sqrt(6/in)), biases U(+-1/sqrt(in)), output layer zero;
  * loss = 0.5 * n * mean((render - target)^2) with render [n, 4, res, res]
    (the crate's `solver::loss`); Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8.

Prints one JSON line:
  {"framework":"torch","steps_per_s":..,"ms_per_step":..,"threads":..,"torch":"..", ...config}
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def embedding(res: int, size: int) -> torch.Tensor:
    """[res*res, size] float32, as SirenConfig::embedding (computed in float64, then cast)."""
    nf = size // 4
    fmax = max((res - 1) / 2.0, 1.0)
    fmin = min(0.5, fmax)
    if nf == 1:
        freqs = torch.tensor([fmax], dtype=torch.float64)
    else:
        j = torch.arange(nf, dtype=torch.float64)
        freqs = fmin * (fmax / fmin) ** (j / (nf - 1))
    lin = torch.linspace(-1.0, 1.0, res, dtype=torch.float64) if res > 1 else torch.zeros(1, dtype=torch.float64)
    y, x = torch.meshgrid(lin, lin, indexing="ij")  # row-major: y outer, x inner
    coords = torch.stack([y.reshape(-1), x.reshape(-1)], dim=1)  # [P, 2]
    a = 2.0 * math.pi * coords[:, :, None] * freqs[None, None, :] / 2.0  # span = 2
    emb = torch.stack([a.sin(), a.cos()], dim=-1)  # [P, 2, nf, 2]: (axis, freq, sin/cos)
    return emb.reshape(coords.shape[0], size).to(torch.float32)


def init_params(n: int, size: int, width: int, depth: int, out: int, gen: torch.Generator):
    layers = []
    d_in = size
    for _ in range(depth):
        layers.append((d_in, width))
        d_in = width
    layers.append((d_in, out))
    params = []
    for li, (i, o) in enumerate(layers):
        if li + 1 == len(layers):
            w = torch.zeros(n, i, o)
            b = torch.zeros(n, 1, o)
        else:
            wb, bb = math.sqrt(6.0 / i), 1.0 / math.sqrt(i)
            w = (torch.rand(n, i, o, generator=gen) * 2 - 1) * wb
            b = (torch.rand(n, 1, o, generator=gen) * 2 - 1) * bb
        params += [w.requires_grad_(), b.requires_grad_()]
    return params


def render(emb: torch.Tensor, params, n: int, res: int, out: int) -> torch.Tensor:
    h = emb.unsqueeze(0).expand(n, -1, -1)
    nl = len(params) // 2
    for li in range(nl):
        w, b = params[2 * li], params[2 * li + 1]
        h = torch.baddbmm(b, h, w)
        if li + 1 < nl:
            h = torch.sin(h)
    return h.reshape(n, res, res, out).permute(0, 3, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description="PyTorch CPU reference: batched SIREN Adam steps/s")
    ap.add_argument("--sirens", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=3, help="hidden sine layers")
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--embedding", type=int, default=128, help="multiple of 4")
    ap.add_argument("--out", type=int, default=4, help="output channels")
    ap.add_argument("--steps", type=int, default=20, help="timed Adam steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed Adam steps first")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    assert args.embedding % 4 == 0 and args.embedding > 0

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    n, res, out = args.sirens, args.res, args.out
    emb = embedding(res, args.embedding)
    params = init_params(n, args.embedding, args.width, args.depth, out, gen)
    target = torch.randn(n, out, res, res, generator=gen)
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * n * torch.mean((render(emb, params, n, res, out) - target) ** 2)
        loss.backward()
        opt.step()
        return loss

    with torch.no_grad():
        loss0 = float(0.5 * n * torch.mean((render(emb, params, n, res, out) - target) ** 2))
    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    last = float(loss.detach())  # forces completion (CPU is synchronous anyway)
    dt = time.perf_counter() - t0

    print(json.dumps({
        "framework": "torch",
        "steps_per_s": round(args.steps / dt, 4),
        "ms_per_step": round(1000.0 * dt / args.steps, 3),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sirens": n, "width": args.width, "depth": args.depth, "res": res,
        "embedding": args.embedding, "steps": args.steps, "warmup": args.warmup,
        "params_per_siren": sum(p[0].numel() for p in params),
        "loss_first": round(loss0, 6), "loss_last": round(last, 6),
    }, separators=(",", ":")))


if __name__ == "__main__":
    main()
