"""TAP — targeted adversarial poisoning (Fowl et al., NeurIPS 2021, "Adversarial Examples Make Strong Poisons").

A surrogate classifier is trained on the clean training set; then every
poisoned image is replaced by a *targeted* adversarial example against it,
ℓ∞ ``eps`` (8/255), aimed at the permuted label (y + ``shift``) mod C
(shift 1, the paper's class permutation). A victim trained on these images
learns features that point to the wrong class and fails on clean data.

PGD as in the authors' public code (the ``targeted`` recipe of the
gradient-matching framework): zero start, signed steps of ``tau``·eps, the step
divided by 10 at 3/8, 5/8 and 7/8 of ``steps`` (paper: 250), and
differentiable flip + translate augmentation of the perturbed batch
(``augment``) so the poison survives the victim's augmentation.

Deviations: the surrogate is the fast victim trained ``surrogate_epochs``
epochs (paper: a ResNet-18 trained 40 epochs); ``attack.arch=resnet18`` uses
the ECLIPSE victim recipe instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse_ray.attacks.base import mask_of, setting_rate, setting_seed
from eclipse_ray.attacks.surrogate import (CraftedAttack, Surrogate, budget_steps, images_tensor, linf_project, pgd,
                                           quantise)
from eclipse_ray.config import ConfigError, setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.victim.train import VictimConfig, train_victim
from eclipse_ray.tensors import augment_batch


@dataclass(frozen=True)
class TAP(CraftedAttack):
    name: ClassVar[str] = "tap"
    summary: ClassVar[str] = "targeted adversarial examples towards (y+1) mod C on a clean-trained surrogate"
    steps: int = setting(250, "PGD steps", ge=1)
    tau: float = setting(0.1, "PGD step size as a fraction of eps (decayed ×0.1 at 3/8, 5/8, 7/8)", gt=0.0)
    shift: int = setting(1, "target class = (y + shift) mod C", ge=1)
    augment: bool = setting(True, "differentiable flip + translate of the perturbed batch while crafting")
    surrogate_epochs: int = setting(10, "epochs of the surrogate's training on clean data", ge=1)
    rate: float = setting_rate(1.0)
    seed: int = setting_seed()

    def check_dataset(self, train: ImageSet) -> None:
        super().check_dataset(train)
        if self.shift % train.num_classes == 0:
            raise ConfigError(f"attack.shift={self.shift}: a multiple of the {train.num_classes} classes "
                              "keeps every label (no permutation)")

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        rows, gen, device = self.begin(len(train), rng)
        surrogate_seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        vcfg = VictimConfig(arch=self.arch, epochs=self.surrogate_epochs, width=self.width,
                            batch_size=self.batch_size, device=str(device))
        victim = train_victim(vcfg, train.images, train.labels, train.num_classes, surrogate_seed, progress=False)
        sur = Surrogate(victim.model.eval(), victim.mean, victim.std)
        for p in sur.model.parameters():
            p.requires_grad_(False)
        x = images_tensor(train.images[rows], device)
        target = torch.from_numpy((train.labels[rows] + self.shift) % train.num_classes).to(device)
        delta = targeted_pgd(sur, x, target, budget_steps(self.eps) / 255, self, gen)
        images = quantise(train.images, rows, delta, self.eps)
        return images, train.labels, mask_of(rows, len(train))


def step_size(k: int, steps: int, base: float) -> float:
    """``base`` divided by 10 at 3/8, 5/8 and 7/8 of the run."""
    return base * 0.1 ** sum(k >= steps * f for f in (3 / 8, 5 / 8, 7 / 8))


def targeted_pgd(sur: Surrogate, x: torch.Tensor, target: torch.Tensor, eps: float, cfg: TAP,
                 gen: torch.Generator) -> torch.Tensor:
    """δ (N, C, H, W) with |δ| ≤ eps that drives the surrogate towards ``target``."""
    out = torch.zeros_like(x)
    bar = tqdm(range(0, len(x), cfg.batch_size), desc="craft tap", disable=None, leave=False)
    for i in bar:
        xb, tb = x[i:i + cfg.batch_size], target[i:i + cfg.batch_size]

        def loss(d: torch.Tensor) -> torch.Tensor:
            v = xb + d
            if cfg.augment:
                v = augment_batch(v, gen)
            return F.cross_entropy(sur(v), tb)

        out[i:i + cfg.batch_size] = pgd(torch.zeros_like(xb), loss, linf_project(xb, eps),
                                        lambda k: step_size(k, cfg.steps, cfg.tau * eps), cfg.steps,
                                        minimise=True)
    return out
