"""Device checks: the purifiers' invariants on the machine that runs them, in seconds.

The test suite checks these on the CPU; a lent GPU is the only place to check them on CUDA,
so the GPU sprint runs this first and puts its lines in its report:

1. Philox4x32-10 gives Random123's known answers on the device (exact integers);
2. its words are bit-identical on the device and the CPU, its normals within 1e-5;
3. a sample's noise on the device does not depend on the rows beside it;
4. a purified row (random tiny UNet, full DDPM chain from t* = 5, Philox noise, the
   default eager path) holds the same bytes beside other rows and in another order;
5. on CUDA, the same through ``torch.compile`` with CUDA graphs
   (``defense.compile_mode=reduce-overhead``), and its largest difference from eager.

Prints each check's line as it finishes (an exception fails that check only); exits 0
when all pass, 3 when only the CUDA-graph check fails (purify without compiling), 1 otherwise.

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
from eclipse_ray.rng import KNOWN_ANSWERS as KAT
from eclipse_ray.rng import philox4x32, philox_randn


def _check(what: str, fn) -> tuple[str, bool, str]:
    """One check, printed as it finishes; an exception is its failure, not the end of the others."""
    try:
        ok, detail = fn()
    except Exception as e:  # noqa: BLE001 — reported as the check's failure
        ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    print(f"  {'ok  ' if ok else 'FAIL'} {what} ({detail})", flush=True)
    return what, ok, detail


def checks(device: torch.device, compile: bool) -> list[tuple[str, bool, str]]:
    out = []

    def known_answers():
        got = [tuple(int(w) for w in philox4x32(tuple(torch.tensor([c], device=device) for c in ctr), key))
               for ctr, key, _ in KAT]
        return got == [want for *_, want in KAT], f"on {device}"
    out.append(_check("philox known answers", known_answers))

    index = np.array([3, 1, 2 ** 33 + 5, 0, 99])

    def equals_cpu():
        ctr = tuple(torch.arange(4096, dtype=torch.int64) * (k + 1) for k in range(4))
        same = all(torch.equal(a, b.cpu()) for a, b in zip(philox4x32(ctr, (7, 9)),
                                                             philox4x32(tuple(c.to(device) for c in ctr), (7, 9))))
        z_cpu, z_dev = philox_randn(index, 11, 2, (3, 8, 8)), philox_randn(index, 11, 2, (3, 8, 8), device)
        diff = float((z_cpu - z_dev.cpu()).abs().max())
        return same and diff < 1e-5, f"words identical: {same}, normals max |Δ| {diff:.1e}"
    out.append(_check("philox on the device equals the CPU", equals_cpu))

    def alone():
        together = philox_randn(index, 11, 2, (3, 8, 8), device)
        rows = torch.stack([philox_randn(index[i:i + 1], 11, 2, (3, 8, 8), device)[0] for i in range(len(index))])
        return torch.equal(rows, together), "rows drawn alone and together"
    out.append(_check("a sample's noise ignores its batch", alone))

    torch.manual_seed(0)
    unet = build_unet("tiny").to(device).eval()
    coeffs = Schedule.make("cosine", 4000).coefficients(device)
    rng = np.random.default_rng(0)
    images, others = (rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8) for _ in range(2))
    idx, plan = np.arange(100, 108), SamplerPlan("ddpm", 5)
    cuda = device.type == "cuda"

    def purify(model, x, i):
        return purify_batch(model, coeffs, x, i, plan, 0, bf16=cuda, channels_last=cuda, rng="philox")

    def independent(model):
        """Rows 0–3 beside other rows (4–7 replaced by other images and ids) and in reverse order."""
        base = purify(model, images, idx)
        mixed = purify(model, np.concatenate([images[:4], others[:4]]), np.concatenate([idx[:4], idx[4:] + 50]))
        flipped = purify(model, images[::-1], idx[::-1])[::-1]
        return base, np.array_equal(base[:4], mixed[:4]) and np.array_equal(base, flipped)

    eager = {}

    def eager_check():
        eager["out"], ok = independent(unet)
        return ok, f"8 rows on {device}: other neighbours, reversed order"
    out.append(_check("purified bytes ignore the rest of the batch (eager)", eager_check))
    if compile and cuda:
        def graphs():
            fast = compiled(unet.to(memory_format=torch.channels_last), "reduce-overhead")
            got, ok = independent(fast)
            gap = int(np.abs(got.astype(int) - eager["out"]).max()) if "out" in eager else -1
            return ok, f"largest difference from eager: {gap}/255"
        out.append(_check(COMPILED, graphs))
    return out


COMPILED = "purified bytes ignore the rest of the batch (CUDA graphs)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device checks on {name}:", flush=True)
    results = checks(device, not args.no_compile)
    failed = {what for what, ok, _ in results if not ok}
    return 0 if not failed else 3 if failed == {COMPILED} else 1


if __name__ == "__main__":
    sys.exit(main())
