"""Shared command line of the sweep scripts: presets, flags, run, summary, report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

from eclipse_ray.config import split_overrides
from eclipse_ray.distributed.tune import cache_counts, run_sweep
from eclipse_ray.results.report import write_report

# smoke: digits, tiny auto-trained DDPM, small fast victim; CPU, offline, minutes.
SMOKE = {"dataset": "digits", "victim": {"victim.epochs": "4", "victim.width": "16"},
         "defense": {"defense.train_iterations": "40", "defense.train_batch_size": "32",
                     "defense.train_preset": "tiny"}}
# cifar10: full CIFAR-10, paper UNet, ResNet-18 (ECLIPSE's recipe); GPUs.
CIFAR10 = {"dataset": "cifar10",
           "victim": {"victim.arch": "resnet18", "victim.epochs": "80", "victim.batch_size": "128"},
           "defense": {"defense.train_iterations": "250000", "defense.train_preset": "paper",
                       "defense.batch_size": "512"}}
# subset: the 4,660-image CIFAR-10 subset shipped beside the checkout (../shared/data), CPU scale: the
# tiny DDPM of benchmarks/diffusion_quality.py (600 iterations; cached under $ECLIPSE_RAY_CACHE), fast victim.
SUBSET_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_subset.npz"
SUBSET = {"dataset": f"npz:{SUBSET_NPZ}", "victim": {"victim.epochs": "10"},
          "defense": {"defense.train_iterations": "600", "defense.train_preset": "tiny"}}
PRESETS = {"smoke": SMOKE, "subset": SUBSET, "cifar10": CIFAR10}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", choices=tuple(PRESETS), default="smoke")
    p.add_argument("--dataset", default=None, help="override the preset's dataset")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--results", default=None, help="study directory (default results/<study>-<preset>)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings for every trial")
    p.add_argument("--gpus-per-trial", type=float, default=None)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--data-dir", default=None)
    return p


def trial_settings(preset: dict[str, Any], defense: str, extra: dict[str, str], seed: int,
                   user: dict[str, str]) -> dict[str, str]:
    """One trial's --set: preset victim, preset diffusion settings, grid values, then the user's --set
    (``defense.*`` keys only where this defense has that setting)."""
    from eclipse_ray.defenses import DEFENSES

    fields = {f"defense.{name}" for name, *_ in DEFENSES[defense].describe()}
    s = {**preset["victim"], "seed": str(seed), **extra}
    s.update({k: v for k, v in preset["defense"].items() if k in fields})
    s.update({k: v for k, v in user.items() if not k.startswith("defense.") or k in fields})
    return s


def main(study: str, description: str, build: Callable[[dict[str, Any], argparse.Namespace], list[dict]]) -> None:
    args = parser(description).parse_args()
    preset = dict(PRESETS[args.preset])
    if args.dataset:
        preset["dataset"] = args.dataset
    args.user = split_overrides(args.set)
    specs = build(preset, args)
    study_dir = Path(args.results or f"results/{study}-{args.preset}")
    gpus = args.gpus_per_trial
    if gpus is None:
        import torch

        gpus = 0.25 if torch.cuda.is_available() else 0.0
    t = time.perf_counter()
    print(f"{study}: {len(specs)} trials -> {study_dir}", flush=True)
    df = run_sweep(study_dir, specs, address=args.address, cpus_per_trial=args.cpus_per_trial,
                   gpus_per_trial=gpus, data_dir=args.data_dir)
    computed, reused = cache_counts(df)
    report = write_report(study_dir)
    print(json.dumps({"study": str(study_dir), "rows": len(df), "purifications_computed": computed,
                      "purifications_reused": reused, "report": str(report),
                      "pareto_png": str(study_dir / "pareto.png"), "seconds": round(time.perf_counter() - t, 1)}))
