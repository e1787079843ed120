"""What every attack shares: its config base, poison-row selection and the poisoned dataset it returns.

An attack takes the clean ``train``/``test`` splits and returns a
:class:`~eclipse_ray.data.sources.Dataset` with

* ``train``: the poisoned training set, ``poisoned`` marking the rows it changed;
* ``test``: the clean test set, unchanged;
* ``test_triggered`` (backdoors): the non-target test images with the trigger,
  labels kept, for the attack success rate;
* ``originals``: the clean originals of the poisoned training rows, for PSNR/L2.

Everything is deterministic under ``attack.seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from eclipse_ray.config import Config, ConfigError, flatten, setting
from eclipse_ray.data.imageset import ImageSet, to_float, to_uint8
from eclipse_ray.data.sources import Dataset

from eclipse_ray.data.kinds import AVAILABILITY, BACKDOOR, NONE, TARGETED  # noqa: E402,F401  (re-exported)


@dataclass(frozen=True)
class AttackConfig(Config):
    """Base of attack configs. Subclasses set ``name``, ``kind`` and implement :meth:`poison_train`."""

    section: ClassVar[str] = "attack"
    name: ClassVar[str] = ""
    kind: ClassVar[str] = NONE
    summary: ClassVar[str] = ""
    # Crafted against a surrogate model (costly): trials read it from the poison cache.
    crafted: ClassVar[bool] = False

    def check_dataset(self, train: ImageSet) -> None:
        """Dataset-dependent checks (target class in range, image size, something to poison and to measure),
        before anything is crafted or written. Subclasses extend it (``super().check_dataset(train)`` first)."""
        target = getattr(self, "target", None)
        if target is not None and target >= train.num_classes:
            raise ConfigError(f"attack.target={target}: the dataset has only {train.num_classes} classes "
                              f"(0..{train.num_classes - 1})")
        self.check_measurable(self.kind, train, self.name)
        count = self.poison_count(train)
        if count == 0:
            raise ConfigError(f"attack.rate={getattr(self, 'rate', '?')}: {self.name} would poison no image of this "
                              f"{len(train)}-image training set (the rate rounds to 0 eligible rows)")

    @staticmethod
    def check_measurable(kind: str, train: ImageSet, what: str = "dataset") -> None:
        """Refuse a training set whose labels hold a single class for a poison kind whose metric needs two:
        an accuracy drop (availability), a target class other than the source (backdoor, targeted)."""
        if kind not in (AVAILABILITY, BACKDOOR, TARGETED):
            return
        present = np.unique(train.labels)
        if len(present) < 2:
            raise ConfigError(f"{what}: the training set holds a single class ({int(present[0])}); {kind} poisons "
                              f"need at least 2 classes to mean anything")

    def poison_count(self, train: ImageSet) -> int | None:
        """How many training rows the attack poisons on ``train`` (``None``: not known up front).

        Default: ``round(rate · n)``, as :func:`rate_rows` draws them, for attacks with a ``rate``.
        """
        rate = getattr(self, "rate", None)
        return None if rate is None else int(round(rate * len(train)))

    def poison_train(self, train: ImageSet, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(new images, new labels, poisoned mask) for the training set."""
        raise NotImplementedError

    def trigger_test(self, test: ImageSet, rng: np.random.Generator) -> ImageSet | None:
        """The triggered non-target test split (backdoors); ``None`` for other kinds."""
        return None

    def apply(self, data: Dataset) -> Dataset:
        """Poison ``data`` (train and, for backdoors, a triggered test split)."""
        if any(s.poisoned.any() for s in data.splits.values()) or data.meta.get("attack"):
            raise ConfigError(f"dataset {data.name} is already poisoned "
                              f"({data.meta.get('attack', {}).get('attack.name', '?')}); use --attack none")
        train = data.train
        self.check_dataset(train)
        seed = getattr(self, "seed", 0)
        rng = np.random.default_rng([seed, _stable_id(self.name)])
        images, labels, mask = self.poison_train(train, rng)
        meta = {"attack": flatten(self, "attack."), "attack_kind": self.kind}
        if hasattr(self, "target"):
            meta["target"] = int(self.target)
        poisoned = ImageSet(images, labels, train.index, mask, train.classes, {**train.meta, **meta})
        splits = {"train": poisoned, "test": data.test}
        triggered = self.trigger_test(data.test, np.random.default_rng([seed, _stable_id(self.name), 1]))
        if triggered is not None:
            splits["test_triggered"] = triggered
        if mask.any():
            splits["originals"] = train.subset(np.flatnonzero(mask))
        return Dataset(data.name, splits, {**data.meta, **meta})


@dataclass(frozen=True)
class NoAttack(AttackConfig):
    """The clean data, unchanged."""

    name: ClassVar[str] = "none"
    summary: ClassVar[str] = "no attack: the clean training set"

    def apply(self, data: Dataset) -> Dataset:
        return data


def _stable_id(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")


def choose_rows(candidates: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct rows drawn from ``candidates``, sorted."""
    if count > len(candidates):
        raise ConfigError(f"attack wants {count} poisoned samples but only {len(candidates)} are eligible")
    return np.sort(rng.choice(candidates, size=count, replace=False)) if count else np.zeros(0, np.int64)


def rate_rows(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``round(rate * n)`` rows of ``n``, uniformly at random."""
    return choose_rows(np.arange(n), int(round(rate * n)), rng)


def add_perturbation(images: np.ndarray, rows: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Copy of ``images`` with float ``delta`` (per row, [0,1] scale) added to ``rows``, clipped and quantised."""
    out = images.copy()
    if len(rows):
        out[rows] = to_uint8(to_float(images[rows]) + delta)
    return out


def mask_of(rows: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros(n, bool)
    mask[rows] = True
    return mask


def triggered_split(test: ImageSet, target: int, images: np.ndarray, attack: str) -> ImageSet:
    """The non-target test samples with triggered ``images`` (true labels kept; meta records the target)."""
    keep = np.flatnonzero(test.labels != target)
    if not len(keep):
        raise ConfigError(f"{attack}: every test image is of the target class; nothing to measure ASR on")
    return ImageSet(images[keep], test.labels[keep], test.index[keep], np.ones(len(keep), bool),
                    test.classes, {**test.meta, "split": "test_triggered", "target": int(target)})


FLOAT_EPS = 1e-12


def l2_normalise(delta: np.ndarray, norm: float) -> np.ndarray:
    """Scale each row of ``delta`` (N, ...) to ℓ2 norm ``norm``."""
    flat = delta.reshape(len(delta), -1)
    scale = norm / np.maximum(np.linalg.norm(flat, axis=1), FLOAT_EPS)
    return (flat * scale[:, None]).reshape(delta.shape)


def setting_rate(default: float) -> float:
    return setting(default, "fraction of the training set poisoned", ge=0.0, le=1.0)


def setting_seed() -> int:
    return setting(0, "seed of the poison (patterns and poisoned rows)", ge=0)
