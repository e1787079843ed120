"""Named scales for sweeps and studies: which data, victim and purifier models a run uses.

A preset is ``{"dataset", "victim": {victim.* settings}, "defense": {defense.* settings}}``;
:func:`trial_settings` merges it with a grid point's own settings for one trial.

* ``smoke``   — digits (ships with scikit-learn), tiny auto-trained DDPM, small fast victim;
  CPU, offline, minutes.
* ``subset``  — the 4,660-image CIFAR-10 subset beside the checkout
  (``../shared/data/cifar10_subset.npz``, or ``$ECLIPSE_RAY_SUBSET``); the tiny DDPM of
  ``benchmarks/diffusion_quality.py`` (600 iterations, cached under ``$ECLIPSE_RAY_CACHE``)
  and a width-16 fast victim for 6 epochs (67 % clean at 8 epochs, 63 % at 5; ≈ 25 s per
  victim on 2 CPU cores).
* ``full``    — all 60,000 CIFAR-10 images as the JPEG re-encode beside the checkout
  (``cifar10-jpeg``: ``../shared/data/cifar10_jpeg.tar.gz``, or ``$ECLIPSE_RAY_CIFAR10_JPEG``;
  quality 75, 4:2:0, so its figures must say so), with the ``subset`` victim and defense settings
  (50,000 training images, ≈ 11× the subset's, so each victim takes ≈ 11× as long); decoded
  once and cached as ``.npz`` in the data dir.
* ``cifar10`` — full CIFAR-10 (torchvision download), the ``paper`` UNet and ResNet-18 with
  ECLIPSE's recipe; GPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SUBSET_NPZ = Path(os.environ.get("ECLIPSE_RAY_SUBSET",
                                 Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"))

SMOKE = {"dataset": "digits", "victim": {"victim.epochs": "4", "victim.width": "16"},
         "defense": {"defense.train.iterations": "40", "defense.train.batch_size": "32",
                     "defense.train.preset": "tiny"}}
SUBSET = {"dataset": f"npz:{SUBSET_NPZ}", "victim": {"victim.epochs": "6", "victim.width": "16"},
          "defense": {"defense.train.iterations": "600", "defense.train.preset": "tiny"}}
FULL = {"dataset": "cifar10-jpeg", "victim": dict(SUBSET["victim"]), "defense": dict(SUBSET["defense"])}
CIFAR10 = {"dataset": "cifar10",
           "victim": {"victim.arch": "resnet18", "victim.epochs": "80", "victim.batch_size": "128"},
           "defense": {"defense.train.iterations": "250000", "defense.train.preset": "paper",
                       "defense.batch_size": "512"}}
PRESETS: dict[str, dict[str, Any]] = {"smoke": SMOKE, "subset": SUBSET, "full": FULL, "cifar10": CIFAR10}


def trial_settings(preset: dict[str, Any], defense: str, extra: dict[str, str], seed: int,
                   user: dict[str, str] | None = None) -> dict[str, str]:
    """One trial's ``--set``: preset victim and seed, the preset's ``defense.*`` keys this defense
    has, the grid point's own settings, then the user's (``defense.*`` only where the defense has it)."""
    from eclipse_ray.defenses import DEFENSES

    fields = {f"defense.{name}" for name, *_ in DEFENSES[defense].describe()}
    s = {**preset["victim"], "seed": str(seed)}
    s.update({k: v for k, v in preset["defense"].items() if k in fields})
    s.update(extra)
    s.update({k: v for k, v in (user or {}).items() if not k.startswith("defense.") or k in fields})
    return s
