"""Shared command line of the sweep scripts: presets, flags, run, summary, report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

from eclipse_ray import storage
from eclipse_ray.boundary import debug_requested, guarded, plugins_requested
from eclipse_ray.config import split_overrides
from eclipse_ray.distributed.study import run_study
from eclipse_ray.distributed.tune import LOGGERS, cache_counts, spec
from eclipse_ray.presets import PRESETS, Preset, trial_settings  # noqa: F401  (trial_settings: for the sweep scripts)
from eclipse_ray.registry import use_plugins
from eclipse_ray.results.report import write_report


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, allow_abbrev=False)
    p.add_argument("--preset", choices=tuple(PRESETS), default="smoke")
    p.add_argument("--dataset", default=None, help="override the preset's dataset")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--results", default=None, help="study directory (default results/<study>-<preset>)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="settings for every trial")
    p.add_argument("--gpus-per-trial", type=float, default=None)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--defense", nargs="+", action="extend", default=[], metavar="NAME",
                   help="also run these defenses (at their defaults and --set) on every attack, seed and attack "
                        "setting of the grid, e.g. a plugin's")
    p.add_argument("--plugin", metavar="FILE.py", action="append", default=[],
                   help="load attacks, defenses, victims or datasets from this Python file (repeatable)")
    p.add_argument("--tune-logger", action="append", default=[], choices=LOGGERS, metavar="NAME",
                   help=f"Ray Tune logger callback ({', '.join(LOGGERS)}; repeatable), in place of Tune's automatic "
                        "CSV/JSON/TensorBoard ones; mlflow reads $MLFLOW_TRACKING_URI, wandb $WANDB_PROJECT")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def with_defenses(specs: list[dict], defenses: list[str], preset: Preset, user: dict[str, str]) -> list[dict]:
    """``specs`` plus, for every (dataset, attack, seed, attack settings) among them, a trial of each of
    ``defenses`` not already there."""
    have = {(s["dataset"], s["attack"], s["defense"], s["set"].get("seed"),
             tuple(sorted((k, v) for k, v in s["set"].items() if k.startswith("attack.")))) for s in specs}
    out = list(specs)
    for s in specs:
        attack_set = {k: v for k, v in s["set"].items() if k.startswith("attack.")}
        for d in defenses:
            key = (s["dataset"], s["attack"], d, s["set"].get("seed"), tuple(sorted(attack_set.items())))
            if key not in have:
                have.add(key)
                out.append(spec(s["dataset"], s["attack"], d,
                                trial_settings(preset, d, attack_set, int(s["set"].get("seed", 0)), user)))
    return out


def main(study: str, description: str, build: Callable[[Preset, argparse.Namespace], list[dict]]) -> None:
    """Parse, run the study, print its summary; every error one line ``PROG: error: …`` and exit 2."""
    debug, argv = debug_requested(sys.argv[1:])
    prog = os.path.basename(sys.argv[0])

    def go() -> None:
        plugins, rest = plugins_requested(argv)
        args = parser(description).parse_args(rest)
        use_plugins(plugins)
        _run(study, args, build)

    sys.exit(guarded(prog, go, debug))


def _run(study: str, args: argparse.Namespace, build) -> None:
    preset = PRESETS[args.preset]
    if args.dataset:
        preset = preset.with_dataset(args.dataset)
    args.user = split_overrides(args.set)
    specs = with_defenses(build(preset, args), args.defense, preset, args.user)
    study_dir = storage.normalize(args.results or f"results/{study}-{args.preset}")
    gpus = args.gpus_per_trial
    if gpus is None:
        import torch

        gpus = 0.25 if torch.cuda.is_available() else 0.0
    t = time.perf_counter()
    storage.check_writable(study_dir, "--results")
    if os.environ.get("ECLIPSE_RAY_CACHE"):
        storage.check_writable(os.environ["ECLIPSE_RAY_CACHE"], "the cache ($ECLIPSE_RAY_CACHE)")
    print(f"{study}: {len(specs)} trials -> {study_dir}", flush=True)
    with storage.claim(study_dir, "the study"):
        df = run_study(study_dir, specs, address=args.address, cpus_per_trial=args.cpus_per_trial,
                       gpus_per_trial=gpus, data_dir=args.data_dir, loggers=args.tune_logger or None)
    computed, reused = cache_counts(df)
    report = write_report(study_dir)
    print(json.dumps({"study": str(study_dir), "rows": len(df), "purifications_computed": computed,
                      "purifications_reused": reused, "report": report,
                      "pareto_png": storage.join(study_dir, "pareto.png"), "seconds": round(time.perf_counter() - t, 1)}))
