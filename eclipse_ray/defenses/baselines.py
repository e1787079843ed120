"""Model-free baseline purifiers (docs/design.md §5.5): JPEG, grayscale, bit-depth reduction, Gaussian blur.

ISS (Liu et al., ICML 2023) showed that JPEG at quality 10 (ISS-J) and
grayscale (ISS-G) squeeze out most availability poisons; APBench uses them as
baselines. Each is applied once to the training set.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from eclipse_ray.config import ConfigError, setting
from eclipse_ray.defenses.base import DefenseConfig, ImagePurifier, batched_uint8
from eclipse_ray.defenses.compensation import grayscale


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """JPEG encode/decode round trip of uint8 NHWC images (PIL, 4:2:0 subsampling)."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return out


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding."""
    r = kernel // 2
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@dataclass(frozen=True)
class JPEG(DefenseConfig):
    name: ClassVar[str] = "jpeg"
    summary: ClassVar[str] = "JPEG compression round trip (ISS-J)"
    quality: int = setting(10, "JPEG quality (ISS-J / APBench: 10)", ge=1, le=100)

    def image_purifier(self, model_dir: None, seed: int) -> ImagePurifier:
        return lambda images, index: jpeg(images, self.quality)


@dataclass(frozen=True)
class Gray(DefenseConfig):
    name: ClassVar[str] = "gray"
    summary: ClassVar[str] = "grayscale, luma replicated to 3 channels (ISS-G)"

    def image_purifier(self, model_dir: None, seed: int) -> ImagePurifier:
        return lambda images, index: batched_uint8(images, grayscale)


@dataclass(frozen=True)
class BitDepth(DefenseConfig):
    name: ClassVar[str] = "bitdepth"
    summary: ClassVar[str] = "bit-depth reduction to `bits` bits per channel"
    bits: int = setting(2, "bits per channel kept", ge=1, le=8)

    def image_purifier(self, model_dir: None, seed: int) -> ImagePurifier:
        return lambda images, index: batched_uint8(images, lambda x: bit_depth(x, self.bits))


@dataclass(frozen=True)
class Blur(DefenseConfig):
    name: ClassVar[str] = "blur"
    summary: ClassVar[str] = "Gaussian blur"
    kernel: int = setting(3, "kernel side (odd)", ge=1)
    sigma: float = setting(1.0, "Gaussian σ in pixels", gt=0.0)

    def validate(self) -> None:
        if self.kernel % 2 == 0:
            raise ConfigError(f"defense.kernel={self.kernel}: must be odd")

    def image_purifier(self, model_dir: None, seed: int) -> ImagePurifier:
        return lambda images, index: batched_uint8(images, lambda x: gaussian_blur(x, self.kernel, self.sigma))
