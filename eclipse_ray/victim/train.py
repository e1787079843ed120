"""Victim training: the model the poison targets and the defense must protect.

Three recipes, chosen by ``victim.arch`` (any field left ``none`` takes the
recipe's value; the resolved values are what the results store records):

* ``fast`` — airbench-style: Nesterov SGD, label smoothing 0.2, weight decay
  5e-4, linear warm-up then linear decay, flip + 2 px translate. For sweeps.
* ``airbench`` — airbench94's (Jordan, 2024): its net at width 64 (victim/nets.py),
  batch 1024, Nesterov 0.85, lr 1.5 on a 0.2→1→0.07 triangle, BatchNorm biases
  at 64× lr, everything decayed, lookahead to a weight EMA, mirror + translate
  test-time augmentation. Departures: random flips (airbench alternates them),
  whole epochs with the last partial batch (airbench: 9.9 epochs, full batches).
  Measured on the full JPEG CIFAR-10: see docs/results.md.
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

from eclipse_ray.config import Config, ConfigError, setting
from eclipse_ray.tensors import augment_batch, pick_device, to_tensor
from eclipse_ray.victim.nets import VICTIMS, FastNet, build_net
from eclipse_ray.victim.transfer import TRANSFERS, pretrained, transfer_net

# A per-batch training transform: float [0,1] NCHW batch and a generator in, batch out.
BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# A per-batch adversary (adversarial training): the model on [0,1] inputs, the batch, its labels and a
# generator in, the batch to train on out.
Adversary = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor, torch.Generator],
                     torch.Tensor]

RECIPES = {
    "fast": dict(width=32, lr=0.2, momentum=0.9, batch_size=128, weight_decay=5e-4, label_smoothing=0.2,
                 schedule="linear", nesterov=True),
    # airbench94.py's hyperparameters in mean-loss form: lr 11.5 per 1024 summed examples over the momentum's
    # kilostep scale 1024·(1 + 1/(1 − momentum)), times the batch: 1.5 at batch 1024 and momentum 0.85; its
    # per-step decay lr·wd = 2.0e-3 gives wd 0.0153/11.5; BatchNorm biases learn 64× faster, decayed at wd/64
    # (the same step decay).
    "airbench": dict(width=64, lr=lambda c: 11.5 * c.batch_size / (1024 * (1 + 1 / (1 - c.momentum))),
                     momentum=0.85, batch_size=1024, weight_decay=0.0153 / 11.5, label_smoothing=0.2,
                     schedule="triangle", nesterov=True, bias_lr_scale=64.0, bias_decay=True, lookahead=True, tta=2,
                     whiten_bias_epochs=3),
    "resnet18": dict(width=32, lr=0.1, momentum=0.9, batch_size=128, weight_decay=0.0, label_smoothing=0.0,
                     schedule="constant", nesterov=False),
}


@dataclass(frozen=True)
class VictimConfig(Config):
    section: ClassVar[str] = "victim"
    arch: str = setting("fast", "victim network", choices=lambda: tuple(VICTIMS))
    epochs: int = setting(10, "training epochs", ge=1)
    batch_size: int | None = setting(None, "batch size (none: recipe's, airbench 1024, others 128)", ge=1)
    lr: float | None = setting(None, "peak learning rate (none: recipe's, fast 0.2, resnet18 0.1, airbench "
                               "1.5 × batch/1024 at momentum 0.85)", gt=0.0)
    momentum: float | None = setting(None, "SGD momentum (none: recipe's, airbench 0.85, others 0.9)",
                                     ge=0.0, lt=1.0)
    weight_decay: float | None = setting(None, "weight decay (none: recipe's)", ge=0.0)
    label_smoothing: float | None = setting(None, "label smoothing (none: recipe's)", ge=0.0, lt=1.0)
    schedule: str | None = setting(None, "lr schedule (none: recipe's); triangle: airbench's 0.2× → 1× at 23 % "
                                   "→ 0.07×", choices=("linear", "constant", "cosine", "triangle"))
    nesterov: bool | None = setting(None, "Nesterov momentum (none: recipe's)")
    augment: bool = setting(True, "random flip + translate augmentation")
    translate: int = setting(2, "max translation in px when augmenting (0: flip only)", ge=0)
    width: int | None = setting(None, "base width of the fast and airbench nets (none: recipe's, fast 32, "
                                "airbench 64 = airbench94's 64/256/256)", ge=4)
    whiten: bool = setting(True, "fast net: initialise the frozen 2x2 stem by patch whitening (else random, trained)")
    precision: str = setting("fp32", "fp32, or bf16: forward passes under bfloat16 autocast (weights, loss and "
                             "optimiser stay fp32; ≈ 2× faster on CPUs with AMX and on GPUs)",
                             choices=("fp32", "bf16"), added=1)
    bias_lr_scale: float | None = setting(None, "learning-rate multiple of the BatchNorm parameters (none: "
                                          "recipe's, airbench 64, others 1)", gt=0.0, added=2)
    bias_decay: bool | None = setting(None, "decay 1-d parameters too, BatchNorm's at wd / bias_lr_scale "
                                      "(none: recipe's, airbench yes, others no)", added=2)
    lookahead: bool | None = setting(None, "airbench's lookahead: every 5 steps pull the weights to their EMA "
                                     "(decay 0.95⁵·progress³), end on the EMA (none: recipe's, airbench yes)",
                                     added=2)
    tta: int | None = setting(None, "test-time augmentation: 0 none, 1 mirror, 2 mirror + 1 px translations "
                              "(none: recipe's, airbench 2, others 0)", ge=0, le=2, added=2)
    whiten_bias_epochs: int | None = setting(None, "fast/airbench net: epochs the whitening stem's bias trains, "
                                             "then frozen (none: recipe's, airbench 3, others all)", ge=0,
                                             added=2)
    device: str = setting("auto", "auto (CUDA if present), cpu or cuda[:N]")
    transfer: str = setting("none", "none: every layer trained from scratch; linear: the features of a net "
                            "pre-trained on the clean training set kept (BatchNorm too), its last layer trained anew "
                            "(the transfer victim of Poison Frogs, Convex and Bullseye Polytope); finetune: every "
                            "layer trained on from that net, the last one anew", choices=TRANSFERS, added=4)
    pretrain_epochs: int = setting(10, "epochs of the clean pre-training of a transfer victim", ge=1, added=4)
    finetune_per_class: int | None = setting(None, "a transfer victim trains on this many unpoisoned rows per class "
                                             "(the first by index) plus every poisoned row (Convex/Bullseye "
                                             "Polytope: 50; none: every row)", ge=1, added=4)

    def validate(self) -> None:
        for key, default in (("finetune_per_class", None), ("pretrain_epochs", 10)):
            if self.transfer == "none" and getattr(self, key) != default:
                raise ConfigError(f"victim.{key}: only for a transfer victim (set victim.transfer)")

    def resolved(self) -> "VictimConfig":
        """This config with every ``none`` the arch's recipe gives replaced by the recipe's value (a value
        given as a function of the config is computed from the others)."""
        recipe = RECIPES.get(self.arch) or {**RECIPES["fast"], **getattr(VICTIMS[self.arch], "recipe", {})}
        fill = {k: v for k, v in recipe.items() if getattr(self, k) is None and not callable(v)}
        cfg = dataclasses.replace(self, **fill)
        late = {k: v(cfg) for k, v in recipe.items() if getattr(self, k) is None and callable(v)}
        return dataclasses.replace(cfg, **late)


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
    if cfg.schedule == "triangle":  # airbench94: 0.2 → 1 over the first 23 % of steps, then → 0.07
        warm = 0.23
        return cfg.lr * (0.2 + 0.8 * frac / warm if frac < warm else 1 - 0.93 * (frac - warm) / (1 - warm))
    warm = 0.2
    return cfg.lr * (frac / warm if frac < warm else (1 - frac) / (1 - warm))


class Lookahead:
    """airbench94's lookahead: an EMA of the whole state (weights and BatchNorm statistics) that the net is
    pulled back to every ``every`` steps, with a decay rising as 0.95^every · progress³ (none at the start,
    strong at the end); :meth:`finish` leaves the net on the EMA."""

    def __init__(self, model: nn.Module, total: int, every: int = 5) -> None:
        self.model, self.total, self.every = model, max(total, 1), every
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def _pull(self, decay: float) -> None:
        state = self.model.state_dict()
        for k, ema in self.ema.items():
            ema.lerp_(state[k], 1 - decay)
            state[k].copy_(ema)

    def step(self, step: int) -> None:
        """Call after optimiser step number ``step`` (1-based)."""
        if step % self.every == 0:
            self._pull(0.95 ** self.every * (step / self.total) ** 3)

    def finish(self) -> None:
        self._pull(1.0)


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, level: int) -> torch.Tensor:
    """airbench94's test-time augmentation: level 0 the plain logits; 1 the mean over the image and its
    mirror; 2 half that plus half the mirrored mean over the two 1 px diagonal (reflect-padded) shifts."""
    if level == 0:
        return model(x)
    mirror = lambda z: 0.5 * (model(z) + model(z.flip(-1)))  # noqa: E731
    if level == 1:
        return mirror(x)
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * (mirror(padded[..., :h, :w]) + mirror(padded[..., 2:, 2:]))
    return 0.5 * mirror(x) + 0.5 * shifted


@dataclass
class Victim:
    """A trained classifier and the input normalisation it was trained with."""

    model: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device
    bf16: bool = False  # evaluate under bfloat16 autocast, as it was trained
    tta: int = 0  # test-time augmentation level (:func:`tta_logits`)

    @torch.no_grad()
    def logits(self, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
        self.model.eval()
        out = []
        run = lambda z: _forward(self.model, z, self.device, self.bf16)  # noqa: E731
        for i in range(0, len(images), batch_size):
            x = to_tensor(images[i:i + batch_size], self.device)
            out.append(tta_logits(run, (x - self.mean) / self.std, self.tta).cpu())
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
                 on_epoch: Callable[[int, nn.Module], None] | None = None,
                 clean: tuple[np.ndarray, np.ndarray] | None = None) -> Victim:
    """Train a victim on uint8 NHWC ``images``; ``transform`` runs on every batch (e.g. compensation), then
    ``adversary`` replaces the batch by what it returns against the current model (in eval mode);
    ``on_epoch(epoch, model)`` is called after each epoch (checkpoint ensembles).

    ``whiten_tol``: see :meth:`FastNet.init_whitening` (``None`` for an attacker's surrogate).
    ``clean``: (images, labels) of the clean training set, which a transfer victim (``cfg.transfer``) is
    pre-trained on (:mod:`eclipse_ray.victim.transfer`).
    """
    cfg = cfg.resolved()
    device = pick_device(cfg.device)
    if cfg.transfer != "none" and clean is None:
        raise ValueError(f"victim.transfer={cfg.transfer}: the pre-training needs the clean training set (clean=)")
    pre = pretrained(cfg, *clean, num_classes, seed, train_victim, progress) if cfg.transfer != "none" else None
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all = to_tensor(images, device)
    y_all = torch.from_numpy(np.array(labels, np.int64)).to(device)
    if pre is not None:  # the pre-trained net's input normalisation and features
        mean, std = pre.mean, pre.std
        model = transfer_net(pre.model, cfg.transfer, seed)
    else:
        mean = x_all.mean((0, 2, 3), keepdim=True)
        std = x_all.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
        model = new_net(cfg, num_classes, (x_all - mean) / std, device, whiten_tol)
    bf16 = cfg.precision == "bf16"
    opt = torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    n = len(x_all)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step = 0
    lookahead = Lookahead(model, total) if cfg.lookahead else None
    bar = tqdm(range(cfg.epochs), desc=f"victim {cfg.arch}", disable=not progress, leave=False)
    for epoch in bar:
        model.train(cfg.transfer != "linear")  # a linear transfer keeps its features as pre-trained (BatchNorm too)
        if isinstance(model, FastNet) and cfg.whiten_bias_epochs is not None and cfg.transfer != "linear":
            model.whiten.bias.requires_grad_(epoch < cfg.whiten_bias_epochs)
            if epoch >= cfg.whiten_bias_epochs:
                model.whiten.bias.grad = None  # SGD leaves a parameter without a gradient as it is
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
                model.train(cfg.transfer != "linear")
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, cfg) * group["lr_scale"]
            out = _forward(model, (x - mean) / std, device, bf16)
            loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if lookahead is not None:
                lookahead.step(step)
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == y).sum().item()
        bar.set_postfix(loss=f"{loss_sum / n:.3f}", train_acc=f"{correct / n:.3f}")
        if on_epoch is not None:
            on_epoch(epoch, model)
    if lookahead is not None:
        lookahead.finish()
    return Victim(model, mean, std, device, bf16, cfg.tta or 0)


def param_groups(model: nn.Module, cfg: VictimConfig) -> list[dict]:
    """SGD parameter groups of a resolved ``cfg``: weights (ndim > 1) decayed at ``weight_decay``; BatchNorm
    parameters at ``bias_lr_scale`` × the lr; 1-d parameters decayed only with ``bias_decay``, BatchNorm's
    at ``weight_decay / bias_lr_scale`` so that every parameter's per-step decay lr·wd is the same."""
    scale = cfg.bias_lr_scale or 1.0
    bias_wd = cfg.weight_decay if cfg.bias_decay else 0.0
    norm = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if p.ndim > 1], weight_decay=cfg.weight_decay, lr_scale=1.0),
              dict(params=[p for p in params if p.ndim <= 1 and id(p) in norm], weight_decay=bias_wd / scale,
                   lr_scale=scale),
              dict(params=[p for p in params if p.ndim <= 1 and id(p) not in norm], weight_decay=bias_wd,
                   lr_scale=1.0)]
    return [g for g in groups if g["params"]]
