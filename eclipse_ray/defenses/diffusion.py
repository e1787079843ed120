"""Diffusion purifiers: ``eclipse``, ``puregen-ddpm`` and ``denoise``.

All three noise every training image to t* and map it back with a DDPM:

* ``eclipse`` (Wang et al. 2024) — a DDPM trained on the defender's sparse clean
  set (4 %, duplicated ×4; cosine T = 4,000), the full reverse chain from
  σ = 0.025 (t* = 100 on that schedule), then compensation (random grayscale
  p = 0.4 + Gaussian σ = 0.05, once or per epoch).
* ``puregen-ddpm`` (Bhat et al. 2024) — a DDPM trained only on the first 250
  of 1,000 linear steps; T_p = 100 reverse steps, optionally repeated.
* ``denoise`` (Hong et al. 2024) — one-shot x0 prediction at σ.

The noise level is ``defense.sigma`` (pixel units) or ``defense.t_star`` (steps
of the model's own schedule), never both; the results row records both.
``defense.model`` is a model directory (ours or a diffusers checkpoint), or
``auto``: train one on the clean reference set with this defense's recipe
(cached by content hash, so every trial on the same data reuses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from eclipse_ray.config import ConfigError, nested, setting
from eclipse_ray.data.cache import cached_model
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.defenses.base import DefenseConfig, ImagePurifier, fixed_shape
from eclipse_ray.defenses.compensation import (
    compensate_uint8,
    compensation_settings,
    compensation_transform,
)
from eclipse_ray.diffusion.samplers import NOISE_RNGS, SAMPLERS, SamplerPlan, purify_batch
from eclipse_ray.diffusion.train import DiffusionTrainConfig, recipe_config, train_diffusion
from eclipse_ray.diffusion.unet import (
    PRESETS,
    DiffusionModel,
    check_fits,
    check_model_fits,
    load_model,
    unet_config,
)
from eclipse_ray.storage import is_uri, local_dir
from eclipse_ray.tensors import pick_device
from eclipse_ray.victim.train import BatchTransform


COMPILE_MODES = ("default", "reduce-overhead")


def compiled(unet: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``torch.compile`` in Inductor's deterministic mode: no kernel is chosen by timing it where that changes
    the numerics, so every process computes the same bytes. CUDA graphs (reduce-overhead) need the one
    static shape that :func:`fixed_shape` gives every call."""
    from torch._inductor import config, list_mode_options

    options = {**list_mode_options(mode), **({"deterministic": True} if hasattr(config, "deterministic") else {})}
    return torch.compile(unet, dynamic=mode == "default", options=options)


@dataclass(frozen=True)
class DiffusionDefense(DefenseConfig):
    """Shared settings and machinery of the diffusion purifiers."""

    row_wise: ClassVar[bool] = True  # fixed_shape model calls, per-sample noise and compensation
    default_sigma: ClassVar[float | None] = None
    default_t_star: ClassVar[int | None] = None
    aliases: ClassVar[dict[str, str]] = {f"train_{k}": f"train.{k}"  # the names before train was nested
                                         for k in ("preset", "iterations", "batch_size", "clean_fraction")}

    model: str = setting("auto", "model directory, or auto: train one on the clean reference set (cached)")
    sigma: float | None = setting(None, "noise σ in pixel units [0,1] (none: defense default)", ge=0.0, le=1.0)
    t_star: int | None = setting(None, "noise as forward steps of the model's schedule (instead of sigma)", ge=0)
    sampler: str = setting("ddpm", "reverse sampler", choices=SAMPLERS)
    steps: int = setting(10, "model calls for the ddim sampler", ge=1)
    repeats: int = setting(1, "times the noise-and-denoise chain is applied", ge=1)
    batch_size: int = setting(64, "images per model call (part of the arithmetic: every call has exactly this many rows)", ge=1)
    precision: str = setting("auto", "auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16", choices=("auto", "fp32", "bf16"))
    compile: bool = setting(False, "torch.compile the UNet")
    compile_mode: str = setting("default", "torch.compile mode with defense.compile: reduce-overhead replays CUDA "
                                "graphs (every model call has one fixed shape); no max-autotune: kernels chosen by "
                                "timing would make the bytes depend on the process", choices=COMPILE_MODES, added=3)
    rng: str = setting("generator", "the sampler's noise, a function of (seed, sample index, repeat) either way: "
                       "generator (a CPU generator per sample, copied to the device) or philox (Philox4x32-10 "
                       "counters drawn on the model's device; other values than generator's)",
                       choices=NOISE_RNGS, added=3)
    device: str = setting("auto", "auto, cpu or cuda[:N]")
    train: DiffusionTrainConfig = nested(lambda: recipe_config("eclipse"),
                                         "auto model: how it is trained (ECLIPSE's recipe)")

    def validate(self) -> None:
        if self.sigma is not None and self.t_star is not None:
            raise ConfigError("give defense.sigma or defense.t_star, not both")
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"defense.compile_mode={self.compile_mode} needs defense.compile=true")

    # --- the model --------------------------------------------------------------------------
    def model_path(self, train: ImageSet, clean: ImageSet | None, progress: bool = True) -> str | Path:
        """The model directory (a location: local path or URI); for ``auto`` trained (once, cached) on the clean reference set."""
        if self.model != "auto":
            return self.model if is_uri(self.model) else Path(self.model)
        return cached_model(b"", self.train, clean if clean is not None else train, train_diffusion, progress)

    # --- noise level ------------------------------------------------------------------------
    def plan(self, model: DiffusionModel) -> SamplerPlan:
        sched = model.schedule
        if self.t_star is not None:
            t = self.t_star
            sched.sigma(t)  # range check
        elif self.sigma is not None:
            t = sched.t_for_sigma(self.sigma)
        elif self.default_sigma is not None:
            t = sched.t_for_sigma(self.default_sigma)
        else:
            t = int(self.default_t_star or 0)
        if t > model.t_max:
            raise ConfigError(f"defense t*={t} lies beyond the model's trained range (t ≤ {model.t_max})")
        return SamplerPlan(self.sampler, t, self.steps, self.repeats)

    def resolved(self, model: DiffusionModel) -> dict[str, Any]:
        """Result columns filled in once the model is known (both noise units, model calls)."""
        p = self.plan(model)
        return {"defense.t_star": p.t_star, "defense.sigma": model.schedule.sigma(p.t_star),
                "defense.schedule": model.schedule.kind, "defense.schedule_steps": model.schedule.num_steps,
                "defense.model_calls": p.model_calls()}

    # --- purification -----------------------------------------------------------------------
    def image_purifier(self, model_dir: str | Path | None, seed: int) -> ImagePurifier:
        """Load the model once; f(images uint8 NHWC, index) -> purified images."""
        device = pick_device(self.device)
        model = load_model(local_dir(model_dir, "config.json"), device)
        plan = self.plan(model)
        bf16 = self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda")
        channels_last = device.type == "cuda"
        unet = model.unet.to(memory_format=torch.channels_last) if channels_last else model.unet
        if self.compile:
            unet = compiled(unet, self.compile_mode)
        coeffs = model.schedule.coefficients(device)

        def run(images: np.ndarray, index: np.ndarray) -> np.ndarray:
            out = purify_batch(unet, coeffs, images, index, plan, seed, bf16=bf16, channels_last=channels_last,
                               rng=self.rng)
            return self.finish_batch(out, index, seed)

        return fixed_shape(run, self.batch_size, device, parallel=not self.compile)

    def check_images(self, image_shape: tuple[int, ...]) -> None:
        if self.model == "auto":  # before the clean set is drawn and the model trained
            check_fits(image_shape, len(PRESETS[self.train.preset]["down_block_types"]),
                       f"defense.train.preset={self.train.preset}")

    def check_model(self, model_dir: str | Path, image_shape: tuple[int, ...]) -> None:
        """Refuse a model that was not made for images of ``image_shape`` (reads its config only)."""
        check_model_fits(unet_config(model_dir), image_shape, f"defense.model={model_dir}")

    def model_resolved(self, model_dir: str | Path) -> dict[str, Any]:
        return self.resolved(load_model(local_dir(model_dir, "config.json")))

    def finish_batch(self, images: np.ndarray, index: np.ndarray, seed: int) -> np.ndarray:
        """Per-batch post-processing after the sampler (ECLIPSE: once-off compensation)."""
        return images


_GRAY_P, _COMP_SIGMA, _MODE = compensation_settings()


@dataclass(frozen=True)
class Eclipse(DiffusionDefense):
    name: ClassVar[str] = "eclipse"
    summary: ClassVar[str] = "sparse-clean-set DDPM purification (full chain from σ≈6.4/255) + compensation"
    default_sigma: ClassVar[float | None] = 0.0249  # = σ(t*=100) on cosine T=4000 (6.37/255), ECLIPSE
    gray_p: float = _GRAY_P
    noise_sigma: float = _COMP_SIGMA
    mode: str = _MODE

    def finish_batch(self, images: np.ndarray, index: np.ndarray, seed: int) -> np.ndarray:
        if self.mode != "once":
            return images
        return compensate_uint8(images, index, self.gray_p, self.noise_sigma, seed)

    def train_transform(self) -> BatchTransform | None:
        return compensation_transform(self.gray_p, self.noise_sigma, self.mode)


@dataclass(frozen=True)
class PureGenDDPM(DiffusionDefense):
    name: ClassVar[str] = "puregen-ddpm"
    summary: ClassVar[str] = "DDPM trained on t < 250 of 1,000 linear steps; T_p = 100 reverse steps"
    default_t_star: ClassVar[int | None] = 100
    train: DiffusionTrainConfig = nested(lambda: recipe_config("puregen"),
                                         "auto model: how it is trained (PureGen's recipe: t < 250 of 1,000 linear)")


@dataclass(frozen=True)
class Denoise(DiffusionDefense):
    name: ClassVar[str] = "denoise"
    summary: ClassVar[str] = "one-shot diffusion denoising at σ (Hong et al.)"
    default_sigma: ClassVar[float | None] = 0.1
    sampler: str = setting("oneshot", "reverse sampler", choices=SAMPLERS)


__all__ = ["DiffusionDefense", "Eclipse", "PureGenDDPM", "Denoise"]
