"""Train a DDPM on the defender's sparse clean reference set (ECLIPSE §3; PureGen's limited range).

ECLIPSE: 4 % of the training data, held clean by the defender, enlarged by plain
duplication (M = 4 copies; augmentation hurts, Table 5), ε-prediction, cosine
schedule with T = 4,000, EMA 0.9999. PureGen-DDPM: linear 1,000-step schedule
trained only on t < 250 (``t_max``), AdamW with cosine lr and 500 warm-up steps.

The clean indices are drawn (stratified) from the *training* split, so they are
disjoint from the test set by construction, and saved beside the model. The run
checkpoints every ``checkpoint_every`` iterations (safetensors + a JSON state)
and resumes from there; the data order is a function of (seed, iteration), so
a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse_ray.checkpoint import claim_out, load_checkpoint, publish_model, save_checkpoint
from eclipse_ray.config import Config, ConfigError, flatten, setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.diffusion.unet import PRESETS, build_unet, save_model


@dataclass(frozen=True)
class DiffusionTrainConfig(Config):
    section: ClassVar[str] = "train"
    preset: str = setting("tiny", "UNet size preset", choices=tuple(PRESETS))
    schedule: str = setting("cosine", "noise schedule (ECLIPSE: cosine; PureGen: linear)", choices=("cosine", "linear"))
    num_steps: int = setting(4000, "schedule length T (ECLIPSE 4000; PureGen 1000)", ge=1)
    t_max: int | None = setting(None, "train only on t ≤ t_max (PureGen: 250); none: all of T", ge=1)
    clean_fraction: float = setting(0.04, "share of the training set the defender holds clean", gt=0.0, le=1.0)
    duplicates: int = setting(4, "copies of the clean set (ECLIPSE's M)", ge=1)
    iterations: int = setting(2000, "optimizer steps (ECLIPSE: 250,000 on GPU)", ge=1)
    batch_size: int = setting(64, "batch size", ge=1)
    lr: float = setting(1e-4, "AdamW learning rate", gt=0.0)
    warmup: int = setting(0, "linear lr warm-up steps (PureGen: 500)", ge=0)
    lr_schedule: str = setting("constant", "lr after warm-up", choices=("constant", "cosine"))
    ema: float = setting(0.9999, "EMA decay (warmed up as min(decay, (1+n)/(10+n)))", ge=0.0, lt=1.0)
    flip: bool = setting(False, "random horizontal flips (ECLIPSE: none)")
    checkpoint_every: int = setting(500, "iterations between resumable checkpoints", ge=1)
    seed: int = setting(0, "seed of the clean-set draw, init and data order", ge=0)
    device: str = setting("auto", "auto, cpu or cuda[:N]")

    def validate(self) -> None:
        if self.t_max is not None and self.t_max > self.num_steps:
            raise ConfigError(f"train.t_max={self.t_max}: beyond the schedule's T={self.num_steps}")


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, n: int) -> None:
    d = min(decay, (1 + n) / (10 + n))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - d)


def _lr(cfg: DiffusionTrainConfig, it: int) -> float:
    if cfg.warmup and it < cfg.warmup:
        return cfg.lr * (it + 1) / cfg.warmup
    if cfg.lr_schedule == "cosine":
        frac = (it - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return cfg.lr


def train_diffusion(cfg: DiffusionTrainConfig, clean: ImageSet, out: str | Path, progress: bool = True,
                    extra_info: dict[str, Any] | None = None) -> Path:
    """Train on ``clean`` (the clean reference images) and save to ``out``; resumes from ``out/checkpoint``."""
    from diffusers import DDPMScheduler

    from eclipse_ray.diffusion.schedule import SCHEDULES
    from eclipse_ray.tensors import pick_device

    out = Path(out)
    if claim_out(out, cfg, "eclipse_ray.json"):
        return out  # trained already (a rerun after the end)
    device = pick_device(cfg.device)
    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_steps, beta_schedule=SCHEDULES[cfg.schedule])
    ab = scheduler.alphas_cumprod.to(device, torch.float32)
    t_hi = cfg.t_max or cfg.num_steps
    data = torch.from_numpy(np.tile(clean.images, (cfg.duplicates, 1, 1, 1))).permute(0, 3, 1, 2)
    data = data.float().div(127.5).sub(1).to(device)

    torch.manual_seed(cfg.seed)
    model = build_unet(cfg.preset, clean.image_shape[:2]).to(device)
    ema = build_unet(cfg.preset, clean.image_shape[:2]).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    ckpt = out / "checkpoint"
    tensors, start, losses = load_checkpoint(ckpt, cfg, ("model", "ema"), opt, device)
    if tensors:  # resuming
        model.load_state_dict(tensors["model"])
        ema.load_state_dict(tensors["ema"])

    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.iterations), desc=f"ddpm {cfg.preset}", disable=not progress,
               initial=start, total=cfg.iterations)
    model.train()
    for it in bar:
        gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + it) % 2**64)  # as torch wraps -1; any seed fits
        rows = torch.randint(0, len(data), (cfg.batch_size,), generator=gen).to(device)
        x0 = data[rows]
        if cfg.flip:
            flip = (torch.rand(len(x0), generator=gen) < 0.5).to(device)[:, None, None, None]
            x0 = torch.where(flip, x0.flip(3), x0)
        t = torch.randint(0, t_hi, (len(x0),), generator=gen).to(device)  # model timestep = forward step - 1
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = ab[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(model(xt, t, return_dict=False)[0], noise)
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, it)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _ema_update(ema, model, cfg.ema, it)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
            save_checkpoint(ckpt, {"model": model.state_dict(), "ema": ema.state_dict()}, opt, cfg, it + 1, losses)

    info = {"trained_by": "eclipse_ray", "train": flatten(cfg), "t_max": t_hi, "clean_images": len(clean),
            "clean_index": clean.index.tolist(), "train_seconds": time.perf_counter() - t0,
            "final_loss": float(np.mean(losses[-100:])) if losses else None, **(extra_info or {})}

    def write(final: Path) -> None:
        save_model(ema, scheduler, final, info)
        (final / "clean_index.json").write_text(json.dumps(clean.index.tolist()))

    publish_model(out, write)
    return out


# Each paper's training recipe, on top of DiffusionTrainConfig's defaults; declared once: the defenses'
# ``auto`` models and ``eclipse-ray train-diffusion --recipe`` read it.
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "eclipse": dict(schedule="cosine", num_steps=4000, duplicates=4),  # cosine T = 4000, clean set ×4 (M)
    "puregen": dict(schedule="linear", num_steps=1000, t_max=250, warmup=500, lr_schedule="cosine", duplicates=4),
}


def recipe_config(recipe: str = "eclipse", overrides: Mapping[str, str] | None = None) -> DiffusionTrainConfig:
    """``recipe``'s training config with ``overrides`` (keys without the ``train.`` prefix) on top."""
    from eclipse_ray.config import with_overrides

    base = dataclasses.replace(DiffusionTrainConfig(), **TRAIN_RECIPES[recipe])
    return with_overrides(base, overrides or {}, prefix="train.")  # type: ignore[return-value]
