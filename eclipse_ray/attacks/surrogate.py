"""Surrogate-model machinery shared by the crafted availability poisons (EM, REM, TAP, em-adaptive).

A crafted poison optimises a perturbation δ against a surrogate classifier.
This module holds what they have in common:

* :class:`CraftedAttack` — config base: ℓ∞ budget, surrogate net and optimiser
  settings, device; ``crafted = True`` so trials craft once and read the poison
  cache; the crafting time goes into the dataset meta as ``craft_seconds``.
* :func:`build_surrogate` / :class:`Surrogate` — the victim nets
  (:func:`eclipse_ray.victim.nets.build_net`) with input normalisation and SGD.
* :class:`BatchStream` — an endless, seeded stream of mini-batch indices (the
  "next 10 batches" of EM's inner training continue where the last round stopped).
* :func:`pgd` — signed-gradient PGD that minimises (error-minimising noise) or
  maximises (adversarial examples) a loss, with a projection.
* :func:`quantise` — the float δ to uint8 images that respect the budget exactly:
  the ℓ∞ budget is floored to whole uint8 steps (8/255 → 8 steps) and
  |x' − x| ≤ that many steps after rounding.

All randomness comes from explicit ``torch.Generator`` objects seeded from the
attack's numpy generator, so crafting is deterministic under ``attack.seed`` on
a given device.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from eclipse_ray.attacks.base import AVAILABILITY, AttackConfig, rate_rows
from eclipse_ray.config import setting
from eclipse_ray.data.sources import Dataset
from eclipse_ray.victim.nets import FastNet, build_net
from eclipse_ray.tensors import pick_device, to_tensor
from eclipse_ray.victim.train import Adversary, VictimConfig, train_victim

# A differentiable map applied to a perturbed batch before the surrogate (augmentation, a defense's
# compensation, a purifier); it draws its randomness from the generator.
View = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class CraftedAttack(AttackConfig):
    """Settings every surrogate-crafted ℓ∞ poison shares (defaults: the papers' CIFAR-10 values)."""

    kind: ClassVar[str] = AVAILABILITY
    crafted: ClassVar[bool] = True

    eps: float = setting(8 / 255, "ℓ∞ budget on [0,1] (floored to whole uint8 steps)", ge=0.0, le=1.0)
    arch: str = setting("fast", "surrogate network", choices=("fast", "resnet18"))
    width: int = setting(32, "surrogate fast-net base width", ge=4)
    batch_size: int = setting(128, "surrogate batch size (training and PGD)", ge=2)
    lr: float = setting(0.1, "surrogate SGD learning rate", gt=0.0)
    momentum: float = setting(0.9, "surrogate SGD momentum", ge=0.0, lt=1.0)
    weight_decay: float = setting(5e-4, "surrogate weight decay", ge=0.0)
    device: str = setting("auto", "crafting device: auto (CUDA if present), cpu or cuda[:N]")

    def begin(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, torch.Generator, torch.device]:
        """(the ``rate`` share of the ``n`` rows to poison, the crafting's torch generator, the device), drawn
        in this order from the attack's generator: what every crafted poison does first."""
        rows = rate_rows(n, self.rate, rng)
        return rows, torch_generator(rng), crafting_device(self)

    def apply(self, data: Dataset) -> Dataset:
        """Craft (see :meth:`AttackConfig.apply`); record wall and process-CPU time (``craft_seconds``,
        ``craft_cpu_seconds``: the latter is the cost free of other processes' load)."""
        t, cpu = time.perf_counter(), time.process_time()
        out = super().apply(data)
        return Dataset(out.name, out.splits, {**out.meta, "craft_seconds": time.perf_counter() - t,
                                              "craft_cpu_seconds": time.process_time() - cpu})


def budget_steps(eps: float) -> int:
    """The ℓ∞ budget in whole uint8 steps (floored; 8/255 → 8)."""
    return int(math.floor(eps * 255 + 1e-6))


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from the attack's numpy generator."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


@dataclass
class Surrogate:
    """A classifier on [0,1] NCHW inputs (normalised inside) and its SGD optimiser."""

    model: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    opt: torch.optim.Optimizer | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def build_surrogate(cfg: CraftedAttack, num_classes: int, x_clean: torch.Tensor, seed: int) -> Surrogate:
    """A fresh surrogate (init seeded by ``seed``), normalised and whitened on the clean images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_net(cfg.arch, num_classes, cfg.width)
    model = model.to(x_clean.device)
    mean = x_clean.mean((0, 2, 3), keepdim=True)
    std = x_clean.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
    if isinstance(model, FastNet):  # every direction kept: the noise may live where clean data never vary
        model.init_whitening(((x_clean - mean) / std)[:5000], rel_tol=None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD([{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
                           {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum)
    return Surrogate(model, mean, std, opt)


class BatchStream:
    """Endless mini-batches of ``rows`` in a fresh seeded order each pass (batches of ≥ 2 for BatchNorm)."""

    def __init__(self, rows: np.ndarray, batch_size: int, gen: torch.Generator) -> None:
        self.rows = torch.as_tensor(np.asarray(rows, np.int64))
        self.batch_size = batch_size
        self.gen = gen
        self.order = torch.zeros(0, dtype=torch.long)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + min(2, len(self.rows)) > len(self.order):
            self.order = self.rows[torch.randperm(len(self.rows), generator=self.gen)]
            self.pos = 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


def train_step(sur: Surrogate, x: torch.Tensor, y: torch.Tensor, lr: float | None = None) -> float:
    """One SGD step of plain cross-entropy on the batch; returns the loss."""
    sur.model.train()
    if lr is not None:
        for group in sur.opt.param_groups:
            group["lr"] = lr
    loss = F.cross_entropy(sur(x), y)
    sur.opt.zero_grad(set_to_none=True)
    loss.backward()
    sur.opt.step()
    return loss.item()


def pgd(delta: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
        project: Callable[[torch.Tensor], torch.Tensor], step: float | Callable[[int], float], steps: int,
        minimise: bool, norm: str = "linf") -> torch.Tensor:
    """``steps`` steepest-ascent steps on ``delta`` (down if ``minimise``) under ``norm`` (ℓ∞: the gradient's
    sign; ℓ2: the gradient scaled to unit norm per sample), projected after each."""
    sign = -1.0 if minimise else 1.0
    delta = project(delta.detach())
    for k in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(delta), delta)
        size = step(k) if callable(step) else step
        delta = project(delta.detach() + sign * size * steepest(grad, norm))
    return delta.detach()


def pgd_adversary(eps: float, step: float, steps: int, random_start: bool = True) -> Adversary:
    """The per-batch PGD ℓ∞ adversary (maximising the cross-entropy of the true labels)."""
    def attack(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               gen: torch.Generator) -> torch.Tensor:
        project = linf_project(x, eps)
        start = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * eps if random_start \
            else torch.zeros_like(x)
        with torch.enable_grad():
            delta = pgd(start, lambda d: F.cross_entropy(model(x + d), y), project, step, steps, minimise=False)
        return (x + delta).detach()

    return attack


def setting_robust_whiten() -> bool:
    return setting(False, "fast reference model: keep the victim's frozen patch-whitening stem in its adversarial "
                   "training (off: the stem is trained; the frozen one amplifies the PGD perturbations, see advtrain)")


def robust_surrogate(cfg: VictimConfig, images: np.ndarray, labels: np.ndarray, num_classes: int,
                     robust_eps: float, robust_steps: int, seed: int, whiten: bool = False) -> Surrogate:
    """A frozen classifier in eval mode, trained by ``cfg`` on uint8 ``images`` adversarially (PGD ℓ∞
    ``robust_eps``, ``robust_steps`` steps of 2.5·eps/steps per batch, random start; ``robust_eps=0``: plain
    training, by ``cfg`` as it is). The reference model of the attacks aimed at robust features (LC, EntF);
    ``whiten`` (their ``robust_whiten``) keeps the fast net's frozen whitening stem in adversarial training."""
    adversary = pgd_adversary(robust_eps, 2.5 * robust_eps / robust_steps, robust_steps) if robust_eps > 0 else None
    if adversary is not None and not whiten:
        cfg = dataclasses.replace(cfg, whiten=False)
    victim = train_victim(cfg, images, labels, num_classes, seed, progress=False, whiten_tol=None,
                          adversary=adversary)
    sur = Surrogate(victim.model.eval(), victim.mean, victim.std)
    for p in sur.model.parameters():
        p.requires_grad_(False)
    return sur


def features(net: Surrogate, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features (the input of the last linear layer) of float [0,1] NCHW ``x`` under ``net`` (a
    :class:`Surrogate` or anything with ``model``, ``mean`` and ``std``); differentiable in ``x``."""
    last = [m for m in net.model.modules() if isinstance(m, nn.Linear)][-1]
    out: list[torch.Tensor] = []
    handle = last.register_forward_pre_hook(lambda _m, args: out.append(args[0]))
    try:
        net.model((x - net.mean) / net.std)
    finally:
        handle.remove()
    return out[0]


def linf_project(x: torch.Tensor, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Projection onto {δ : |δ| ≤ eps, x + δ ∈ [0,1]} for per-sample δ."""
    return lambda d: (x + d.clamp(-eps, eps)).clamp(0, 1) - x


def l2_project(x: torch.Tensor, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-sample δ scaled into the ℓ2 ball of radius ``eps``, then x + δ clipped to [0,1] (which only
    shortens δ, so it stays in the ball)."""
    def project(d: torch.Tensor) -> torch.Tensor:
        norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        d = d * (eps / norm).clamp(max=1.0).view(-1, *([1] * (d.ndim - 1)))
        return (x + d).clamp(0, 1) - x
    return project


NORMS = ("linf", "l2")


def steepest(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of a per-sample gradient under ``norm``: its sign (ℓ∞) or the gradient
    scaled to unit ℓ2 norm per sample (ℓ2)."""
    if norm == "linf":
        return g.sign()
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.ndim - 1)))


MIN_L2_EPS = 0.1  # below this an ℓ2 budget on [0,1] images rounds to (almost) nothing in uint8


def ball_project(x: torch.Tensor, eps: float, norm: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The projection onto the ``norm`` ball (``linf`` or ``l2``) of radius ``eps`` around ``x``, in [0,1]."""
    return linf_project(x, eps) if norm == "linf" else l2_project(x, eps)


def quantise_ball(images: np.ndarray, rows: np.ndarray, delta: torch.Tensor, eps: float, norm: str) -> np.ndarray:
    """:func:`quantise` for ``linf``; for ``l2`` δ is rounded to whole uint8 steps and, where rounding pushed a
    row's ℓ2 norm past ``eps``, shrunk by the largest factor (bisection) whose rounding stays inside: the
    stored perturbation never leaves the ball (clipping to [0, 255] only shortens it) and keeps almost all
    of its norm."""
    if norm == "linf":
        return quantise(images, rows, delta, eps)
    out = images.copy()
    if len(rows):
        d = delta.detach().double().cpu().flatten(1) * 255
        q = torch.round(d)
        limit = eps * 255
        for i in torch.nonzero(q.norm(dim=1) > limit).flatten().tolist():
            lo, hi = 0.0, 1.0
            for _ in range(30):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if torch.round(d[i] * mid).norm() <= limit else (lo, mid)
            q[i] = torch.round(d[i] * lo)
        q = q.view(delta.shape).to(torch.int16).permute(0, 2, 3, 1).numpy()
        out[rows] = np.clip(images[rows].astype(np.int16) + q, 0, 255).astype(np.uint8)
    return out


@torch.no_grad()
def accuracy(sur: Surrogate, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512,
             view: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """The surrogate's accuracy (eval mode) on ``x`` (through ``view`` when given)."""
    sur.model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        correct += (sur(view(xb) if view else xb).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / max(len(x), 1)


def images_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC to float [0,1] NCHW on ``device``."""
    return to_tensor(np.ascontiguousarray(images), device)


def quantise(images: np.ndarray, rows: np.ndarray, delta: torch.Tensor, eps: float) -> np.ndarray:
    """Copy of uint8 ``images`` with ``delta`` (rows, C, H, W on [0,1]) added to ``rows``, within the budget.

    δ is rounded to whole uint8 steps and clipped to ±``budget_steps(eps)``, then
    the result to [0, 255]: |x' − x| never exceeds the floored budget.
    """
    k = budget_steps(eps)
    out = images.copy()
    if len(rows):
        d = torch.round(delta.detach().float().cpu() * 255).clamp(-k, k).to(torch.int16)
        d = d.permute(0, 2, 3, 1).numpy()
        out[rows] = np.clip(images[rows].astype(np.int16) + d, 0, 255).astype(np.uint8)
    return out


def crafting_device(cfg: CraftedAttack) -> torch.device:
    return pick_device(cfg.device)
