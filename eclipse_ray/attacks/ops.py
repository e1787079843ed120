"""OPS — One-Pixel Shortcut (Wu et al., ICLR 2023).

Per class, one pixel position and one corner colour of the RGB cube are chosen
from the class's own images: the (position, colour) pair whose replacement
changes that pixel the most *consistently*,
``score = mean|c - x_p| / std|c - x_p|`` over the class's images and channels.
Classes are processed in order and a pair already taken scores 0 (positions
may repeat with another colour). The pixel is then set to the colour exactly —
a perturbation of sparsity 1 with no ℓ∞ bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from eclipse_ray.attacks.base import AVAILABILITY, AttackConfig, mask_of, rate_rows, setting_rate, setting_seed
from eclipse_ray.data.imageset import ImageSet, to_float

CORNER_COLOURS = np.array([[v // 4, (v // 2) % 2, v % 2] for v in range(8)], dtype=np.float32)


def ops_search(images: np.ndarray, labels: np.ndarray, num_classes: int) -> list[tuple[int, int, int]]:
    """Per class the (row, col, colour id) of the one-pixel shortcut."""
    h, w = images.shape[1:3]
    taken: set[tuple[int, int]] = set()
    picks = []
    for k in range(num_classes):
        x = to_float(images[labels == k])
        scores = np.zeros((8, h * w))
        if len(x):
            for v, colour in enumerate(CORNER_COLOURS):
                d = np.abs(colour - x).transpose(1, 2, 0, 3).reshape(h * w, -1)
                scores[v] = d.mean(1) / np.maximum(d.std(1), 1e-8)
        for v, p in taken:
            scores[v, p] = 0.0
        v, p = np.unravel_index(int(np.argmax(scores)), scores.shape)
        taken.add((int(v), int(p)))
        picks.append((int(p) // w, int(p) % w, int(v)))
    return picks


@dataclass(frozen=True)
class OPS(AttackConfig):
    name: ClassVar[str] = "ops"
    kind: ClassVar[str] = AVAILABILITY
    summary: ClassVar[str] = "one-pixel shortcut: one position and corner colour per class"
    rate: float = setting_rate(1.0)
    seed: int = setting_seed()

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        picks = ops_search(train.images, train.labels, train.num_classes)
        rows = rate_rows(len(train), self.rate, rng)
        images = train.images.copy()
        pk = np.asarray(picks, dtype=np.int64).reshape(-1, 3)[train.labels[rows]]
        images[rows, pk[:, 0], pk[:, 1]] = (CORNER_COLOURS[pk[:, 2]] * 255).astype(np.uint8)
        return images, train.labels, mask_of(rows, len(train))
