"""Langevin dynamics on an energy E(x), and PureGen-EBM purification (Bhat et al., NeurIPS 2024).

One step, on images in [-1, 1]:

    x ← x − (η²/2) · ∇ₓE(x)/τ + η · n,    n ~ N(0, I)

PureGen purifies with 150 steps, η = 1.25e-2, τ = 1e-4 and no initial noise,
starting from the (possibly poisoned) image itself; the chains are not clipped
(we clip only when converting back to pixels). The same step, with 100 steps,
drives the negative chains of contrastive-divergence training.

Noise: pass one ``torch.Generator`` (training chains: draws depend on the
batch), or one generator per sample (purification: each sample's noise comes
from its own (seed, sample index) stream, see :mod:`eclipse_ray.rng`, so the
result never depends on batch size, order, shards or actor count).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from eclipse_ray.config import ConfigError
from eclipse_ray.rng import sample_generator

EnergyFn = Callable[[torch.Tensor], torch.Tensor]
LANGEVIN_STREAM = 0x45424D  # "EBM": the per-sample stream id of purification noise


def _noise(shape: torch.Size, generator: torch.Generator | Sequence[torch.Generator], device: torch.device):
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator).to(device)
    if len(generator) != shape[0]:
        raise ConfigError(f"langevin: {len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generator]).to(device)


def langevin(energy: EnergyFn, x: torch.Tensor, steps: int, eta: float, tau: float,
             generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    """``steps`` Langevin steps on ``energy`` (batch → (B,) energies) from ``x``; returns the end states.

    Pure: ``x`` is not modified and the energy's parameters get no gradients.
    """
    if steps < 0 or eta < 0 or tau <= 0:
        raise ConfigError(f"langevin: need steps ≥ 0, eta ≥ 0, tau > 0 (got {steps}, {eta}, {tau})")
    x = x.detach().clone()
    drift = eta * eta / 2.0 / tau
    with torch.enable_grad():
        for _ in range(steps):
            xg = x.requires_grad_(True)
            (grad,) = torch.autograd.grad(energy(xg).sum(), [xg])
            x = xg.detach() - drift * grad + eta * _noise(x.shape, generator, x.device)
    return x


def sample_generators(index: np.ndarray, seed: int, stream: int = LANGEVIN_STREAM) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from (seed, sample index, stream)."""
    return [sample_generator(seed, int(i), stream) for i in np.asarray(index, dtype=np.int64)]


def purify_images(energy: EnergyFn, images: np.ndarray, index: np.ndarray, seed: int, steps: int = 150,
                  eta: float = 1.25e-2, tau: float = 1e-4, device: str | torch.device = "cpu") -> np.ndarray:
    """PureGen-EBM on uint8 NHWC ``images`` (sample ids ``index``): pixels → [-1,1] → Langevin → pixels."""
    if len(images) != len(index):
        raise ConfigError(f"purify: {len(images)} images but {len(index)} indices")
    if len(images) == 0:
        return images.copy()
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = langevin(energy, x, steps, eta, tau, sample_generators(index, seed))
    out = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return out.permute(0, 2, 3, 1).cpu().numpy()
