"""Diffusion purifiers on real CIFAR-10 images, CPU scale (issue: diffusion purification acceptance).

On ``../shared/data/cifar10_subset.npz`` (4,660 train / 932 test): the defender's
clean reference set is 4 % of the training split (186 images, duplicated ×4);
a ``tiny`` DDPM (cosine T = 4,000) is trained on it once on the CPU
(``--iterations``, cached under $ECLIPSE_RAY_CACHE) and shared by ``eclipse``
and ``denoise``; the fast victim trains 10 epochs. Each row: attack × defense ×
noise level, against the undefended rows of ``foundation_quality.py``.

Usage:  ECLIPSE_RAY_CACHE=cache python benchmarks/diffusion_quality.py [--iterations 600] [--seed 0] [--puregen | --sigma]
Cost:   model training ≈ 1.7 s/iteration (batch 64) plus ≈ 2.5 min per trial on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

from eclipse_ray.data.sources import npz_spec
from eclipse_ray.presets import SUBSET_NPZ as DEFAULT_NPZ
from eclipse_ray.trial import build_config, is_stored, run_trial

ONESHOT = {"defense.sampler": "oneshot"}
TRIALS = [
    ("lsp", "eclipse", {**ONESHOT, "defense.sigma": "0.05"}),
    ("none", "eclipse", {**ONESHOT, "defense.sigma": "0.05"}),
    ("lsp", "denoise", {"defense.sigma": "0.1"}),
    ("none", "denoise", {"defense.sigma": "0.1"}),
    ("lsp", "denoise", {"defense.sigma": "0.05"}),
    ("ops", "eclipse", {**ONESHOT, "defense.sigma": "0.05"}),
    ("badnets", "eclipse", {**ONESHOT, "defense.sigma": "0.05"}),
    ("ops", "none", {}),
]
# σ around the working point, for "the σ each works best" (--sigma)
TRIALS_SIGMA = [
    ("lsp", "eclipse", {**ONESHOT, "defense.sigma": "0.025"}),
    ("none", "eclipse", {**ONESHOT, "defense.sigma": "0.025"}),
    ("lsp", "eclipse", {**ONESHOT, "defense.sigma": "0.1"}),
    ("none", "eclipse", {**ONESHOT, "defense.sigma": "0.1"}),
    ("lsp", "denoise", {"defense.sigma": "0.2"}),
]
PUREGEN = {"defense.sampler": "ddim", "defense.steps": "4", "defense.sigma": "0.1"}
TRIALS_PUREGEN = [(a, "puregen-ddpm", PUREGEN) for a in ("lsp", "none", "ops", "badnets")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--npz", default=str(DEFAULT_NPZ))
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default="results/diffusion_cpu")
    p.add_argument("--puregen", action="store_true", help="the puregen-ddpm rows (trains its own model first)")
    p.add_argument("--sigma", action="store_true", help="the σ rows around each defense's working point")
    args = p.parse_args()
    for attack, defense, extra in (TRIALS_PUREGEN if args.puregen else TRIALS_SIGMA if args.sigma else TRIALS):
        settings = {"victim.epochs": "10", "seed": str(args.seed), **extra}
        if defense != "none":
            settings.update({"defense.train.iterations": str(args.iterations), "defense.train.preset": "tiny"})
        cfg = build_config(npz_spec(args.npz), attack, defense, settings)
        if is_stored(cfg, args.results):
            continue  # measured already (rerun to finish an interrupted benchmark)
        t = time.perf_counter()
        row = run_trial(cfg, results_dir=args.results, reference=False, progress=False)
        print(f"{attack:>8} + {defense:<8} σ={row.get('defense.sigma', 0) or 0:.4f} t*={row.get('defense.t_star', 0)}"
              f" test_acc {row['test_acc']:.3f}" + (f" asr {row['asr']:.3f}" if "asr" in row else "")
              + f" psnr_p {row.get('purify_psnr_poisoned', float('nan')):.1f}"
              f" purify {row['purify_seconds']:.0f}s total {time.perf_counter() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
