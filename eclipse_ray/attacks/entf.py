"""EntF — entangled features (Wen et al., ICLR 2023), ECLIPSE Table 1's "EFP", aimed at adversarial training.

Availability poisons are meant to be learnable shortcuts, and adversarial
training (AT) with a budget at least the poison's shrugs most of them off.
EntF attacks the *robust* features an AT victim must rely on: a reference
model is adversarially trained on the clean data (PGD ℓ∞ ``robust_eps`` =
4/255, the authors' default), the class centroids c_k of its penultimate
features φ are taken on the clean training set, and every poisoned image gets
an ℓ∞ perturbation (``eps`` = 8/255) that entangles its features with other
classes:

* ``push`` (EntF-Push, the default):  max_δ ‖φ(x + δ) − c_y‖²  — away from its own class centroid;
* ``pull`` (EntF-Pull):              min_δ ‖φ(x + δ) − c_k‖²  — towards the nearest other centroid
  (k ≠ y, re-chosen every step from the current features).

As in the authors' code: PGD of ``steps`` = 300 signed steps of ``tau``·eps
(τ = 0.05) from a Gaussian start (σ = eps, projected), the poisoned batch
differentiably augmented (flip + translate) at each step, the reference model
in eval mode, 100 % of the training set poisoned.

Evidence: ECLIPSE Table 1 (ResNet-18, CIFAR-10) has EFP as the weakest poison
against *standard* training (86.64 % vs 94.95 % clean) and the strongest
against ISS-JPEG (70.54 %) and adversarial training (71.46 %) — it is meant
for ``--defense advtrain``, not to break an undefended victim.

Deviations: the reference model is the fast net (paper: ResNet-18, 100 AT
epochs, 10 PGD steps of 2/255); CPU settings in benchmarks/model_poisons.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from eclipse_ray.attacks.base import mask_of, setting_rate, setting_seed
from eclipse_ray.attacks.surrogate import (CraftedAttack, Surrogate, budget_steps, features, images_tensor,
                                           linf_project, pgd, quantise, robust_surrogate,
                                           setting_robust_whiten)
from eclipse_ray.config import setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.tensors import augment_batch
from eclipse_ray.victim.train import VictimConfig


@torch.no_grad()
def class_centroids(net: Surrogate, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                    batch_size: int = 256) -> torch.Tensor:
    """(num_classes, d) mean penultimate feature of each class of float [0,1] NCHW ``x`` (zeros if absent)."""
    feats = torch.cat([features(net, x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    sums = torch.zeros(num_classes, feats.shape[1], device=feats.device).index_add_(0, y, feats)
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).to(feats.dtype)
    return sums / counts[:, None]


def entangle_goal(feats: torch.Tensor, y: torch.Tensor, centroids: torch.Tensor, recipe: str) -> torch.Tensor:
    """Each row's centroid of reference: its own class's (push) or the nearest other class's (pull)."""
    if recipe == "push":
        return centroids[y]
    d = torch.cdist(feats.detach(), centroids)
    d[torch.arange(len(y)), y] = float("inf")
    return centroids[d.argmin(1)]


def entangle_loss(feats: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Mean squared feature distance to the goal centroids (the authors' MSE)."""
    return (feats - goal).pow(2).mean()


def entangle(ref: Surrogate, centroids: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
             step: float, recipe: str, augment: bool, gen: torch.Generator) -> torch.Tensor:
    """The EntF perturbation of the float [0,1] batch ``x`` (labels ``y``): PGD from a Gaussian start."""
    sign = -1.0 if recipe == "push" else 1.0  # pgd minimises: push maximises the distance

    def loss(d: torch.Tensor) -> torch.Tensor:
        f = features(ref, augment_batch(x + d, gen) if augment else x + d)
        return sign * entangle_loss(f, entangle_goal(f, y, centroids, recipe))

    start = torch.randn(x.shape, generator=gen).to(x.device) * eps
    return pgd(start, loss, linf_project(x, eps), step, steps, minimise=True)


@dataclass(frozen=True)
class EntF(CraftedAttack):
    name: ClassVar[str] = "entf"
    summary: ClassVar[str] = ("entangled features (ECLIPSE's EFP): robust features pushed off their class centroid "
                              "(or pulled to another's); aimed at adversarial training")
    recipe: str = setting("push", "push: away from the own class centroid (EntF-Push); pull: towards the "
                          "nearest other one (EntF-Pull)", choices=("push", "pull"))
    steps: int = setting(300, "PGD steps", ge=1)
    tau: float = setting(0.05, "PGD step size as a fraction of eps", gt=0.0)
    augment: bool = setting(True, "differentiable flip + translate of the perturbed batch while crafting")
    surrogate_epochs: int = setting(100, "epochs of the reference model's adversarial training (paper: 100)", ge=1)
    robust_eps: float = setting(4 / 255, "ℓ∞ radius of the reference model's adversarial training (paper: 4/255)",
                                ge=0.0, le=1.0)
    robust_steps: int = setting(10, "PGD steps per batch of that adversarial training (paper: 10)", ge=1)
    robust_whiten: bool = setting_robust_whiten()
    rate: float = setting_rate(1.0)
    seed: int = setting_seed()

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        rows, gen, device = self.begin(len(train), rng)
        seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        vcfg = VictimConfig(arch=self.arch, epochs=self.surrogate_epochs, width=self.width,
                            batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
                            weight_decay=self.weight_decay, device=str(device))
        ref = robust_surrogate(vcfg, train.images, train.labels, train.num_classes, self.robust_eps,
                               self.robust_steps, seed, self.robust_whiten)
        labels = torch.from_numpy(train.labels.astype(np.int64)).to(device)
        centroids = class_centroids(ref, images_tensor(train.images, device), labels, train.num_classes)
        eps = budget_steps(self.eps) / 255
        out = torch.zeros(len(rows), *train.images.shape[3:], *train.images.shape[1:3], device=device)
        for i in tqdm(range(0, len(rows), self.batch_size), desc=f"craft entf-{self.recipe}", disable=None,
                      leave=False):
            x = images_tensor(train.images[rows[i:i + self.batch_size]], device)
            out[i:i + self.batch_size] = entangle(ref, centroids, x, labels[rows[i:i + self.batch_size]], eps,
                                                  self.steps, self.tau * eps, self.recipe, self.augment, gen)
        return quantise(train.images, rows, out, self.eps), train.labels, mask_of(rows, len(train))
