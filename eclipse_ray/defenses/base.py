"""What every defense shares: its config base.

A *purification* defense rewrites the training images once, offline
(:meth:`DefenseConfig.purify`), keeping every sample's index, label and poison
flag (checked by the caller). It may also ask for a per-batch transform during
victim training (:meth:`DefenseConfig.train_transform`), which is how ECLIPSE's
public code applies its compensation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from eclipse_ray.config import Config
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.victim.train import BatchTransform


@dataclass(frozen=True)
class DefenseConfig(Config):
    section: ClassVar[str] = "defense"
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def purify(self, train: ImageSet, seed: int, progress: bool = True,
               clean: ImageSet | None = None) -> ImageSet:
        """The purified training set (same samples, new pixels). Default: unchanged.

        ``clean`` (aligned to ``train``) holds the clean originals and their true
        labels, from which defenses that need a clean reference set (ECLIPSE) draw theirs.
        """
        return train

    def train_transform(self) -> BatchTransform | None:
        """A transform applied to every training batch, or ``None``."""
        return None

    @property
    def purifies(self) -> bool:
        """Whether :meth:`purify` changes pixels (so purification metrics are meaningful)."""
        return type(self).purify is not DefenseConfig.purify


@dataclass(frozen=True)
class NoDefense(DefenseConfig):
    name: ClassVar[str] = "none"
    summary: ClassVar[str] = "no defense: train on the data as given"


def batched_uint8(images: np.ndarray, fn, batch: int = 1024) -> np.ndarray:
    """Apply ``fn`` (float [0,1] NCHW tensor -> same) to uint8 NHWC ``images`` in batches."""
    out = np.empty_like(images)
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float().div(255)
        y = fn(x).clamp(0, 1).mul(255).round().to(torch.uint8)
        out[i:i + batch] = y.permute(0, 2, 3, 1).numpy()
    return out
