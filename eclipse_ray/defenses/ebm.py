"""``puregen-ebm``: purify with Langevin dynamics on an energy-based model (Bhat et al., NeurIPS 2024).

Each training image, mapped to [-1, 1], takes ``steps`` = 150 Langevin steps
x ← x − (η²/2)·∇E(x)/τ + η·n with η = 1.25e-2, τ = 1e-4 and no initial noise
(PureGen §3 and their ``ebm_purify``), and is mapped back to uint8. Each step is
one forward and one backward pass of the energy network.

``defense.model`` is an EBM directory (``eclipse-ray train-ebm``) or ``auto``:
train one by contrastive divergence on the defender's clean reference set (the
same 4 % stratified draw of the training split the diffusion defenses use),
cached under ``cache_root()/models/<hash>`` and trained once per (clean set,
recipe) even by concurrent trials. Deviation: PureGen's EBM is trained on a
separate large dataset (CINIC-10's ImageNet part); see :mod:`eclipse_ray.ebm.train`.

Result columns added once the model is known: ``defense.model_calls`` (= steps),
``defense.langevin_sigma`` (η/2·√steps, the std in pixel units that the injected
noise alone would reach without the energy's drift), ``defense.ebm_arch`` and
``defense.ebm_width``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from eclipse_ray.config import ConfigError, nested, setting
from eclipse_ray.data.cache import cached_model
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.defenses.base import DefenseConfig, ImagePurifier, fixed_shape
from eclipse_ray.ebm.net import PRESETS, check_fits
from eclipse_ray.ebm.train import EBMTrainConfig, train_ebm
from eclipse_ray.storage import is_uri, local_dir


@dataclass(frozen=True)
class PureGenEBM(DefenseConfig):
    name: ClassVar[str] = "puregen-ebm"
    aliases: ClassVar[dict[str, str]] = {f"train_{k}": f"train.{k}"  # the names before train was nested
                                         for k in ("preset", "iterations", "batch_size", "mcmc_steps", "clean_fraction")}
    summary: ClassVar[str] = "Langevin dynamics on an EBM: 150 steps, η = 1.25e-2, τ = 1e-4 (PureGen)"
    row_wise: ClassVar[bool] = True  # fixed_shape energy calls, per-sample Langevin noise

    model: str = setting("auto", "EBM directory, or auto: train one on the clean reference set (cached)")
    steps: int = setting(150, "Langevin steps (PureGen: 150)", ge=0)
    eta: float = setting(1.25e-2, "Langevin step size η on [-1,1] (PureGen: 1.25e-2)", ge=0.0)
    tau: float = setting(1e-4, "Langevin temperature τ (PureGen: 1e-4)", gt=0.0)
    batch_size: int = setting(64, "images per Langevin batch (part of the arithmetic: every call has exactly this many rows)", ge=1)
    device: str = setting("auto", "auto, cpu or cuda[:N]")
    train: EBMTrainConfig = nested(EBMTrainConfig, "auto model: how the EBM is trained (contrastive divergence)")

    # --- the model --------------------------------------------------------------------------
    def model_path(self, train: ImageSet, clean: ImageSet | None, progress: bool = True) -> str | Path:
        """The EBM directory (a location: local path or URI); for ``auto`` trained (once, cached) on the clean reference set."""
        if self.model != "auto":
            return self.model if is_uri(self.model) else Path(self.model)
        return cached_model(b"ebm|", self.train, clean if clean is not None else train, train_ebm, progress)

    # --- purification -----------------------------------------------------------------------
    def image_purifier(self, model_dir: str | Path | None, seed: int) -> ImagePurifier:
        """Load the EBM once; f(images uint8 NHWC, index) -> purified images."""
        from eclipse_ray.ebm.langevin import purify_images
        from eclipse_ray.ebm.net import load_energy
        from eclipse_ray.tensors import pick_device

        device = pick_device(self.device)
        net, _ = load_energy(local_dir(model_dir, "config.json"), device)

        def run(images: np.ndarray, index: np.ndarray) -> np.ndarray:
            return purify_images(net, images, index, seed, self.steps, self.eta, self.tau, device)

        return fixed_shape(run, self.batch_size, device)

    def check_model(self, model_dir: str | Path, image_shape: tuple[int, ...]) -> None:
        """Refuse an EBM that was not made for images of ``image_shape``: a net that cannot take them, or one
        trained on another size (reads its ``config.json`` only)."""
        from eclipse_ray import storage

        loc = storage.join(model_dir, "config.json")
        if not storage.is_file(loc):
            raise ConfigError(f"defense.model={model_dir}: no EBM there (config.json missing); "
                              f"train one with `eclipse-ray train-ebm`")
        try:
            info = json.loads(storage.read_bytes(loc).decode())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"defense.model={model_dir}: config.json is not valid JSON") from None
        if not isinstance(info, dict) or info.get("kind") != "ebm":
            raise ConfigError(f"defense.model={model_dir}: config.json does not describe an EBM")
        h, w = int(image_shape[0]), int(image_shape[1])
        trained = info.get("image_shape")
        if isinstance(trained, list) and len(trained) >= 2 and (trained[0], trained[1]) != (h, w):
            raise ConfigError(f"defense.model={model_dir}: the EBM was trained on {trained[0]}x{trained[1]} "
                              f"images, these are {h}x{w}")
        check_fits(str(info.get("arch")), image_shape, f"defense.model={model_dir}")

    def model_resolved(self, model_dir: str | Path) -> dict[str, Any]:
        """Result columns filled in once the model is known."""
        info = json.loads((local_dir(model_dir, "config.json") / "config.json").read_text())
        return {"defense.model_calls": self.steps, "defense.langevin_sigma": self.eta / 2 * math.sqrt(self.steps),
                "defense.ebm_arch": info.get("arch"), "defense.ebm_width": info.get("width")}

    def check_images(self, image_shape: tuple[int, ...]) -> None:
        if self.model == "auto":  # before the clean set is drawn and the EBM trained
            check_fits(PRESETS[self.train.preset]["arch"], image_shape, f"defense.train.preset={self.train.preset}")


__all__ = ["PureGenEBM"]
