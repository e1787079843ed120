"""Sleeper Agent (Souri et al., NeurIPS 2022): a hidden-trigger backdoor crafted by gradient matching.

Like HTBA, the poisons are target-class training images with their labels
kept and a small ℓ∞ perturbation (``eps``, paper 16/255); the trigger — a
random ``patch``×``patch`` pattern pasted at a random place — never appears in
training. Unlike HTBA's feature collision, the poisons are crafted so that
training on them moves the weights the way training on *patched source
images labelled as the target* would (Witches' Brew's gradient matching):

    min_Δ  1 − cos( ∇_θ CE(f(x_p + Δ), y_target),  ∇_θ Σ_s CE(f(s ⊕ patch), y_target) ),   ‖Δ‖∞ ≤ ε

with the source term averaged over (up to ``sources``) patched source-class
training images. The paper's two additions for models trained from scratch:

* *data selection* (``select=gradient``): the poisons are the target-class
  images with the largest per-sample gradient norm ‖∇_θ CE(f(x), y)‖ on the
  surrogate (``random``: drawn uniformly);
* *retraining* (``retrain`` = 4): the surrogate is retrained from scratch on
  the currently poisoned training set ``retrain`` times, evenly spaced over the
  ``iterations``, and the source gradient recomputed, so that the poisons
  stay effective on a model that has learnt them.

The optimiser is Witches' Brew's (signed Adam, ``tau`` in normalised pixel
units divided by 10 at 3/8, 5/8, 7/8; random-normal start; differentiable
flips of the poisons while crafting). ASR: patched source-class test images
classified as the target (``test_triggered``).

Paper (CIFAR-10, ResNet-18): ε = 16/255, 1 % budget (500 poisons), 8×8 patch,
250 steps, T = 4 retrainings: ≈ 85 % ASR. Deviations: the surrogate is the fast
net (no ensemble); CPU settings in benchmarks/targeted_poisons.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse_ray.attacks.base import choose_rows, setting_seed
from eclipse_ray.attacks.gradient_matching import matching_loss, param_grads
from eclipse_ray.attacks.htba import HiddenTrigger, paste_patches
from eclipse_ray.attacks.surrogate import ball_project, quantise_ball, steepest
from eclipse_ray.attacks.targeted_base import (logits, random_flip, setting_norm, setting_surrogate_epochs,
                                               setting_surrogate_width)
from eclipse_ray.config import ConfigError, setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset
from eclipse_ray.tensors import pick_device, to_tensor
from eclipse_ray.victim.train import Victim, VictimConfig, train_victim


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def source_gradient(surrogate: Victim, patched: torch.Tensor, target: int,
                    batch_size: int = 256) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(∇_θ of the mean CE of the patched sources labelled ``target``, its norm), detached."""
    params = params_of(surrogate.model)
    total = [torch.zeros_like(p) for p in params]
    for i in range(0, len(patched), batch_size):
        x = patched[i:i + batch_size]
        y = torch.full((len(x),), target, dtype=torch.long, device=x.device)
        for t, g in zip(total, param_grads(F.cross_entropy(logits(surrogate, x), y, reduction="sum"), params, False)):
            t += g
    total = [t / len(patched) for t in total]
    return total, torch.sqrt(sum(t.pow(2).sum() for t in total))


def gradient_norms(surrogate: Victim, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖∇_θ CE(f(x_i), y_i)‖ (one backward pass per image)."""
    params = params_of(surrogate.model)
    out = torch.empty(len(x))
    for i in range(len(x)):
        grads = param_grads(F.cross_entropy(logits(surrogate, x[i:i + 1]), y[i:i + 1]), params, False)
        out[i] = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    return out


@dataclass(frozen=True)
class SleeperAgent(HiddenTrigger):
    name: ClassVar[str] = "sleeper_agent"
    summary: ClassVar[str] = ("hidden-trigger backdoor by gradient matching: target-class poisons that train like "
                              "patched sources labelled target")
    eps: float = setting(16 / 255, "budget on the [0,1] scale: ℓ∞ 16/255 in the paper; with norm=l2 the ℓ2 norm "
                         "of each perturbation", ge=0.0)
    norm: str = setting_norm()
    budget: float = setting(0.01, "share of the training set poisoned (target-class images)", ge=0.0, le=1.0)
    poisons: int | None = setting(None, "number of poisons (none: max(1, round(budget·n)))", ge=1)
    patch: int = setting(8, "side of the square random trigger patch in pixels (paper: 8 on 32px)", ge=1)
    source: int = setting(1, "source class whose patched images should become the target", ge=0)
    target: int = setting(0, "target class (poisons are taken from it, labels kept)", ge=0)
    sources: int | None = setting(None, "patched source training images in the matched gradient (none: all)", ge=1)
    iterations: int = setting(250, "signed-Adam steps", ge=1)
    tau: float = setting(0.1, "Adam step in normalised pixel units (divided by 10 at 3/8, 5/8, 7/8)", gt=0.0)
    retrain: int = setting(4, "times the surrogate is retrained on the poisoned set while crafting (paper: 4)",
                           ge=0)
    select: str = setting("gradient", "poison choice: largest per-sample gradient norm (paper) or random",
                          choices=("gradient", "random"))
    augment: bool = setting(True, "random flips of the poisons while crafting (differentiable augmentation)")
    surrogate_epochs: int = setting_surrogate_epochs()
    surrogate_width: int = setting_surrogate_width()
    seed: int = setting_seed()

    def check_dataset(self, train: ImageSet) -> None:
        super().check_dataset(train)
        if self.retrain >= self.iterations:
            raise ConfigError(f"attack.retrain={self.retrain}: at most attack.iterations - 1 "
                              f"({self.iterations - 1}) retrainings fit between the steps")

    def surrogate(self, images: np.ndarray, labels: np.ndarray, num_classes: int, round_: int) -> Victim:
        """The attacker's fast net trained on ``images`` (round 0: the clean set; later: retrained)."""
        cfg = VictimConfig(arch="fast", epochs=self.surrogate_epochs, width=self.surrogate_width,
                           device=str(pick_device("auto")))
        victim = train_victim(cfg, images, labels, num_classes, self.seed + 7919 * round_, progress=False,
                              whiten_tol=None)
        victim.model.eval()
        return victim

    def apply(self, data: Dataset, progress: bool = False) -> Dataset:
        train, _test, t0, rng = self.begin(data)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        sur = self.surrogate(train.images, train.labels, train.num_classes, 0)
        device = sur.device
        candidates = np.flatnonzero(train.labels == self.target)
        count = self.poison_count(train)
        if self.select == "gradient":
            norms = gradient_norms(sur, to_tensor(train.images[candidates], device),
                                   torch.from_numpy(train.labels[candidates].astype(np.int64)).to(device))
            rows = np.sort(candidates[torch.argsort(norms, descending=True)[:count].numpy()])
        else:
            rows = choose_rows(candidates, count, rng)
        src = np.flatnonzero(train.labels == self.source)
        src = src[rng.permutation(len(src))[:self.sources or len(src)]]
        patched = to_tensor(paste_patches(train.images[src], self.trigger_patch(train.image_shape[2]), rng), device)
        x = to_tensor(train.images[rows], device)
        y = torch.full((len(rows),), self.target, dtype=torch.long, device=device)
        project = ball_project(x, self.eps, self.norm)
        delta = project(torch.randn(x.shape, generator=gen).to(device) * self.eps).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=self.tau * float(sur.std.mean()))
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[int(self.iterations / d) for d in (2.667, 1.6, 1.142)], gamma=0.1)
        retrain_at = {int(round(self.iterations * (k + 1) / (self.retrain + 1))) for k in range(self.retrain)}
        goal, goal_norm = source_gradient(sur, patched, self.target)
        for it in tqdm(range(self.iterations), desc="sleeper agent", disable=not progress, leave=False):
            if it in retrain_at:
                images = quantise_ball(train.images, rows, delta.detach(), self.eps, self.norm)
                sur = self.surrogate(images, train.labels, train.num_classes, 1 + sorted(retrain_at).index(it))
                goal, goal_norm = source_gradient(sur, patched, self.target)
            v = random_flip(x + delta, gen) if self.augment else x + delta
            loss = matching_loss(param_grads(F.cross_entropy(logits(sur, v), y), params_of(sur.model), True),
                                 goal, goal_norm)
            (g,) = torch.autograd.grad(loss, [delta])
            delta.grad = steepest(g, self.norm)
            opt.step()
            sched.step()
            with torch.no_grad():
                delta.copy_(project(delta))
        return self.poisoned_dataset(data, rows, quantise_ball(train.images, rows, delta.detach(), self.eps, self.norm), t0)
