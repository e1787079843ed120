"""Victim training: the model the poison targets and the defense must protect.

Two recipes, chosen by ``victim.arch`` (any field left ``none`` takes the
recipe's value; the resolved values are what the results store records):

* ``fast`` — airbench-style: Nesterov SGD, label smoothing 0.2, weight decay
  5e-4, linear warm-up then linear decay, flip + 2 px translate. For sweeps.
* ``resnet18`` — ECLIPSE's recipe: SGD lr 0.1 constant, momentum 0.9, no weight
  decay, batch 128, crop + flip (use ``victim.epochs=80`` for the paper).

Data stay on the device as one tensor; augmentation randomness comes from a
seeded generator, so a run is deterministic for a given seed and device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse_ray.config import Config, setting
from eclipse_ray.tensors import augment_batch, pick_device, to_tensor
from eclipse_ray.victim.nets import VICTIMS, FastNet, build_net

# A per-batch training transform: float [0,1] NCHW batch and a generator in, batch out.
BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# A per-batch adversary (adversarial training): the model on [0,1] inputs, the batch, its labels and a
# generator in, the batch to train on out.
Adversary = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor, torch.Generator],
                     torch.Tensor]

RECIPES = {
    "fast": dict(lr=0.2, weight_decay=5e-4, label_smoothing=0.2, schedule="linear", nesterov=True),
    "resnet18": dict(lr=0.1, weight_decay=0.0, label_smoothing=0.0, schedule="constant", nesterov=False),
}


@dataclass(frozen=True)
class VictimConfig(Config):
    section: ClassVar[str] = "victim"
    arch: str = setting("fast", "victim network", choices=lambda: tuple(VICTIMS))
    epochs: int = setting(10, "training epochs", ge=1)
    batch_size: int = setting(128, "batch size", ge=1)
    lr: float | None = setting(None, "peak learning rate (none: recipe's, fast 0.2, resnet18 0.1)", gt=0.0)
    momentum: float = setting(0.9, "SGD momentum", ge=0.0, lt=1.0)
    weight_decay: float | None = setting(None, "weight decay (none: recipe's)", ge=0.0)
    label_smoothing: float | None = setting(None, "label smoothing (none: recipe's)", ge=0.0, lt=1.0)
    schedule: str | None = setting(None, "lr schedule (none: recipe's)", choices=("linear", "constant", "cosine"))
    nesterov: bool | None = setting(None, "Nesterov momentum (none: recipe's)")
    augment: bool = setting(True, "random flip + translate augmentation")
    translate: int = setting(2, "max translation in px when augmenting (0: flip only)", ge=0)
    width: int = setting(32, "base width of the fast net (64 = airbench94)", ge=4)
    whiten: bool = setting(True, "fast net: initialise the frozen 2x2 stem by patch whitening (else random, trained)")
    precision: str = setting("fp32", "fp32, or bf16: forward passes under bfloat16 autocast (weights, loss and "
                             "optimiser stay fp32; ≈ 2× faster on CPUs with AMX and on GPUs)",
                             choices=("fp32", "bf16"), added=1)
    device: str = setting("auto", "auto (CUDA if present), cpu or cuda[:N]")

    def resolved(self) -> "VictimConfig":
        """This config with every ``none`` replaced by the arch's recipe value."""
        recipe = RECIPES.get(self.arch) or {**RECIPES["fast"], **getattr(VICTIMS[self.arch], "recipe", {})}
        fill = {k: v for k, v in recipe.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill)


def _forward(model: nn.Module, x: torch.Tensor, device: torch.device, bf16: bool) -> torch.Tensor:
    """``model(x)`` as fp32 logits; under bfloat16 autocast where the victim trains in bf16."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return model(x).float()


def _lr_at(step: int, total: int, cfg: VictimConfig) -> float:
    frac = step / max(total, 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
    warm = 0.2
    return cfg.lr * (frac / warm if frac < warm else (1 - frac) / (1 - warm))


@dataclass
class Victim:
    """A trained classifier and the input normalisation it was trained with."""

    model: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device
    bf16: bool = False  # evaluate under bfloat16 autocast, as it was trained

    @torch.no_grad()
    def logits(self, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
        self.model.eval()
        out = []
        for i in range(0, len(images), batch_size):
            x = to_tensor(images[i:i + batch_size], self.device)
            out.append(_forward(self.model, (x - self.mean) / self.std, self.device, self.bf16).cpu())
        return torch.cat(out)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.logits(images).argmax(1).numpy()


def new_net(cfg: VictimConfig, num_classes: int, x_norm: torch.Tensor, device: torch.device,
            whiten_tol: float | None = 1e-6) -> nn.Module:
    """``cfg``'s untrained net on ``device``; a fast net's 2x2 stem frozen to whiten the patches of the
    normalised images ``x_norm`` (the first 5,000), or trained like every other layer (``whiten=False``)."""
    model = build_net(cfg.arch, num_classes, cfg.width).to(device)
    if isinstance(model, FastNet) and not cfg.whiten:
        model.whiten.weight.requires_grad_(True)
    elif isinstance(model, FastNet):
        model.init_whitening(x_norm[: min(len(x_norm), 5000)], rel_tol=whiten_tol)
    return model


def train_victim(cfg: VictimConfig, images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                 transform: BatchTransform | None = None, progress: bool = True,
                 whiten_tol: float | None = 1e-6, adversary: Adversary | None = None,
                 on_epoch: Callable[[int, nn.Module], None] | None = None) -> Victim:
    """Train a victim on uint8 NHWC ``images``; ``transform`` runs on every batch (e.g. compensation), then
    ``adversary`` replaces the batch by what it returns against the current model (in eval mode);
    ``on_epoch(epoch, model)`` is called after each epoch (checkpoint ensembles).

    ``whiten_tol``: see :meth:`FastNet.init_whitening` (``None`` for an attacker's surrogate).
    """
    cfg = cfg.resolved()
    device = pick_device(cfg.device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all = to_tensor(images, device)
    y_all = torch.from_numpy(np.array(labels, np.int64)).to(device)
    mean = x_all.mean((0, 2, 3), keepdim=True)
    std = x_all.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
    model = new_net(cfg, num_classes, (x_all - mean) / std, device, whiten_tol)
    bf16 = cfg.precision == "bf16"
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    n = len(x_all)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step = 0
    bar = tqdm(range(cfg.epochs), desc=f"victim {cfg.arch}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        loss_sum, correct = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            x, y = x_all[idx], y_all[idx]
            if cfg.augment:
                x = augment_batch(x, gen, pad=cfg.translate)
            if transform is not None:
                x = transform(x, gen)
            if adversary is not None:  # it attacks the net as it trains: under the same autocast
                model.eval()
                x = adversary(lambda z: _forward(model, (z - mean) / std, device, bf16), x, y, gen)
                model.train()
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, cfg)
            out = _forward(model, (x - mean) / std, device, bf16)
            loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == y).sum().item()
        bar.set_postfix(loss=f"{loss_sum / n:.3f}", train_acc=f"{correct / n:.3f}")
        if on_epoch is not None:
            on_epoch(epoch, model)
    return Victim(model, mean, std, device, bf16)
