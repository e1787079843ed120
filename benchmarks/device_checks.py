"""Device checks: the purifiers' invariants on the machine that runs them, in seconds.

The test suite checks these on the CPU; a lent GPU is the only place to check them on CUDA,
so the GPU sprint runs this first and puts its lines in its report:

1. Philox4x32-10 gives Random123's known answers on the device (exact integers);
2. its words are bit-identical on the device and the CPU, its normals within 1e-5;
3. a sample's noise on the device does not depend on the rows beside it;
4. a purified batch (random tiny UNet, full DDPM chain from t* = 5, Philox noise, the
   default eager path) holds the same bytes whatever the order of its rows;
5. on CUDA, the same through ``torch.compile`` with CUDA graphs
   (``defense.compile_mode=reduce-overhead``), and its largest difference from eager.

Prints one line per check; exits 1 if one fails.

Usage:  python benchmarks/device_checks.py [--device cuda|cpu] [--no-compile]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from eclipse_ray.defenses.diffusion import compiled
from eclipse_ray.diffusion.samplers import SamplerPlan, purify_batch
from eclipse_ray.diffusion.schedule import Schedule
from eclipse_ray.diffusion.unet import build_unet
from eclipse_ray.rng import philox4x32, philox_randn

KAT = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]


def checks(device: torch.device, compile: bool) -> list[tuple[str, bool, str]]:
    out = []
    got = [tuple(int(w) for w in philox4x32(tuple(torch.tensor([c], device=device) for c in ctr), key))
           for ctr, key, _ in KAT]
    out.append(("philox known answers", got == [want for *_, want in KAT], f"on {device}"))

    ctr = tuple(torch.arange(4096, dtype=torch.int64) * (k + 1) for k in range(4))
    words_cpu = philox4x32(ctr, (7, 9))
    words_dev = philox4x32(tuple(c.to(device) for c in ctr), (7, 9))
    same = all(torch.equal(a, b.cpu()) for a, b in zip(words_cpu, words_dev))
    index = np.array([3, 1, 2 ** 33 + 5, 0, 99])
    z_cpu, z_dev = philox_randn(index, 11, 2, (3, 8, 8)), philox_randn(index, 11, 2, (3, 8, 8), device)
    diff = float((z_cpu - z_dev.cpu()).abs().max())
    out.append(("philox on the device equals the CPU", same and diff < 1e-5, f"words identical: {same}, "
                f"normals max |Δ| {diff:.1e}"))

    alone = torch.stack([philox_randn(index[i:i + 1], 11, 2, (3, 8, 8), device)[0] for i in range(len(index))])
    out.append(("a sample's noise ignores its batch", torch.equal(alone, z_dev), "rows drawn alone and together"))

    torch.manual_seed(0)
    unet = build_unet("tiny").to(device).eval()
    coeffs = Schedule.make("cosine", 4000).coefficients(device)
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    idx, plan = np.arange(100, 108), SamplerPlan("ddpm", 5)
    cuda = device.type == "cuda"

    def purify(model, x, i):
        return purify_batch(model, coeffs, x, i, plan, 0, bf16=cuda, channels_last=cuda, rng="philox")

    eager = purify(unet, images, idx)
    flipped = purify(unet, images[::-1], idx[::-1])[::-1]
    out.append(("purified bytes ignore row order (eager)", np.array_equal(eager, flipped), f"8 rows on {device}"))
    if compile and cuda:
        fast = compiled(unet.to(memory_format=torch.channels_last), "reduce-overhead")
        a, b = purify(fast, images, idx), purify(fast, images[::-1], idx[::-1])[::-1]
        gap = int(np.abs(a.astype(int) - eager).max())
        out.append(("purified bytes ignore row order (CUDA graphs)", np.array_equal(a, b),
                    f"largest difference from eager: {gap}/255"))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    results = checks(device, not args.no_compile)
    print(f"device checks on {name}:")
    for what, ok, detail in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {what} ({detail})")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
