"""Purification throughput: eclipse_ray's sampler loop against a naive ECLIPSE-style loop.

For each sampler (ddpm from t*, ddim with k steps, oneshot) and batch size, in
one run on the same UNet weights and t*, it measures images/s and model
calls/s of

* ``naive`` — written the way ECLIPSE's public code (improved-diffusion's
  ``p_sample_loop``) does it: fp32, eager, schedule coefficients held in numpy
  and looked up on the host every step (``_extract_into_tensor``: a host→device
  copy per coefficient per step), a fresh timestep tensor per step, noise from
  the global RNG;
* ``eclipse_ray`` — :func:`eclipse_ray.diffusion.samplers.purify_batch`:
  coefficients precomputed on the device, bf16 autocast and channels_last on
  CUDA, ``torch.inference_mode``, optional ``torch.compile`` (``--compile-mode``:
  reduce-overhead and max-autotune replay CUDA graphs), per-sample noise from
  CPU generators or Philox on the device (``--rng``);

and prints their ratio, the UNet's achieved TFLOP/s (its FLOPs counted once with
``torch.utils.flop_counter``: the compute ceiling of any speed-up) and the seconds
per batch spent drawing the noise alone. Weights are random (speed does not depend
on them).

Usage:  python benchmarks/purify_throughput.py [--preset tiny|small|paper] [--batch 16 64] [--rng philox]
Cost:   CPU, tiny preset, defaults: about 4 min on 2 cores (see README for measured figures).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from eclipse_ray.defenses.diffusion import COMPILE_MODES, compiled
from eclipse_ray.diffusion.samplers import NOISE_RNGS, SamplerPlan, ddim_timesteps, purify_batch, sample_noise
from eclipse_ray.diffusion.schedule import Schedule
from eclipse_ray.diffusion.unet import build_unet


def _extract(arr: np.ndarray, t: torch.Tensor, shape) -> torch.Tensor:
    """improved-diffusion's _extract_into_tensor: numpy on the host, indexed per step, copied to the device."""
    res = torch.from_numpy(arr).to(device=t.device)[t].float()
    while len(res.shape) < len(shape):
        res = res[..., None]
    return res.expand(shape)


def naive_purify(unet, sched: Schedule, images: np.ndarray, plan: SamplerPlan, device) -> np.ndarray:
    ab = sched.alphas_cumprod.numpy()
    ab_prev = np.append(1.0, ab[:-1])
    beta = 1 - ab / ab_prev
    post_c0 = beta * np.sqrt(ab_prev) / np.maximum(1 - ab, 1e-20)
    post_ct = (1 - ab_prev) * np.sqrt(1 - beta) / np.maximum(1 - ab, 1e-20)
    post_var = beta * (1 - ab_prev) / np.maximum(1 - ab, 1e-20)
    with torch.no_grad():
        x0 = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        t0 = torch.tensor([plan.t_star] * len(x0), device=device)
        x = _extract(np.sqrt(ab), t0, x0.shape) * x0 + _extract(np.sqrt(1 - ab), t0, x0.shape) * torch.randn_like(x0)
        steps = list(range(plan.t_star, 0, -1)) if plan.sampler == "ddpm" else \
            ddim_timesteps(plan.t_star, plan.steps) if plan.sampler == "ddim" else [plan.t_star]
        for i, k in enumerate(steps):
            t = torch.tensor([k] * len(x), device=device)
            eps = unet(x, t - 1).sample
            x0_hat = ((x - _extract(np.sqrt(1 - ab), t, x.shape) * eps) / _extract(np.sqrt(ab), t, x.shape)).clamp(-1, 1)
            if plan.sampler == "oneshot" or k == 1:
                x = x0_hat
                break
            if plan.sampler == "ddpm":
                mean = _extract(post_c0, t, x.shape) * x0_hat + _extract(post_ct, t, x.shape) * x
                x = mean + _extract(np.sqrt(post_var), t, x.shape) * torch.randn_like(x)
            else:
                nxt = torch.tensor([steps[i + 1] if i + 1 < len(steps) else 0] * len(x), device=device)
                x = _extract(np.sqrt(ab), nxt, x.shape) * x0_hat + _extract(np.sqrt(1 - ab), nxt, x.shape) * eps
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def unet_flops(unet, image_shape: tuple[int, ...]) -> float:
    """FLOPs of one UNet call on one image (2 per multiply-add), counted on a CPU copy."""
    from torch.utils.flop_counter import FlopCounterMode

    cpu = copy.deepcopy(unet).to("cpu").float()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        cpu(torch.zeros(2, *image_shape), torch.zeros(2, dtype=torch.long))
    return counter.get_total_flops() / 2


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    p.add_argument("--t-star", type=int, default=100, help="t* on a cosine T=4000 schedule (ECLIPSE: 100)")
    p.add_argument("--ddim-steps", type=int, default=10)
    p.add_argument("--ddpm-t-star", type=int, default=None, help="t* for the full chain (default: --t-star)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode (reduce-overhead and max-autotune use CUDA graphs: the batch shape is "
                        "fixed, as eclipse_ray's purifiers keep it; default and reduce-overhead as the purifiers "
                        "compile, in Inductor's deterministic mode; max-autotune, which they do not use, without)")
    p.add_argument("--rng", nargs="+", default=["generator"], choices=NOISE_RNGS,
                   help="eclipse_ray's per-sample noise (defense.rng), a row each: CPU generators or Philox on the "
                        "device")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    unet = build_unet(args.preset).eval()
    flops = unet_flops(unet, (3, 32, 32))
    unet = unet.to(device)
    # a copy: Module.to(memory_format=…) works in place, and the naive loop keeps the plain layout
    fast_unet = copy.deepcopy(unet).to(memory_format=torch.channels_last) if device.type == "cuda" else unet
    if args.compile:  # the purifiers' own compile (deterministic); max-autotune only here, as a ceiling
        fast_unet = compiled(fast_unet, args.compile_mode) if args.compile_mode in COMPILE_MODES else \
            torch.compile(fast_unet, dynamic=False, mode=args.compile_mode)
    sched = Schedule.make("cosine", 4000)
    coeffs = sched.coefficients(device)
    bf16 = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; preset {args.preset} ({sum(q.numel() for q in unet.parameters()) / 1e6:.1f} M params, "
          f"{flops / 1e9:.2f} GFLOP per image and call); cosine T=4000"
          f"{'; compiled, mode ' + args.compile_mode if args.compile else ''}")
    plans = [SamplerPlan("ddpm", args.ddpm_t_star or args.t_star), SamplerPlan("ddim", args.t_star, args.ddim_steps),
             SamplerPlan("oneshot", args.t_star)]
    print(f"{'sampler':<8} {'calls':>5} {'batch':>5} | {'naive img/s':>11} | {'noise':<9} {'ours img/s':>10} "
          f"{'ours calls/s':>12} {'TFLOP/s':>7} {'noise s':>7} | ratio")
    for plan in plans:
        for b in args.batch:
            images = np.random.default_rng(0).integers(0, 256, (b, 32, 32, 3), dtype=np.uint8)
            index = np.arange(b)
            t_naive = timed(lambda: naive_purify(unet, sched, images, plan, device), args.repeats, device)
            for rng in args.rng:
                t_ours = timed(lambda: purify_batch(fast_unet, coeffs, images, index, plan, 0, bf16=bf16,
                                                    channels_last=device.type == "cuda", rng=rng),
                               args.repeats, device)
                t_noise = timed(lambda: sample_noise(index, 0, 0, plan.draws(), (3, 32, 32), device, rng),
                                args.repeats, device)
                calls = plan.model_calls()
                print(f"{plan.sampler:<8} {calls:>5} {b:>5} | {b / t_naive:>11.1f} | {rng:<9} {b / t_ours:>10.1f} "
                      f"{b * calls / t_ours:>12.1f} {b * calls * flops / t_ours / 1e12:>7.2f} {t_noise:>7.3f} "
                      f"| {t_naive / t_ours:.2f}x", flush=True)


if __name__ == "__main__":
    main()
