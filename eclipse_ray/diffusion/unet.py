"""UNet presets on diffusers' ``UNet2DModel`` and loading/saving diffusion models.

Presets (ε-prediction, 3 input and output channels):

* ``tiny``  — 1.1 M parameters, 32/64/64 channels, attention at 16 px: CPU tests.
* ``small`` — 6.5 M parameters, 64/128/128 channels, 2 res-blocks: CPU benchmarks.
* ``paper`` — 52.5 M parameters, ECLIPSE's improved-diffusion shape: 128 channels,
  multipliers (1,2,2,2), 3 res-blocks, attention at 16 and 8 px with 4 heads,
  scale-shift norm. (ECLIPSE also learns the variance; we use the fixed
  posterior variance, so the output has 3 channels, not 6.)

A model directory has diffusers' layout — ``config.json`` +
``diffusion_pytorch_model.safetensors`` for the UNet (at the top or in
``unet/``) and ``scheduler_config.json`` (top or ``scheduler/``) — so a public
checkpoint such as google/ddpm-cifar10-32 copied into a local folder loads the
same way as our own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eclipse_ray.checkpoint import check_intact
from eclipse_ray.config import ConfigError
from eclipse_ray.diffusion.schedule import Schedule

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(block_out_channels=(32, 64, 64), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                 attention_head_dim=32, norm_num_groups=16),
    "small": dict(block_out_channels=(64, 128, 128), layers_per_block=2,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                  attention_head_dim=32, norm_num_groups=32),
    "paper": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=3,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                  attention_head_dim=64, norm_num_groups=32, resnet_time_scale_shift="scale_shift"),
}


def downsampling(n_down_blocks: int) -> int:
    """How much a ``UNet2DModel`` with ``n_down_blocks`` down blocks shrinks an image: every block but the last
    halves it, so each image side must be a multiple of this for the up path to meet the skips."""
    return 2 ** max(int(n_down_blocks) - 1, 0)


def _sides(size: Any) -> tuple[int, int]:
    """(height, width) from an int side, an (h, w) pair or an (h, w, c) image shape."""
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1] if len(size) > 1 else size[0])
    return int(size), int(size)


def check_fits(size: Any, n_down_blocks: int, what: str) -> None:
    """A one-line :class:`ConfigError` unless images of ``size`` pass a UNet with ``n_down_blocks`` down blocks."""
    h, w = _sides(size)
    f = downsampling(n_down_blocks)
    if h < f or w < f or h % f or w % f:
        raise ConfigError(f"{what}: {h}x{w} images do not fit this UNet; it halves them {n_down_blocks - 1} times, "
                          f"so each side must be a multiple of {f}")


def build_unet(preset: str, image_size: int | tuple[int, int] = 32):
    """A freshly initialised ``UNet2DModel`` of the named preset for images of ``image_size`` (a side or (h, w))."""
    from diffusers import UNet2DModel

    if preset not in PRESETS:
        raise ConfigError(f"unknown UNet preset {preset!r} (known: {', '.join(PRESETS)})")
    check_fits(image_size, len(PRESETS[preset]["down_block_types"]), f"UNet preset {preset}")
    kw = dict(PRESETS[preset])
    kw["up_block_types"] = tuple(t.replace("Down", "Up") for t in reversed(kw["down_block_types"]))
    if isinstance(image_size, (tuple, list)) and image_size[0] == image_size[1]:
        image_size = int(image_size[0])  # square images: the int diffusers writes (same config as before)
    return UNet2DModel(sample_size=image_size, in_channels=3, out_channels=3, **kw)


@dataclass
class DiffusionModel:
    """A UNet, its noise schedule and what it was trained on (``info``)."""

    unet: torch.nn.Module
    schedule: Schedule
    info: dict[str, Any]

    @property
    def t_max(self) -> int:
        """Largest t the model was trained on (PureGen's limited forward range), else T."""
        return int(self.info.get("t_max") or self.schedule.num_steps)


def save_model(unet, scheduler, out: Path, info: dict[str, Any]) -> None:
    """diffusers layout: UNet (safetensors + config) and scheduler config at the top, plus ``eclipse_ray.json``."""
    unet.save_pretrained(out, safe_serialization=True)
    scheduler.save_pretrained(out)
    (out / "eclipse_ray.json").write_text(json.dumps(info, indent=2))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a model directory (ours or a diffusers checkpoint such as google/ddpm-cifar10-32)."""
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path)
    check_intact(path)
    unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
    sched_dir = path / "scheduler" if (path / "scheduler" / "scheduler_config.json").is_file() else path
    if not (unet_dir / "config.json").is_file():
        raise ConfigError(f"defense.model={path}: no diffusion model there (config.json missing); "
                          f"train one with `eclipse-ray train-diffusion`")
    if not (sched_dir / "scheduler_config.json").is_file():
        raise ConfigError(f"defense.model={path}: scheduler_config.json missing")
    unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, low_cpu_mem_usage=False).to(device).eval()
    sched = DDPMScheduler.from_pretrained(sched_dir)
    if sched.config.prediction_type != "epsilon":
        raise ConfigError(f"{path}: prediction_type {sched.config.prediction_type!r} (only epsilon is supported)")
    meta_file = path / "eclipse_ray.json"
    info = json.loads(meta_file.read_text()) if meta_file.is_file() else {"source": str(path)}
    return DiffusionModel(unet, Schedule.from_scheduler(sched), info)


def unet_config(path: str | Path, key: str = "defense.model") -> dict[str, Any]:
    """The UNet's ``config.json`` of a model directory (local or URI; ours or diffusers', top or ``unet/``),
    read without loading any weights."""
    from eclipse_ray import storage

    for loc in (storage.join(path, "unet", "config.json"), storage.join(path, "config.json")):
        if storage.is_file(loc):
            try:
                doc = json.loads(storage.read_bytes(loc).decode())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ConfigError(f"{key}={path}: {loc} is not valid JSON") from None
            if not isinstance(doc, dict):
                raise ConfigError(f"{key}={path}: {loc} is not a JSON object")
            return doc
    raise ConfigError(f"{key}={path}: no diffusion model there (config.json missing); "
                      f"train one with `eclipse-ray train-diffusion`")


def check_model_fits(config: dict[str, Any], image_shape: Any, what: str) -> None:
    """A one-line :class:`ConfigError` unless a UNet of ``config`` (its ``sample_size``, its down blocks)
    was made for images of ``image_shape``: the size it was trained at, and a size its down path can halve."""
    h, w = _sides(image_shape)
    trained = config.get("sample_size")  # an int is compared with the height: our trainer records only that
    if isinstance(trained, (int, list, tuple)) and not isinstance(trained, bool):
        th, tw = _sides(trained)
        if th != h or (isinstance(trained, (list, tuple)) and tw != w):
            raise ConfigError(f"{what}: the model was trained on {th}x{tw} images, these are {h}x{w}")
    blocks = config.get("down_block_types")
    if isinstance(blocks, (list, tuple)):
        check_fits((h, w), len(blocks), what)
