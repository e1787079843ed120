"""V&B acceptance figures on real CIFAR-10 images (CPU).

On ``../shared/data/cifar10_subset.npz`` (4,660 train / 932 test) with the fast
victim, BadNets and Blend (rate 0.1, target 0): clean accuracy and ASR of

* undefended training (``--defense none``) for ``--epochs`` epochs, and
* V&B (``--defense vab``) whose Beneficiary runs ``round(200 * epoch_scale)``
  epochs (``--vab-set`` passes further ``defense.*`` settings; default the
  linear lr schedule), plus the suspicious split's precision/recall.

Defaults: the reference study's victim (width-16 fast net, 6 epochs) and a
30-epoch V&B (``epoch_scale`` 0.15) — three times the study's — with three
settings for that length, each from a measured failure:

* ``lr_schedule=linear``: the paper's step schedule, scaled to 10 epochs,
  has cut the lr ×100 by epoch 5 and the Beneficiary plateaus at 47–48 %
  from there (BadNets seed 0).
* ``lambda2=0.1`` (paper 0.5): the Beneficiary is at ~60 % when λ switches;
  at 0.5 its pseudo-labels on the suspicious samples collapse onto one class
  and test accuracy falls 52 → 36 % (10 epochs) or 64 → 50 % (30) in an epoch.
* ``temperature=1`` (paper 3): the fast net's Victim reaches logit margins of
  only 6–7 on the poisons, so softmax(V/3) gives the target class 0.55 and the
  suppression leaves half of a poison's pseudo-target on it (Blend seed 1:
  ASR 100 % with a perfect split); at T = 1 it is 0.99.

Acceptance (reviewer): V&B ASR ≤ 10 % with clean accuracy within 5 points of
undefended training. ``--warmup-only`` measures just the Victim's split after
its 3-epoch warm-up (precision/recall against the true poisons; no Beneficiary,
no rows written) — the cheap part, for a loaded CPU. Rows go to ``results/vab/``. Run one cell per process to
use several cores: ``--attacks blend --defenses vab``.

Usage:  python benchmarks/vab_quality.py [--attacks badnets blend] [--defenses none vab]
            [--epoch-scale 0.15] [--epochs 6] [--width 16] [--arch fast] [--seeds 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from eclipse_ray.defenses.vab import split_quality, train_vab
from eclipse_ray.data.sources import npz_spec
from eclipse_ray.presets import SUBSET_NPZ as DEFAULT_NPZ
from eclipse_ray.trial import build_config, prepare, run_trial

# Short-run settings (the module header of eclipse_ray/defenses/vab.py gives the measurements behind them).
CPU_SETTINGS = ("defense.lr_schedule=linear", "defense.lambda2=0.1", "defense.temperature=1")
COLUMNS = ["attack.name", "defense.name", "seed", "test_acc", "asr", "asr_any", "asr_any_class", "vab_epochs",
           "vab_precision", "vab_recall", "vab_suspicious", "vab_warmup_precision", "vab_warmup_recall",
           "train_seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--npz", default=str(DEFAULT_NPZ))
    p.add_argument("--attacks", nargs="+", default=["badnets", "blend"])
    p.add_argument("--defenses", nargs="+", default=["none", "vab"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=6, help="victim.epochs of undefended training (reference study: 6)")
    p.add_argument("--width", type=int, default=16, help="victim.width of both (reference study: 16)")
    p.add_argument("--arch", default="fast", choices=("fast", "resnet18"), help="victim.arch of both")
    p.add_argument("--epoch-scale", default="0.15", help="defense.epoch_scale of V&B (0.15: 30 epochs)")
    p.add_argument("--vab-set", nargs="*", default=list(CPU_SETTINGS), metavar="KEY=VALUE",
                   help="more defense.* settings for V&B (default: the CPU-length settings above)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--results", default="results/vab")
    p.add_argument("--warmup-only", action="store_true", help="only the Victim's split after warm-up")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup_only:
        return warmup_only(args)
    rows = []
    for seed in args.seeds:
        for attack in args.attacks:
            for defense in args.defenses:
                sets = {"victim.epochs": str(args.epochs), "victim.width": str(args.width), "seed": str(seed),
                        "victim.arch": args.arch,
                        "attack.rate": "0.1", "attack.target": "0"}
                if defense == "vab":
                    sets["defense.epoch_scale"] = args.epoch_scale
                    sets.update(kv.split("=", 1) for kv in args.vab_set)
                cfg = build_config(npz_spec(args.npz), attack, defense, sets)
                t = time.perf_counter()
                row = run_trial(cfg, results_dir=args.results, reference=False, progress=False)
                extra = "".join(f" {k} {row[k]:.3f}" for k in ("asr_any", "vab_precision", "vab_recall") if k in row)
                print(f"seed {seed} {attack:>8} + {defense:<4} test_acc {row['test_acc']:.3f} asr {row['asr']:.3f}"
                      f"{extra}  ({time.perf_counter() - t:.0f} s)", flush=True)
                rows.append(row)
    df = pd.DataFrame(rows)
    print(df[[c for c in COLUMNS if c in df]].round(3).to_string(index=False))


def warmup_only(args: argparse.Namespace) -> None:
    for seed in args.seeds:
        for attack in args.attacks:
            cfg = build_config(npz_spec(args.npz), attack, "vab", {"seed": str(seed), "attack.rate": "0.1",
                                                                   "attack.target": "0",
                                                                   "victim.width": str(args.width)})
            train = prepare(cfg).train
            t = time.perf_counter()
            out = train_vab(cfg.defense, cfg.victim, train.images, train.labels, train.num_classes, seed,
                            progress=False, stop_after_warmup=True)
            q = split_quality(out["suspicious_warmup"], train.poisoned, "")
            print(f"seed {seed} {attack:>8} warm-up split: flagged {q['suspicious']:.3f} precision "
                  f"{q['precision']:.3f} recall {q['recall']:.3f}  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
