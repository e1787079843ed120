"""Energy networks E(x) for PureGen-EBM (Bhat et al., NeurIPS 2024): image → one scalar energy.

Two architectures, both from PureGen's public code:

* ``conv``   — the short-run-MCMC EBM of Nijkamp et al. (NeurIPS 2019, "Learning
  non-convergent non-persistent short-run MCMC toward energy-based model"):
  conv3×3 (n_f) then three stride-2 conv4×4 doubling the width, LeakyReLU 0.05,
  and a final conv4×4 to one number. Cheap: our CPU presets.
* ``resnet`` — PureGen's default ``EBMSNGAN32``: the SNGAN-32 ResNet discriminator
  (an optimised first block and three residual blocks of width nf, the first two
  down-sampling, ReLU), global *mean* pooling and a bias-free linear head, Xavier
  init, no spectral norm (as in their code).

Presets (32×32 RGB): ``tiny`` (conv, n_f = 8, 44 K parameters) for tests,
``small`` (conv, n_f = 16, 175 K) for CPU benchmarks, ``paper`` (resnet, nf = 128,
1.06 M) as PureGen trained it. No batch statistics anywhere (no BatchNorm): a
sample's energy depends on that sample only, which keeps purification
independent of batch size.

A model directory holds ``model.safetensors`` (weights) and ``config.json``
(``{"kind": "ebm", "arch", "width", "image_shape", ...training info}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from eclipse_ray.checkpoint import check_intact
from eclipse_ray.config import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"arch": "conv", "width": 8},
    "small": {"arch": "conv", "width": 16},
    "paper": {"arch": "resnet", "width": 128},
}


MIN_SIZE = {"conv": 32, "resnet": 4}  # smallest side each net takes: conv halves 3 times, then a 4x4 kernel


def check_fits(arch: str, image_shape: Any, what: str) -> None:
    """A one-line :class:`ConfigError` unless an ``arch`` energy network takes images of ``image_shape``."""
    h, w = int(image_shape[0]), int(image_shape[1])
    need = MIN_SIZE.get(arch, 1)
    if min(h, w) < need:
        raise ConfigError(f"{what}: {h}x{w} images are too small for the {arch} energy network "
                          f"(sides of at least {need} px)")


class ConvEnergy(nn.Module):
    """Nijkamp et al.'s short-run EBM (PureGen's ``EBM`` class)."""

    def __init__(self, width: int = 32, channels: int = 3, leak: float = 0.05) -> None:
        super().__init__()
        w = width
        self.f = nn.Sequential(
            nn.Conv2d(channels, w, 3, 1, 1), nn.LeakyReLU(leak),
            nn.Conv2d(w, w * 2, 4, 2, 1), nn.LeakyReLU(leak),
            nn.Conv2d(w * 2, w * 4, 4, 2, 1), nn.LeakyReLU(leak),
            nn.Conv2d(w * 4, w * 8, 4, 2, 1), nn.LeakyReLU(leak),
            nn.Conv2d(w * 8, 1, 4, 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_fits("conv", x.shape[2:], "EBM")
        return self.f(x).flatten(1).mean(1)  # (B,): 1×1 at 32 px; averaged over positions otherwise


def _xavier(*convs: nn.Conv2d) -> None:
    for c in convs:
        nn.init.xavier_uniform_(c.weight)
        nn.init.zeros_(c.bias)


class _Block(nn.Module):
    """SNGAN discriminator residual block (pre-activation ReLU; ``first``: the optimised stem block)."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool = False) -> None:
        super().__init__()
        self.down, self.first = down, first
        self.c1, self.c2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        _xavier(self.c1, self.c2)
        self.sc = nn.Conv2d(cin, cout, 1, 1, 0) if (first or cin != cout or down) else None
        if self.sc is not None:
            _xavier(self.sc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c2(F.relu(self.c1(x if self.first else F.relu(x))))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.sc is None:
            return h + x
        if self.first:
            return h + self.sc(F.avg_pool2d(x, 2))
        s = self.sc(x)
        return h + (F.avg_pool2d(s, 2) if self.down else s)


class ResNetEnergy(nn.Module):
    """PureGen's ``EBMSNGAN32``: SNGAN-32 ResNet discriminator with mean pooling as the energy."""

    def __init__(self, width: int = 128, channels: int = 3) -> None:
        super().__init__()
        self.blocks = nn.Sequential(_Block(channels, width, down=True, first=True), _Block(width, width, down=True),
                                    _Block(width, width, down=False), _Block(width, width, down=False))
        self.head = nn.Linear(width, 1, bias=False)
        nn.init.xavier_uniform_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_fits("resnet", x.shape[2:], "EBM")
        return self.head(F.relu(self.blocks(x)).mean(dim=(2, 3))).squeeze(1)


ARCHS = {"conv": ConvEnergy, "resnet": ResNetEnergy}


def build_energy(preset: str | None = None, *, arch: str | None = None, width: int | None = None,
                 channels: int = 3) -> nn.Module:
    """A freshly initialised energy network, by preset or by (arch, width)."""
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown EBM preset {preset!r} (known: {', '.join(PRESETS)})")
        arch, width = PRESETS[preset]["arch"], PRESETS[preset]["width"]
    if arch not in ARCHS or not width or width < 1:
        raise ConfigError(f"EBM architecture {arch!r} width {width!r}: arch must be one of {', '.join(ARCHS)}")
    return ARCHS[arch](width=width, channels=channels)


def save_energy(net: nn.Module, out: Path, info: dict[str, Any]) -> None:
    """Weights as safetensors plus a JSON config (``info`` must name ``arch`` and ``width``)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({"kind": "ebm", **info}, indent=2, default=str))


def load_energy(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(energy network in eval mode with frozen weights, its config) from a model directory."""
    from safetensors.torch import load_file

    path = Path(path)
    check_intact(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file() or not (path / "model.safetensors").is_file():
        raise ConfigError(f"defense.model={path}: no EBM there (config.json / model.safetensors missing); "
                          f"train one with `eclipse-ray train-ebm`")
    info = json.loads(cfg_file.read_text())
    if info.get("kind") != "ebm":
        raise ConfigError(f"defense.model={path}: config.json does not describe an EBM (kind={info.get('kind')!r})")
    channels = int(info.get("image_shape", [32, 32, 3])[-1])
    net = build_energy(arch=info.get("arch"), width=info.get("width"), channels=channels)
    try:
        net.load_state_dict(load_file(path / "model.safetensors", device="cpu"))
    except RuntimeError as e:
        raise ConfigError(f"defense.model={path}: weights do not match {info.get('arch')}/{info.get('width')}: "
                          f"{str(e).splitlines()[0]}") from None
    net = net.to(device).eval()
    net.requires_grad_(False)
    return net, info
