"""What the targeted clean-label poisons share: the surrogate, the target protocol and the crafted dataset.

Targeted poisons (Witches' Brew, Bullseye Polytope) make one chosen *target*
test image be classified as an *adversarial class* by perturbing a few training
images of that class (labels untouched, ℓ∞ budget). They are crafted against a
*surrogate*: here the fast victim (FastNet) trained on the clean training set,
as in Witches' Brew's from-scratch setting (the attacker knows the data, not
the victim's initialisation or its training randomness).

Protocol — ``attack.targets=K`` targets per poisoned training set. Each target
is a test image drawn by the attack seed, gets its own adversarial class (a
class other than its own; distinct classes while K ≤ C) and its own disjoint
set of base images (``budget`` of the training set, from the adversarial
class). ``target_success`` is the share of the K targets the victim assigns to
their adversarial classes. The papers run one target per victim training and
average over many trainings; with K targets in one training the cost of a
study falls by K (victim trainings dominate it), at the price of possible
interference between the K poison sets (small when K·budget is a few per cent;
the poison sets are disjoint and, while K ≤ C, of different classes). K=1 is
the papers' protocol exactly: average it over ``attack.seed``.

The returned dataset has the usual ``train`` (``poisoned`` marks the bases),
``originals``, a ``test`` split *without* the target images (so ``test_acc``
is natural accuracy on images the attack did not pick), and a ``targets``
split (the target images with their true labels); ``meta["adv_labels"]`` (also
in the split's meta) lists each target's adversarial class, row-aligned with
``targets``. ``meta["poison_target"]`` maps each poisoned row to its target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from eclipse_ray.attacks.base import TARGETED, AttackConfig, _stable_id
from eclipse_ray.attacks.surrogate import MIN_L2_EPS, NORMS, ball_project, quantise_ball
from eclipse_ray.config import ConfigError, flatten, setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset
from eclipse_ray.victim.memo import data_key, kept
from eclipse_ray.victim.train import Victim, VictimConfig, train_victim
from eclipse_ray.tensors import pick_device, to_tensor


def setting_eps(default: float = 8 / 255) -> float:
    return setting(default, "budget on the [0,1] scale: ℓ∞ 8/255 (PureGen uses 16/255); with norm=l2 the ℓ2 "
                   "norm of each perturbation", ge=0.0)


def setting_norm() -> str:
    return setting("linf", "budget norm: linf (eps per pixel) or l2 (eps = the ℓ2 norm of each poison's "
                   "perturbation on [0,1]; Hong et al. evaluate both)", choices=NORMS, added=1)


def setting_surrogate_epochs() -> int:
    return setting(10, "epochs of the fast surrogate trained on the clean training set", ge=1)


def setting_surrogate_width() -> int:
    return setting(32, "base width of the fast surrogate net", ge=4)


_SURROGATES: dict[tuple, Victim] = {}  # the last two surrogates, reused by later attacks on the same data


def train_surrogate(train: ImageSet, epochs: int, width: int, seed: int, progress: bool = False) -> Victim:
    """The attacker's model: a fast victim trained on the clean ``train``, in eval mode (BN statistics fixed).

    Training is deterministic, so the last two surrogates are kept in memory
    and reused when a later attack in this process asks for the same one.
    """
    device = pick_device("auto")
    key = (data_key(train.images, train.labels), epochs, width, seed, str(device))
    cfg = VictimConfig(arch="fast", epochs=epochs, width=width, device=str(device))
    return kept(_SURROGATES, key, lambda: train_victim(cfg, train.images, train.labels, train.num_classes, seed,
                                                       progress=progress, whiten_tol=None))  # every direction kept


def logits(victim: Victim, x: torch.Tensor) -> torch.Tensor:
    """Surrogate logits of float [0,1] NCHW ``x`` (differentiable in ``x``)."""
    return victim.model((x - victim.mean) / victim.std)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Differentiable augmentation: each image flipped horizontally with probability 1/2."""
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def pick_targets(train_labels: np.ndarray, test: ImageSet, k: int, per_target: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(target test rows, their adversarial classes, each target's base rows in train) — all disjoint."""
    c = test.num_classes
    if c < 2:
        raise ConfigError("targeted attacks need at least 2 classes")
    if k > len(test):
        raise ConfigError(f"attack.targets={k}: the test set has only {len(test)} images")
    adv = np.concatenate([rng.permutation(c) for _ in range(-(-k // c))])[:k]
    taken_test: set[int] = set()
    used = np.zeros(len(train_labels), bool)
    rows, bases = [], []
    for a in adv:
        cand = np.array([r for r in np.flatnonzero(test.labels != a) if r not in taken_test])
        if not len(cand):
            raise ConfigError(f"no test image left outside class {a} to target")
        r = int(rng.choice(cand))
        taken_test.add(r)
        rows.append(r)
        pool = np.flatnonzero((train_labels == a) & ~used)
        if per_target > len(pool):
            raise ConfigError(f"attack wants {per_target} poisons of class {a} per target but only {len(pool)} "
                              f"unused training images of that class remain (lower attack.budget or attack.targets)")
        chosen = np.sort(rng.choice(pool, size=per_target, replace=False))
        used[chosen] = True
        bases.append(chosen)
    return np.array(rows, np.int64), adv.astype(np.int64), bases


@dataclass(frozen=True)
class TargetedAttack(AttackConfig):
    """Base of the targeted clean-label poisons; subclasses implement :meth:`craft` for one target.

    Subclasses declare ``eps``, ``norm``, ``budget``, ``poisons``, ``targets``,
    ``surrogate_epochs``, ``surrogate_width`` and ``seed`` settings.
    """

    kind: ClassVar[str] = TARGETED
    crafted: ClassVar[bool] = True

    def check_dataset(self, train: ImageSet) -> None:
        super().check_dataset(train)
        norm = getattr(self, "norm", "linf")  # Narcissus learns an ℓ∞ trigger and has no norm setting
        if norm == "l2" and self.eps < MIN_L2_EPS:
            raise ConfigError(f"attack.eps={self.eps:.4g} with attack.norm=l2: eps is then the ℓ2 norm of a whole "
                              f"perturbation, and below {MIN_L2_EPS} it rounds to (almost) nothing in uint8 images; "
                              f"ℓ2 budgets are about 0.5–2 on 32×32 colour images")

    def per_target(self, n_train: int) -> int:
        """Number of poisons per target: ``poisons`` if set, else ``max(1, round(budget·n))``."""
        return self.poisons if self.poisons is not None else max(1, int(round(self.budget * n_train)))

    def poison_count(self, train: ImageSet) -> int:
        return self.targets * self.per_target(len(train))

    def craft(self, surrogate: Victim, bases: torch.Tensor, target: torch.Tensor, adv_class: int,
              gen: torch.Generator, progress: bool) -> torch.Tensor:
        """The perturbation (same shape as float [0,1] NCHW ``bases``) for one target of class ≠ ``adv_class``."""
        raise NotImplementedError

    def begin(self, data: Dataset) -> tuple[ImageSet, ImageSet, float, np.random.Generator]:
        """(train, test, start time, the attack's generator), after the checks every targeted poison makes
        before any work: the data are not poisoned already, the settings fit them."""
        if any(s.poisoned.any() for s in data.splits.values()) or data.meta.get("attack"):
            raise ConfigError(f"dataset {data.name} is already poisoned; use --attack none")
        self.check_dataset(data.train)
        return data.train, data.test, time.perf_counter(), np.random.default_rng([self.seed, _stable_id(self.name)])

    def apply(self, data: Dataset, progress: bool = False) -> Dataset:
        """Pick the targets, train the surrogate, craft each target's poisons; the dataset described above."""
        train, test, t0, rng = self.begin(data)
        rows, adv, bases = pick_targets(train.labels, test, self.targets, self.per_target(len(train)), rng)
        surrogate = train_surrogate(train, self.surrogate_epochs, self.surrogate_width, self.seed, progress)
        device = surrogate.device
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        images = train.images.copy()
        owner = np.full(len(train), -1, np.int64)
        for i, (r, a, b) in enumerate(zip(rows, adv, bases)):
            x_base = to_tensor(train.images[b], device)
            x_target = to_tensor(test.images[[r]], device)
            delta = self.craft(surrogate, x_base, x_target, int(a), gen, progress)
            project = ball_project(x_base, self.eps, self.norm)
            images = quantise_ball(images, b, project(delta), self.eps, self.norm)
            owner[b] = i
        mask = owner >= 0
        meta = {"attack": flatten(self, "attack."), "attack_kind": self.kind, "adv_labels": adv.tolist(),
                "target_index": test.index[rows].tolist(), "craft_seconds": time.perf_counter() - t0}
        poisoned = ImageSet(images, train.labels, train.index, mask, train.classes,
                            {**train.meta, **meta, "poison_target": owner[mask].tolist()})
        keep = np.setdiff1d(np.arange(len(test)), rows)
        targets = test.subset(rows)
        targets = ImageSet(targets.images, targets.labels, targets.index, np.ones(len(rows), bool), test.classes,
                           {**test.meta, "split": "targets", "adv_labels": adv.tolist()})
        splits = {"train": poisoned, "test": test.subset(keep), "targets": targets,
                  "originals": train.subset(np.flatnonzero(mask))}
        return Dataset(data.name, splits, {**data.meta, **meta})

