"""ECLIPSE's corruption compensation: random grayscale, then additive Gaussian noise.

After diffusion purification ECLIPSE applies random grayscale (p = 0.4, luma
replicated to three channels) and Gaussian noise (σ = 0.05 on [0,1]), clamped.
The paper applies it once to the purified set (``mode=once``); the public code
applies it as a per-epoch training augmentation (``mode=epoch``). Table 4 of
the paper: diffusion alone 60.18 % average accuracy, with both parts 83.82 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from eclipse_ray.config import setting
from eclipse_ray.defenses.base import DefenseConfig, ImagePurifier
from eclipse_ray.rng import per_sample_randn
from eclipse_ray.victim.train import BatchTransform

LUMA = (0.299, 0.587, 0.114)
COMPENSATION_STREAM = 1_000_001  # random stream id of the once-off compensation


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of an NCHW RGB batch, replicated to three channels."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x * w).sum(1, keepdim=True).expand_as(x)


def compensate(x: torch.Tensor, gray_p: float, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Random grayscale with probability ``gray_p`` per image, then N(0, σ²) noise, clamped to [0,1]."""
    pick = (torch.rand(x.shape[0], generator=gen) < gray_p).to(x.device)[:, None, None, None]
    x = torch.where(pick, grayscale(x), x)
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    return (x + sigma * noise).clamp(0, 1)


def compensation_settings():
    """(gray_p, sigma, mode) fields shared by ECLIPSE and the stand-alone compensation defense."""
    return (setting(0.4, "probability of converting an image to grayscale", ge=0.0, le=1.0),
            setting(0.05, "σ of the additive Gaussian noise on [0,1]", ge=0.0),
            setting("once", "once: apply to the purified set (paper); epoch: per-batch augmentation (code)",
                    choices=("once", "epoch", "off")))


_GRAY_P, _SIGMA, _MODE = compensation_settings()


@dataclass(frozen=True)
class Compensation(DefenseConfig):
    """ECLIPSE's compensation on its own (no diffusion): the ablation's second half."""

    name: ClassVar[str] = "compensation"
    summary: ClassVar[str] = "ECLIPSE's random grayscale + Gaussian noise, once or per epoch"
    gray_p: float = _GRAY_P
    noise_sigma: float = _SIGMA
    mode: str = _MODE

    def image_purifier(self, model_dir: None, seed: int) -> ImagePurifier:
        if self.mode != "once":  # per epoch (or off): the training set stays as it is
            return lambda images, index: images.copy()
        return lambda images, index: compensate_uint8(images, index, self.gray_p, self.noise_sigma, seed)

    def train_transform(self) -> BatchTransform | None:
        return compensation_transform(self.gray_p, self.noise_sigma, self.mode)


def compensate_per_sample(x: torch.Tensor, index: np.ndarray, gray_p: float, sigma: float,
                          seed: int) -> torch.Tensor:
    """:func:`compensate` with each sample's draws from its own (seed, index) stream (batch-independent)."""
    draws = per_sample_randn(index, seed, COMPENSATION_STREAM, (1 + x[0].numel(),))
    pick = (torch.special.ndtr(draws[:, 0]) < gray_p).to(x.device)[:, None, None, None]
    noise = draws[:, 1:].reshape(x.shape).to(x.device)
    return (torch.where(pick, grayscale(x), x) + sigma * noise).clamp(0, 1)


def compensate_uint8(images: np.ndarray, index: np.ndarray, gray_p: float, sigma: float, seed: int) -> np.ndarray:
    """Once-off compensation of uint8 NHWC images (per-sample streams)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)
    y = compensate_per_sample(x, index, gray_p, sigma, seed)
    return y.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def compensation_transform(gray_p: float, sigma: float, mode: str) -> BatchTransform | None:
    """The per-batch training transform for ``mode=epoch``; ``None`` otherwise."""
    if mode != "epoch":
        return None
    return lambda x, gen: compensate(x, gray_p, sigma, gen)
