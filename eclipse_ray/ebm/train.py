"""Train an EBM by contrastive divergence on the defender's clean reference set (PureGen-EBM).

PureGen (Bhat et al., NeurIPS 2024; their public ``train_EBM.py``) trains with
short-run MCMC from a persistent replay buffer, after Nijkamp et al. (2019):

* positives: data + N(0, 0.015²) ("data epsilon"), on [-1, 1];
* negatives: ``mcmc_steps`` = 100 Langevin steps (η = 1.25e-2, τ = 1e-4) from a
  random batch of the buffer, which starts as noisy data; the chains go back
  into the buffer, each replaced by fresh noisy data with probability 0.05;
* loss (E(pos).mean() − E(neg).mean()) / τ, Adam lr 1e-4, lr × 0.1 at epochs
  40, 75 and 100 of 120 (here: at those fractions of ``iterations``).

Deviations: PureGen trains on a large *held-out* dataset (CINIC-10's ImageNet
part, 120 epochs, batch 16 on each of 8 TPU cores, 10,000 buffer states); we
train on the defender's sparse clean set — drawn exactly as
:mod:`eclipse_ray.diffusion.train` draws it (:func:`clean_reference_rows`, 4 %
of the training split, duplicated ×M) — so every purifier in the study sees the
same clean data. The buffer holds at most as many states as the duplicated set.

Every random draw of iteration ``it`` comes from a generator seeded by
(seed, it), and the buffer is checkpointed with the weights, so a resumed run
makes the same draws as an uninterrupted one (weights equal up to float rounding:
oneDNN's convolutions need not round identically in a new process). Output: ``model.safetensors`` + ``config.json``
(see :mod:`eclipse_ray.ebm.net`) and ``clean_index.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from eclipse_ray.checkpoint import claim_out, load_checkpoint, publish_model, save_checkpoint
from eclipse_ray.config import Config, ConfigError, flatten, setting, with_overrides
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.ebm.langevin import langevin
from eclipse_ray.ebm.net import PRESETS, build_energy, save_energy


@dataclass(frozen=True)
class EBMTrainConfig(Config):
    section: ClassVar[str] = "ebm"
    preset: str = setting("small", "energy network preset (tiny/small: conv EBM; paper: PureGen's SNGAN ResNet)",
                          choices=tuple(PRESETS))
    clean_fraction: float = setting(0.04, "share of the training set the defender holds clean", gt=0.0, le=1.0)
    duplicates: int = setting(4, "copies of the clean set (as for the DDPM)", ge=1)
    iterations: int = setting(1000, "optimizer steps (PureGen: 120 epochs of CINIC-10 on a TPU)", ge=1)
    batch_size: int = setting(64, "positives and negatives per step (PureGen: 16 × 8 cores)", ge=1)
    lr: float = setting(1e-4, "Adam learning rate", gt=0.0)
    lr_milestones: tuple[float, ...] = setting((40 / 120, 75 / 120, 100 / 120),
                                               "fractions of the run where lr is multiplied by lr_decay")
    lr_decay: float = setting(0.1, "lr factor at each milestone", gt=0.0, le=1.0)
    mcmc_steps: int = setting(100, "Langevin steps per negative batch (PureGen: 100)", ge=1)
    eta: float = setting(1.25e-2, "Langevin step size η on [-1,1]", gt=0.0)
    tau: float = setting(1e-4, "Langevin temperature τ", gt=0.0)
    data_noise: float = setting(1.5e-2, "std of the noise on positives and on fresh buffer states ([-1,1])", ge=0.0)
    buffer_size: int = setting(10000, "persistent replay buffer states (capped at the duplicated clean set)", ge=1)
    reinit_prob: float = setting(0.05, "chance a state is replaced by fresh noisy data after each use", ge=0.0,
                                 le=1.0)
    checkpoint_every: int = setting(200, "iterations between resumable checkpoints", ge=1)
    seed: int = setting(0, "seed of the clean-set draw, init, data order and chains", ge=0)
    device: str = setting("auto", "auto, cpu or cuda[:N]")

    def validate(self) -> None:
        if any(not 0.0 <= m <= 1.0 for m in self.lr_milestones):
            raise ConfigError(f"ebm.lr_milestones={self.lr_milestones}: fractions must lie in [0, 1]")


def ebm_train_config_with(overrides: dict[str, str]) -> EBMTrainConfig:
    """An EBMTrainConfig from ``key=value`` strings (keys without the ``ebm.`` prefix)."""
    return with_overrides(EBMTrainConfig(), overrides, prefix="ebm.")  # type: ignore[return-value]


def learning_rate(cfg: EBMTrainConfig, it: int) -> float:
    """Step-decayed lr at iteration ``it`` (PureGen's MultiStepLR, milestones as run fractions)."""
    passed = sum(it >= round(m * cfg.iterations) for m in cfg.lr_milestones)
    return cfg.lr * cfg.lr_decay ** passed


def _generator(cfg: EBMTrainConfig, it: int) -> torch.Generator:
    return torch.Generator().manual_seed((cfg.seed * 1_000_003 + it) % 2**64)  # as torch wraps -1; any seed fits


def train_ebm(cfg: EBMTrainConfig, clean: ImageSet, out: str | Path, progress: bool = True,
              extra_info: dict[str, Any] | None = None) -> Path:
    """Train on ``clean`` (the clean reference images) and save to ``out``; resumes from ``out/checkpoint``."""

    from eclipse_ray.tensors import pick_device

    out = Path(out)
    if claim_out(out, cfg, "config.json"):
        return out  # trained already (a rerun after the end)
    if len(clean) == 0:
        raise ConfigError("train-ebm: the clean reference set is empty")
    device = pick_device(cfg.device)
    data = torch.from_numpy(np.tile(clean.images, (cfg.duplicates, 1, 1, 1))).permute(0, 3, 1, 2)
    # contiguous NCHW, as the checkpointed buffer comes back: a conv's arithmetic depends on the memory
    # layout of its input (measured: 1e-7 apart), and a resumed run must continue bit for bit
    data = data.float().div(127.5).sub(1).contiguous().to(device)

    torch.manual_seed(cfg.seed)
    net = build_energy(cfg.preset, channels=clean.image_shape[-1]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    init = _generator(cfg, -1)
    n_buf = min(cfg.buffer_size, len(data))
    rows = torch.randperm(len(data), generator=init)[:n_buf].to(device)
    buffer = data[rows] + cfg.data_noise * torch.randn((n_buf, *data.shape[1:]), generator=init).to(device)
    ckpt = out / "checkpoint"
    tensors, start, losses = load_checkpoint(ckpt, cfg, ("model", "buffer"), opt, device)
    if tensors:  # resuming
        net.load_state_dict(tensors["model"])
        buffer = tensors["buffer"]["buffer"].clone()

    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.iterations), desc=f"ebm {cfg.preset}", disable=not progress,
               initial=start, total=cfg.iterations)
    net.train()
    for it in bar:
        gen = _generator(cfg, it)
        rows = torch.randint(0, len(data), (cfg.batch_size,), generator=gen).to(device)
        pos = data[rows] + cfg.data_noise * torch.randn(data[rows].shape, generator=gen).to(device)
        picked = torch.randperm(n_buf, generator=gen)[:cfg.batch_size].to(device)
        neg = langevin(net, buffer[picked], cfg.mcmc_steps, cfg.eta, cfg.tau, gen)
        fresh = data[rows[:len(picked)]] + cfg.data_noise * torch.randn(neg.shape, generator=gen).to(device)
        reinit = (torch.rand(len(picked), generator=gen) < cfg.reinit_prob).to(device)[:, None, None, None]
        buffer[picked] = torch.where(reinit, fresh, neg)
        loss = (net(pos).mean() - net(neg).mean()) / cfg.tau
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg, it)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not np.isfinite(losses[-1]):
            raise RuntimeError(f"train-ebm: contrastive-divergence loss diverged at iteration {it} "
                               f"(lower ebm.lr or ebm.eta)")
        bar.set_postfix(cd=f"{np.mean(losses[-50:]):.3e}")
        if (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
            save_checkpoint(ckpt, {"model": net.state_dict(), "buffer": {"buffer": buffer}}, opt, cfg, it + 1, losses)

    arch = PRESETS[cfg.preset]
    info = {"arch": arch["arch"], "width": arch["width"], "image_shape": list(clean.image_shape),
            "trained_by": "eclipse_ray", "train": flatten(cfg), "clean_images": len(clean),
            "buffer_states": n_buf, "train_seconds": time.perf_counter() - t0,
            "final_cd_loss": float(np.mean(losses[-100:])) if losses else None, **(extra_info or {})}

    def write(final: Path) -> None:
        save_energy(net, final, info)
        (final / "clean_index.json").write_text(json.dumps(clean.index.tolist()))
        (final / "losses.json").write_text(json.dumps(losses))

    publish_model(out, write)
    return out
