"""Feature-collision poisons: Poison Frogs and Convex Polytope (two of Hong et al.'s seven clean-label attacks).

Both perturb base images of the adversarial class (labels kept, ℓ∞ ``eps``) so
that in the surrogate's penultimate feature space φ the target test image lands
among the poisons, and a victim that classifies the poisons as their class then
classifies the target as that class too.

* ``poison_frogs`` (Shafahi et al., NeurIPS 2018) — every poison collides with
  the target on its own: min Σ_j ‖φ(x_j + Δ_j) − φ(x_t)‖² / ‖φ(x_t)‖². The
  paper's proximity term β‖Δ‖² is replaced by the ℓ∞ ball, as in the
  poisoning benchmark (Schwarzschild et al., ICML 2021) that Hong et al. follow.
* ``convex_polytope`` (Zhu et al., ICML 2019) — the target sits inside the
  poisons' convex hull: min over Δ and coefficients c on the simplex of
  ‖φ(x_t) − Σ_j c_j φ(x_j + Δ_j)‖² / ‖φ(x_t)‖²; each iteration one Adam step
  on Δ (projected on the ε-ball and [0,1]), then one projected gradient step
  on c. Bullseye Polytope (:mod:`eclipse_ray.attacks.bullseye`) is this with c
  fixed at 1/k (``objective="mean"``: the same loop and settings).

Optimiser as Bullseye's: Adam, lr in normalised pixel units, 4,000 iterations
(CPU settings in benchmarks/targeted_poisons.py); bases drawn at random from
the adversarial class. Deviation shared with Bullseye: one surrogate (the fast
net trained on the clean data), not the papers' ensembles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from eclipse_ray.attacks.base import setting_seed
from eclipse_ray.attacks.surrogate import ball_project, features
from eclipse_ray.attacks.targeted_base import (TargetedAttack, setting_eps, setting_norm, setting_surrogate_epochs,
                                               setting_surrogate_width)
from eclipse_ray.config import setting
from eclipse_ray.victim.train import Victim


def simplex_projection(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of ``v`` onto {c : c ≥ 0, Σ c = 1} (sort-based, Held et al.)."""
    u, _ = torch.sort(v, descending=True)
    css = u.cumsum(0) - 1
    k = torch.arange(1, len(v) + 1, device=v.device, dtype=v.dtype)
    rho = int((u - css / k > 0).nonzero().max())
    return (v - css[rho] / (rho + 1)).clamp_min(0)


def collision_loss(poison_features: torch.Tensor, target_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each poison's feature to the target's, relative to the target's norm."""
    return (poison_features - target_feature).pow(2).sum(1).mean() / target_feature.pow(2).sum().clamp_min(1e-12)


def bullseye_loss(poison_features: torch.Tensor, target_feature: torch.Tensor) -> torch.Tensor:
    """Squared distance of the poisons' mean feature to the target's, relative to the target's norm."""
    return (poison_features.mean(0) - target_feature).pow(2).sum() / target_feature.pow(2).sum().clamp_min(1e-12)


def polytope_loss(poison_features: torch.Tensor, target_feature: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distance of the target's feature to the poisons' ``c``-combination, relative to its norm."""
    return (c @ poison_features - target_feature).pow(2).sum() / target_feature.pow(2).sum().clamp_min(1e-12)


def collide(surrogate: Victim, bases: torch.Tensor, target: torch.Tensor, eps: float, iterations: int, lr: float,
            objective: str, coeff_lr: float = 0.1, progress: bool = False,
            norm: str = "linf") -> tuple[torch.Tensor, torch.Tensor, list]:
    """(perturbation of ``bases``, final coefficients, loss per iteration) of feature collision: ``objective``
    ``each`` (every poison onto the target), ``mean`` (Bullseye: their mean onto it) or ``convex`` (the target
    inside their hull, coefficients learned)."""
    with torch.no_grad():
        target_feature = features(surrogate, target)[0]
    delta = torch.zeros_like(bases, requires_grad=True)
    c = torch.full((len(bases),), 1.0 / len(bases), device=bases.device)
    opt = torch.optim.Adam([delta], lr=lr * float(surrogate.std.mean()))  # lr in normalised pixel units
    loss_of = {"each": collision_loss, "mean": bullseye_loss,
               "convex": lambda f, t: polytope_loss(f, t, c)}[objective]
    losses = []
    for _ in tqdm(range(iterations), desc=f"feature collision ({objective})", disable=not progress, leave=False):
        loss = loss_of(features(surrogate, bases + delta), target_feature)
        (delta.grad,) = torch.autograd.grad(loss, [delta])
        opt.step()
        with torch.no_grad():
            delta.copy_(ball_project(bases, eps, norm)(delta))
            if objective == "convex":  # one projected gradient step on the coefficients, the poisons fixed
                feats = features(surrogate, bases + delta)
                cc = c.clone().requires_grad_(True)
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(polytope_loss(feats, target_feature, cc), [cc])
                c = simplex_projection(c - coeff_lr * g)
        losses.append(float(loss.detach()))
    return delta.detach(), c, losses


@dataclass(frozen=True)
class FeatureCollision(TargetedAttack):
    """Settings and crafting shared by the feature-collision poisons (``objective`` picks the loss)."""

    objective: ClassVar[str] = "each"
    eps: float = setting_eps()
    norm: str = setting_norm()
    budget: float = setting(0.01, "share of the training set poisoned per target (from its adversarial class)",
                            ge=0.0, le=1.0)
    poisons: int | None = setting(None, "poisons per target (none: max(1, round(budget·n)); papers: 5)", ge=1)
    targets: int = setting(1, "targets attacked in one poisoned training set (own class and poisons each)", ge=1)
    iterations: int = setting(4000, "Adam steps", ge=1)
    lr: float = setting(0.04, "Adam learning rate in normalised pixel units", gt=0.0)
    surrogate_epochs: int = setting_surrogate_epochs()
    surrogate_width: int = setting_surrogate_width()
    seed: int = setting_seed()

    def craft(self, surrogate: Victim, bases: torch.Tensor, target: torch.Tensor, adv_class: int,
              gen: torch.Generator, progress: bool) -> torch.Tensor:
        delta, _, _ = collide(surrogate, bases, target, self.eps, self.iterations, self.lr, self.objective,
                              getattr(self, "coeff_lr", 0.1), progress, self.norm)
        return delta


@dataclass(frozen=True)
class PoisonFrogs(FeatureCollision):
    name: ClassVar[str] = "poison_frogs"
    summary: ClassVar[str] = "Poison Frogs: each poison's feature collides with the target's (feature collision)"


@dataclass(frozen=True)
class ConvexPolytope(FeatureCollision):
    name: ClassVar[str] = "convex_polytope"
    summary: ClassVar[str] = "Convex Polytope: the target's feature inside the poisons' convex hull (learned weights)"
    objective: ClassVar[str] = "convex"
    coeff_lr: float = setting(0.1, "step of the projected gradient update of the convex coefficients", gt=0.0)
