"""Torch helpers every layer uses: the device a setting names, uint8 images as tensors, training augmentation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from eclipse_ray.config import ConfigError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"victim.device={name!r}: not a device name (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"victim.device={name}: CUDA is not available on this machine")
    return dev


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC numpy to float [0,1] NCHW on ``device``."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and translation by up to ``pad`` px (reflect padding)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    if pad == 0:
        return x
    h, w = x.shape[2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]
