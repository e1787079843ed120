"""EM — error-minimising noise (Huang et al., ICLR 2021, "Unlearnable Examples").

The min-min bi-level loop of the paper, against a surrogate classifier:

1. train the surrogate for ``train_steps`` mini-batches (paper: 10) on the
   training set with the current noise added to the poisoned rows;
2. run ``pgd_steps`` (paper: 20) signed-gradient steps of size ``step``
   (0.8/255) on the noise of every poisoned row, *minimising* the surrogate's
   cross-entropy, projected to ℓ∞ ``eps`` (8/255) and to valid pixels;
3. stop once the surrogate's accuracy on the perturbed poisoned rows reaches
   ``stop_acc`` (paper: error < 1 %, i.e. 99 %).

``mode=samplewise`` (default) optimises one δ per image, initialised uniformly
in [-eps, eps] as in the reference code; ``mode=classwise`` one δ per class
(the gradient of each batch flows into the patterns of the classes it holds).

Deviations: the surrogate is by default the fast net (``attack.arch=resnet18``
for the paper's ResNet-18), trained with constant-lr SGD (0.1, momentum 0.9,
weight decay 5e-4); ``max_rounds`` caps the loop (the paper has no cap). At
``rate`` < 1 the surrogate trains on the whole training set (unpoisoned rows
clean) and the stop criterion is measured on the poisoned rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse_ray.attacks.base import mask_of, setting_rate, setting_seed
from eclipse_ray.attacks.surrogate import (BatchStream, CraftedAttack, Surrogate, View, accuracy, budget_steps,
                                           build_surrogate, images_tensor, linf_project, pgd, quantise, train_step)
from eclipse_ray.config import setting
from eclipse_ray.data.imageset import ImageSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EM(CraftedAttack):
    name: ClassVar[str] = "em"
    summary: ClassVar[str] = "error-minimising noise (min-min on a surrogate, ℓ∞ 8/255)"
    step: float = setting(0.8 / 255, "PGD step size on [0,1]", gt=0.0)
    pgd_steps: int = setting(20, "PGD steps per batch and round", ge=1)
    train_steps: int = setting(10, "surrogate training batches per round", ge=0)
    stop_acc: float = setting(0.99, "stop when the surrogate's accuracy on the perturbed rows reaches this",
                              ge=0.0, le=1.0)
    max_rounds: int = setting(100, "cap on train+PGD rounds (the paper has none)", ge=1)
    mode: str = setting("samplewise", "one perturbation per image or per class", choices=("samplewise", "classwise"))
    rate: float = setting_rate(1.0)
    seed: int = setting_seed()

    def make_view(self, train: ImageSet, device: torch.device) -> tuple[View | None, int]:
        """The differentiable transform between the noise and the surrogate, and its draws per step (EOT)."""
        return None, 1

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        rows, gen, device = self.begin(len(train), rng)
        view, draws = self.make_view(train, device)
        x = images_tensor(train.images, device)
        y = torch.from_numpy(train.labels).to(device)
        sur = build_surrogate(self, train.num_classes, x, int(torch.randint(0, 2**31, (1,), generator=gen)))
        delta = craft_min_min(self, sur, x, y, rows, train.num_classes, gen, view, draws)
        images = quantise(train.images, rows, delta, self.eps)
        return images, train.labels, mask_of(rows, len(train))


def craft_min_min(cfg: EM, sur: Surrogate, x: torch.Tensor, y: torch.Tensor, rows: np.ndarray, num_classes: int,
                  gen: torch.Generator, view: View | None = None, draws: int = 1) -> torch.Tensor:
    """The min-min loop; returns δ of the poisoned ``rows`` (len(rows), C, H, W)."""
    eps = budget_steps(cfg.eps) / 255
    device = x.device
    poisoned = torch.from_numpy(mask_of(rows, len(x))).to(device)
    rows_t = torch.from_numpy(np.asarray(rows, np.int64)).to(device)
    classwise = cfg.mode == "classwise"
    if classwise:
        noise = (torch.rand((num_classes, *x.shape[1:]), generator=gen) * 2 - 1).mul(eps).to(device)
    else:
        noise = torch.zeros_like(x)
        init = (torch.rand((len(rows), *x.shape[1:]), generator=gen) * 2 - 1).mul(eps).to(device)
        noise[rows_t] = linf_project(x[rows_t], eps)(init)

    def perturbed(idx: torch.Tensor) -> torch.Tensor:
        if classwise:
            d = noise[y[idx]] * poisoned[idx, None, None, None]
            return (x[idx] + d).clamp(0, 1)
        return x[idx] + noise[idx]

    def through(xb: torch.Tensor) -> torch.Tensor:
        return view(xb, gen) if view is not None else xb

    def loss_of(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return sum(F.cross_entropy(sur(through(xb)), yb) for _ in range(draws)) / draws

    stream = BatchStream(np.arange(len(x)), cfg.batch_size, gen)
    bar = tqdm(range(cfg.max_rounds), desc=f"craft {cfg.name}", disable=None, leave=False)
    acc = 0.0
    for r in bar:
        for _ in range(cfg.train_steps):
            idx = stream.next().to(device)
            train_step(sur, through(perturbed(idx)), y[idx])
        sur.model.eval()
        for i in range(0, len(rows_t), cfg.batch_size):
            idx = rows_t[i:i + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if classwise:
                noise = pgd(noise, lambda d: loss_of((xb + d[yb]).clamp(0, 1), yb),
                            lambda d: d.clamp(-eps, eps), cfg.step, cfg.pgd_steps, minimise=True)
            else:
                noise[idx] = pgd(noise[idx], lambda d: loss_of(xb + d, yb), linf_project(xb, eps),
                                 cfg.step, cfg.pgd_steps, minimise=True)
        acc = accuracy(sur, perturbed(rows_t), y[rows_t], view=through)
        bar.set_postfix(surrogate_acc=f"{acc:.3f}")
        log.info("%s round %d: surrogate accuracy on the perturbed rows %.3f", cfg.name, r + 1, acc)
        if acc >= cfg.stop_acc:
            break
    bar.close()
    return (perturbed(rows_t) - x[rows_t]).detach()
