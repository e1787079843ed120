"""REM — robust error-minimising noise (Fu et al., ICLR 2022, "Robust Unlearnable Examples").

EM breaks under adversarial training; REM makes the noise error-minimising for
an *adversarially trained* surrogate. Its min-min-max problem

    min_θ  E_T  min_{|δu| ≤ ε}  max_{|δa| ≤ ρ}  CE(f_θ(T(x + δu) + δa), y)

is solved as in the authors' code: for ``train_steps`` (paper: 5,000) steps,
take a batch, refresh its defensive noise δu with ``pgd_steps`` (10) signed
steps of ``step`` (1.6/255) that *minimise* the loss of the adversarial example
(inner PGD: ``adv_steps`` (10) steps of ``adv_step`` (0.8/255) within ρ =
``adv_eps`` (4/255), random start, maximising), averaged over ``eot`` (5)
random augmentations T (expectation over transformation); then train the
surrogate on the adversarial examples of the noised batch (SGD 0.1, momentum
0.9, weight decay 5e-4, lr ×0.1 every ``lr_decay_every`` (2,000) steps).
Finally the noise of every poisoned image is regenerated with the trained
surrogate (the paper's "final" noise). ε = 8/255, ρ = 4/255 is the paper's
headline REM-8/4 setting.

Deviations: fast-net surrogate by default (paper: ResNet-18); T is flip +
translate by up to ``pad`` px with reflect padding (paper: random crop with
zero padding 4 + flip).
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
from eclipse_ray.attacks.surrogate import (BatchStream, CraftedAttack, Surrogate, budget_steps, build_surrogate,
                                           images_tensor, linf_project, pgd, quantise, train_step)
from eclipse_ray.config import setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.tensors import augment_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class REM(CraftedAttack):
    name: ClassVar[str] = "rem"
    summary: ClassVar[str] = "robust error-minimising noise (EM against an adversarially trained surrogate)"
    step: float = setting(1.6 / 255, "defensive-noise PGD step size", gt=0.0)
    pgd_steps: int = setting(10, "defensive-noise PGD steps", ge=1)
    adv_eps: float = setting(4 / 255, "ρ: ℓ∞ radius of the inner adversarial example", ge=0.0, le=1.0)
    adv_step: float = setting(0.8 / 255, "inner adversarial PGD step size", gt=0.0)
    adv_steps: int = setting(10, "inner adversarial PGD steps", ge=0)
    eot: int = setting(5, "random augmentations averaged per PGD step (expectation over transformation)", ge=1)
    pad: int = setting(4, "translation of the EOT / training augmentation in px (0: flip only)", ge=0)
    train_steps: int = setting(5000, "surrogate training steps (one batch each)", ge=0)
    lr_decay_every: int = setting(2000, "surrogate lr ×0.1 every this many steps", ge=1)
    rate: float = setting_rate(1.0)
    seed: int = setting_seed()

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        rows, gen, device = self.begin(len(train), rng)
        x = images_tensor(train.images, device)
        y = torch.from_numpy(train.labels).to(device)
        sur = build_surrogate(self, train.num_classes, x, int(torch.randint(0, 2**31, (1,), generator=gen)))
        delta = craft_rem(self, sur, x, y, rows, gen)
        images = quantise(train.images, rows, delta, self.eps)
        return images, train.labels, mask_of(rows, len(train))


def adversarial(sur: Surrogate, x: torch.Tensor, y: torch.Tensor, cfg: REM, gen: torch.Generator) -> torch.Tensor:
    """δa: loss-maximising PGD within ρ from a uniform random start (detached)."""
    rho = cfg.adv_eps
    if cfg.adv_steps == 0 or rho == 0:
        return torch.zeros_like(x)
    start = (torch.rand(x.shape, generator=gen) * 2 - 1).mul(rho).to(x.device)
    return pgd(start, lambda d: F.cross_entropy(sur(x + d), y), linf_project(x, rho), cfg.adv_step, cfg.adv_steps,
               minimise=False)


def robust_noise(sur: Surrogate, x: torch.Tensor, y: torch.Tensor, cfg: REM, gen: torch.Generator) -> torch.Tensor:
    """δu for a batch: minimise the EOT-averaged loss of the adversarial examples of T(x + δu)."""
    eps = budget_steps(cfg.eps) / 255
    sur.model.eval()

    def loss(d: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for _ in range(cfg.eot):
            v = augment_batch(x + d, gen, pad=cfg.pad)
            total = total + F.cross_entropy(sur(v + adversarial(sur, v.detach(), y, cfg, gen)), y)
        return total / cfg.eot

    start = (torch.rand(x.shape, generator=gen) * 2 - 1).mul(eps).to(x.device)
    return pgd(start, loss, linf_project(x, eps), cfg.step, cfg.pgd_steps, minimise=True)


def craft_rem(cfg: REM, sur: Surrogate, x: torch.Tensor, y: torch.Tensor, rows: np.ndarray,
              gen: torch.Generator) -> torch.Tensor:
    """Train the surrogate adversarially on the noised data, then regenerate the noise; δ of ``rows``."""
    device = x.device
    noise = torch.zeros_like(x)
    poisoned = torch.from_numpy(mask_of(rows, len(x))).to(device)
    stream = BatchStream(np.arange(len(x)), cfg.batch_size, gen)
    bar = tqdm(range(cfg.train_steps), desc="craft rem (train)", disable=None, leave=False)
    for step in bar:
        idx = stream.next().to(device)
        pidx = idx[poisoned[idx]]
        if len(pidx):
            noise[pidx] = robust_noise(sur, x[pidx], y[pidx], cfg, gen)
        v = augment_batch(x[idx] + noise[idx], gen, pad=cfg.pad)
        sur.model.eval()
        adv = v + adversarial(sur, v, y[idx], cfg, gen)
        loss = train_step(sur, adv, y[idx], lr=cfg.lr * 0.1 ** (step // cfg.lr_decay_every))
        if (step + 1) % 100 == 0:
            log.info("rem step %d/%d: adversarial training loss %.3f", step + 1, cfg.train_steps, loss)
    rows_t = torch.from_numpy(np.asarray(rows, np.int64)).to(device)
    out = torch.empty((len(rows_t), *x.shape[1:]), device=device)
    for i in tqdm(range(0, len(rows_t), cfg.batch_size), desc="craft rem (final noise)", disable=None, leave=False):
        idx = rows_t[i:i + cfg.batch_size]
        out[i:i + len(idx)] = robust_noise(sur, x[idx], y[idx], cfg, gen)
    return out
