"""Foundation acceptance figures on real CIFAR-10 images (CPU).

Measures, on ``../shared/data/cifar10_subset.npz`` (4,660 train / 932 test
CIFAR-10 images) with the fast victim for 10 epochs:

* how much LSP (100 % poisoned) lowers ``test_acc`` against clean training,
  and how much of that the ``gray`` and ``jpeg`` baselines win back;
* BadNets (10 %, target 0): attack success rate and clean accuracy.

Usage:  python benchmarks/foundation_quality.py [--seeds 0 1] [--npz PATH] [--results DIR]
Cost:   about 75 s per trial on 2 CPU cores; 6 trials per seed (measured: see README).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from eclipse_ray.data.sources import npz_spec
from eclipse_ray.presets import SUBSET_NPZ as DEFAULT_NPZ
from eclipse_ray.trial import build_config, run_trial

TRIALS = [("none", "none"), ("lsp", "none"), ("lsp", "gray"), ("lsp", "jpeg"), ("badnets", "none"),
          ("badnets", "jpeg")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--npz", default=str(DEFAULT_NPZ))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--results", default="results/foundation")
    args = p.parse_args()
    rows = []
    for seed in args.seeds:
        for attack, defense in TRIALS:
            cfg = build_config(npz_spec(args.npz), attack, defense,
                               {"victim.epochs": str(args.epochs), "seed": str(seed)})
            t = time.perf_counter()
            row = run_trial(cfg, results_dir=args.results, reference=False, progress=False)
            print(f"seed {seed} {attack:>8} + {defense:<5} test_acc {row['test_acc']:.3f}"
                  + (f" asr {row['asr']:.3f}" if "asr" in row else "") + f"  ({time.perf_counter() - t:.0f} s)",
                  flush=True)
            rows.append(row)
    df = pd.DataFrame(rows)
    df["asr"] = df.get("asr")
    table = df.groupby(["attack.name", "defense.name"])[["test_acc", "asr", "seconds"]].agg(["mean", "std"])
    print(table.round(3).to_string())
    acc = df.groupby(["attack.name", "defense.name"])["test_acc"].mean()
    drop = acc[("none", "none")] - acc[("lsp", "none")]
    for d in ("gray", "jpeg"):
        print(f"LSP drop {drop * 100:.1f} pts; {d} wins back {(acc[('lsp', d)] - acc[('lsp', 'none')]) / drop:.0%}")


if __name__ == "__main__":
    main()
