"""Clean accuracy and training time of one victim recipe on a dataset: the evidence behind the victims'
claims (docs/results.md, "Victims at full size").

Trains ``victim.*`` settings on the training split of ``--dataset`` (after an optional image-only defense
such as ``gray``, which the test split does not get — ISS-G's protocol) and prints one JSON line: dataset,
settings, test accuracy, seconds, device. ``--out`` appends the line to a JSON-lines file.

Usage:  python benchmarks/victim_accuracy.py --dataset cifar10-jpeg victim.arch=airbench victim.width=64
        python benchmarks/victim_accuracy.py --dataset cifar10-subset --defense gray victim.arch=airbench \\
            victim.width=64 victim.batch_size=256
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

from eclipse_ray.config import ConfigError, section_settings, seed_arg, split_overrides, with_overrides
from eclipse_ray.data.sources import load_dataset
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.tensors import pick_device
from eclipse_ray.victim.train import VictimConfig, train_victim


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="cifar10-jpeg")
    ap.add_argument("--defense", default="none", help="an image defense applied to the training split only")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--out", help="append the result line to this JSON-lines file")
    ap.add_argument("settings", nargs="*", help="victim.key=value …")
    args = ap.parse_args(argv)
    try:
        cfg = with_overrides(VictimConfig(), section_settings(split_overrides(args.settings), "victim",
                                                              "victim_accuracy"), prefix="victim.")
        defense = DEFENSES.build(args.defense, {})
        if args.defense != "none" and (not defense.purifies or defense.needs_model):
            raise ConfigError(f"--defense {args.defense}: not a model-free image defense (jpeg, gray, blur …)")
        data = load_dataset(args.dataset)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train = data.train if args.defense == "none" else defense.purify(data.train, args.seed, progress=False)
    start = time.perf_counter()
    victim = train_victim(cfg, train.images, train.labels, train.num_classes, args.seed,
                          clean=(data.train.images, data.train.labels))  # what a transfer victim pre-trains on
    seconds = time.perf_counter() - start
    acc = float(np.mean(victim.predict(data.test.images) == data.test.labels))
    device = pick_device(cfg.device)
    cpu = f"{cpu_name()} × {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    row = {"dataset": args.dataset, "defense": args.defense, "seed": args.seed, "settings": args.settings,
           "test_acc": round(acc, 4), "seconds": round(seconds, 1), "device": name}
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
