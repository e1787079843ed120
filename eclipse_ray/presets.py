"""Named scales for sweeps and studies: which data, victim and purifier models a run uses.

A preset is a typed :class:`Preset`: its dataset, its victim (a whole
:class:`~eclipse_ray.victim.train.VictimConfig`), how the ``auto`` purifier models
are trained (the fields of ``defense.train`` it sets, for every defense that
trains one) and the purifiers' batch size and precision. Its values are checked when it is
declared; :func:`trial_settings` renders it, with a grid point's own settings,
as one trial's ``--set``.

* ``smoke``   — digits (ships with scikit-learn), tiny auto-trained DDPM, small fast victim;
  CPU, offline, minutes.
* ``subset``  — the 4,660-image CIFAR-10 subset beside the checkout (``cifar10-subset``:
  ``../shared/data/cifar10_subset.npz``, or ``$ECLIPSE_RAY_SUBSET`` naming a copy of that
  published file); the tiny DDPM of ``benchmarks/diffusion_quality.py`` (600 iterations, cached under ``$ECLIPSE_RAY_CACHE``)
  and a width-16 fast victim for 6 epochs (67 % clean at 8 epochs, 63 % at 5; ≈ 25 s per
  victim on 2 CPU cores).
* ``full``    — all 60,000 CIFAR-10 images as the JPEG re-encode beside the checkout
  (``cifar10-jpeg``: ``../shared/data/cifar10_jpeg.tar.gz``, or ``$ECLIPSE_RAY_CIFAR10_JPEG``;
  quality 75, 4:2:0, so its figures must say so), with the ``subset`` victim and defense settings
  (50,000 training images, ≈ 11× the subset's), victims and diffusion purifiers under bf16
  autocast (``victim.precision``, ``defense.precision``: ≈ 2× faster on this CPU); decoded
  once and cached as ``.npz`` in the data dir.
* ``cifar10`` — full CIFAR-10 (torchvision download), the ``paper`` UNet and ResNet-18 with
  ECLIPSE's recipe; GPUs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from eclipse_ray.config import ConfigError, flatten
from eclipse_ray.data.sources import cifar10_subset_path
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.defenses.compose import CompositeDefense, field_name
from eclipse_ray.diffusion.train import DiffusionTrainConfig
from eclipse_ray.ebm.train import EBMTrainConfig
from eclipse_ray.victim.train import VictimConfig

SUBSET_NPZ = cifar10_subset_path()  # the file behind the named source cifar10-subset


@dataclass(frozen=True)
class ModelTraining:
    """How a preset trains the ``auto`` purifier models (DDPMs and EBMs alike); ``None`` keeps the recipe's."""

    preset: str | None = None       # network size preset (both model kinds have tiny/small/paper)
    iterations: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        for cfg in (DiffusionTrainConfig(), EBMTrainConfig()):  # each value valid for both kinds of model
            dataclasses.replace(cfg, **{k: v for k, v in dataclasses.asdict(self).items() if v is not None})


@dataclass(frozen=True)
class Preset:
    """A named scale: which data, which victim, how the purifier models are trained."""

    name: str
    summary: str
    dataset: str
    victim: VictimConfig
    models: ModelTraining = field(default_factory=ModelTraining)
    purify_batch_size: int | None = None  # images per purifier model call (None: each defense's default)
    purify_precision: str | None = None  # the diffusion purifiers' defense.precision (None: their default)

    def with_dataset(self, dataset: str) -> "Preset":
        return dataclasses.replace(self, dataset=dataset)

    def victim_settings(self) -> dict[str, str]:
        """The victim as ``victim.*`` settings (those that differ from the defaults)."""
        default = flatten(VictimConfig(), "victim.")
        return {k: _text(v) for k, v in flatten(self.victim, "victim.").items() if v != default[k]}

    def defense_settings(self, defense: str) -> dict[str, str]:
        """The ``defense.*`` settings of this preset that ``defense`` has (a composite: each part's own)."""
        parts = DEFENSES[defense].parts if issubclass(DEFENSES[defense], CompositeDefense) else ()
        if parts:
            return {f"defense.{field_name(p)}.{k[len('defense.'):]}": v
                    for p in parts for k, v in self.defense_settings(p).items()}
        has = {name for name, *_ in DEFENSES[defense].describe()}
        wanted = {f"train.{k}": v for k, v in dataclasses.asdict(self.models).items() if v is not None}
        if self.purify_batch_size is not None:
            wanted["batch_size"] = self.purify_batch_size
        if self.purify_precision is not None:
            wanted["precision"] = self.purify_precision
        return {f"defense.{k}": _text(v) for k, v in wanted.items() if k in has}


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


SMOKE = Preset("smoke", "digits (ships with scikit-learn), tiny auto-trained DDPM, small fast victim; CPU, minutes",
               "digits", VictimConfig(epochs=4, width=16), ModelTraining("tiny", 40, 32))
SUBSET = Preset("subset", "the 4,660-image CIFAR-10 subset, 600-iteration tiny DDPM, width-16 victim for 6 epochs",
                "cifar10-subset", VictimConfig(epochs=6, width=16), ModelTraining("tiny", 600))
# bf16 autocast for the victims and the diffusion purifiers: ≈ 2× faster on CPUs with AMX (this project's
# 2-core machine: victim step 78 → 39 ms, tiny-UNet purification 6.6 → 3.6 ms per image on one thread);
# the subset's clean victim over 3 seeds 64.5 % fp32, 63.7 % bf16; docs/results.md compares the full study.
FULL = Preset("full", "all of CIFAR-10 as JPEG (cifar10-jpeg), the subset's victim and purifier settings under bf16 autocast",
              "cifar10-jpeg", dataclasses.replace(SUBSET.victim, precision="bf16"), SUBSET.models,
              purify_precision="bf16")
CIFAR10 = Preset("cifar10", "full CIFAR-10 (download), the paper UNet and ResNet-18 with ECLIPSE's recipe; GPUs",
                 "cifar10", VictimConfig(arch="resnet18", epochs=80, batch_size=128),
                 ModelTraining("paper", 250_000), purify_batch_size=512)
PRESETS: dict[str, Preset] = {p.name: p for p in (SMOKE, SUBSET, FULL, CIFAR10)}


def trial_settings(preset: Preset, defense: str, extra: Mapping[str, str], seed: int,
                   user: Mapping[str, str] | None = None) -> dict[str, str]:
    """One trial's ``--set``: the preset's victim and seed, the preset's ``defense.*`` settings this defense
    has, the grid point's own settings, then the user's (``defense.*`` only where the defense has it)."""
    if not isinstance(preset, Preset):
        raise ConfigError(f"trial_settings: a Preset is needed, got {type(preset).__name__}")
    has = {f"defense.{name}" for name, *_ in DEFENSES[defense].describe()}
    has |= {f"defense.{alias}" for alias in DEFENSES[defense].aliases}
    s = {**preset.victim_settings(), "seed": str(seed), **preset.defense_settings(defense)}
    s.update(extra)
    s.update({k: v for k, v in (user or {}).items() if not k.startswith("defense.") or k in has})
    return s
