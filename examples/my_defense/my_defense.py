"""A median-filter purifier (feature squeezing, Xu et al., NDSS 2018) as an eclipse_ray plugin.

Installed (``pip install -e examples/my_defense``) it registers through the
``eclipse_ray.defenses`` entry point; as a single file it loads with
``eclipse-ray --plugin examples/my_defense/my_defense.py …``. Either way it is
the defense ``median``: ``eclipse-ray list`` shows it, ``--set defense.size=5``
sets it, its rows, caches and Ray purification work as a built-in's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from eclipse_ray.config import ConfigError, setting
from eclipse_ray.defenses import DEFENSES, DefenseConfig
from eclipse_ray.defenses.base import ImagePurifier, batched_uint8


def median_filter(x, size: int):
    """Per-channel median over ``size``×``size`` windows of a float NCHW batch (reflect padding)."""
    r = size // 2
    patches = F.unfold(F.pad(x, (r, r, r, r), mode="reflect"), size)  # N, C*size*size, H*W
    n, c, h, w = x.shape
    return patches.view(n, c, size * size, h * w).median(dim=2).values.view(n, c, h, w)


@DEFENSES.register
@dataclass(frozen=True)
class Median(DefenseConfig):
    name: ClassVar[str] = "median"
    summary: ClassVar[str] = "median filter (feature squeezing)"
    size: int = setting(3, "window side in pixels (odd)", ge=1, le=9)

    def validate(self) -> None:
        if self.size % 2 == 0:
            raise ConfigError(f"defense.size={self.size}: must be odd")

    def image_purifier(self, model_dir: None, seed: int) -> ImagePurifier:
        """f(uint8 NHWC images, index) -> purified images: the one function every purification path calls."""
        return lambda images, index: batched_uint8(images, lambda x: median_filter(x, self.size))
