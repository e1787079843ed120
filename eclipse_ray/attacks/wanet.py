"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible backdoor made of a smooth warping field.

As in BackdoorBench: a fixed random field on a k×k control grid (k = 4,
uniform in [-1,1], scaled to mean |·| = 1), upsampled bicubically to the image
size, added to the identity sampling grid with strength s/H (s = 0.5), clamped
to [-1,1] and applied with ``grid_sample`` (bilinear, align_corners). Poisoned
rows (``rate`` = 10 % of the training set, drawn from non-target samples) are
warped and relabelled to the target (all-to-one, target 0). "Noise mode"
rows (``cross_ratio`` = 2 times as many, drawn from the remaining samples) are
warped with the field *plus* per-sample random grid noise (uniform in
[-1,1]/H) and keep their labels, so the victim must learn the exact field,
not warping in general. Every altered row is marked ``poisoned``;
``test_triggered`` holds the warped non-target test images.

Deviation: BackdoorBench (and the paper) poison each training *batch* afresh
(training-controlled attack); here, like every other attack in eclipse_ray,
the poisoned set is fixed once (a data-only attacker), with the noise-mode
grids drawn once per row. The field seed (``field_seed``) is separate from the
row-choice seed, so the trigger is the same across ``attack.seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from eclipse_ray.attacks.backdoor import _Backdoor, setting_target
from eclipse_ray.attacks.base import choose_rows, mask_of, setting_rate, setting_seed
from eclipse_ray.config import ConfigError, setting
from eclipse_ray.data.imageset import ImageSet


def warp_field(size: int, k: int, strength: float, rescale: float, gen: torch.Generator) -> torch.Tensor:
    """The (1, H, W, 2) sampling grid: identity + strength·(upsampled k×k noise)/H, clamped to [-1, 1]."""
    ins = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
    ins = ins / ins.abs().mean()
    noise = F.interpolate(ins, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    line = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(line, line, indexing="ij")
    identity = torch.stack((xx, yy), 2)[None]
    return ((identity + strength * noise / size) * rescale).clamp(-1, 1)


def warp(images: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    """uint8 NHWC ``images`` resampled at ``grid`` ((1 or N), H, W, 2), rounded back to uint8."""
    if not len(images):
        return images.copy()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    grid = grid.expand(len(x), -1, -1, -1) if grid.shape[0] == 1 else grid
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@dataclass(frozen=True)
class WaNet(_Backdoor):
    name: ClassVar[str] = "wanet"
    summary: ClassVar[str] = "smooth random warping field (grid_sample), label flipped; plus noise-mode rows"
    k: int = setting(4, "side of the random control grid of the warping field", ge=2)
    strength: float = setting(0.5, "warping strength s (displacement s/H in grid units)", ge=0.0)
    grid_rescale: float = setting(1.0, "scale of the warped grid (BackdoorBench: 1)", gt=0.0)
    cross_ratio: float = setting(2.0, "noise-mode rows per poisoned row (labels kept)", ge=0.0)
    field_seed: int = setting(0, "seed of the warping field (the trigger)", ge=0)
    rate: float = setting_rate(0.1)
    target: int = setting_target()
    seed: int = setting_seed()

    def check_dataset(self, train: ImageSet) -> None:
        super().check_dataset(train)
        h, w = train.image_shape[:2]
        if h != w:
            raise ConfigError(f"wanet: needs square images, got {h}x{w}")

    def field(self, size: int) -> torch.Tensor:
        return warp_field(size, self.k, self.strength, self.grid_rescale,
                          torch.Generator().manual_seed(self.field_seed))

    def trigger(self, images: np.ndarray, train: bool) -> np.ndarray:
        return warp(images, self.field(images.shape[1]))

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        candidates, count = self.eligible_rows(train)
        rows = choose_rows(candidates, count, rng)
        rest = np.setdiff1d(np.arange(len(train)), rows)
        cross = choose_rows(rest, int(round(self.cross_ratio * count)), rng)
        images, labels = train.images.copy(), train.labels.copy()
        size = train.image_shape[0]
        images[rows] = self.trigger(train.images[rows], train=True)
        labels[rows] = self.target
        if len(cross):
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            noise = (torch.rand(len(cross), size, size, 2, generator=gen) * 2 - 1) / size
            images[cross] = warp(train.images[cross], (self.field(size) + noise).clamp(-1, 1))
        return images, labels, mask_of(np.concatenate([rows, cross]), len(train))
