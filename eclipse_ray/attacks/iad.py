"""IAD — the input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020), one of V&B's six backdoors.

The trigger is not one pattern but a *function of the image*: a generator G
makes a pattern G(x) and a mask network M a sparse mask m(x), and the
triggered image is  B(x) = x + (G(x) − x) ⊙ m(x).  Because every image gets
its own trigger, defenses that look for one shared pattern miss it.

Training (the authors' code, on [0,1] images here):

1. *Mask*: M alone for ``mask_epochs`` (25) epochs of Adam (1e-2, β = 0.5, 0.9)
   on  λ_norm·mean(relu(m(x) − density)) + λ_div·‖x − x'‖/‖m(x) − m(x')‖
   (density 0.032, λ_norm 100, λ_div 1; m = tanh(20·M(x) − 10)/2 + ½, a soft
   step), then frozen.
2. *Joint*: a classifier C (SGD 1e-2, momentum 0.9, wd 5e-4) and G (Adam 1e-2,
   β = 0.5, 0.9) for ``epochs`` (paper 600); in each batch a share ``p_attack``
   (10 %) becomes B(x) labelled as the target (*backdoor mode*), a share
   ``p_cross`` (10 %) gets *another* image's trigger, x + (G(x') − x) ⊙ m(x'),
   and keeps its label (*cross-trigger mode*: a trigger only works on the
   image it was made for), the rest stays clean; loss = CE + λ_div·‖x − x'‖/‖G(x) − G(x')‖.
   Both learning rates ×0.1 at epochs 100, 200, 300, 400 (C) and 200 … 500 (G) of the
   paper's 600 (mask: 10, 20 of 25). ``schedule``: ``scaled`` puts the decays at the same
   fractions of a shorter run (a 10-epoch run decays C after its first epoch); ``truncated``
   keeps the paper's epochs, so a shorter run is the paper run's first epochs.

Networks: the authors' encoder–decoder (3×3 conv–BN–ReLU blocks, two per level,
max-pool down, bilinear up; ``gen_width`` 32 doubling over 3 levels, tanh out)
for G and, with one output channel, for M.

Deviation (as for WaNet): IAD is a *training-controlled* attack — the
attacker trains the victim. Here, as for every attack in eclipse_ray, it is a
data-only poison: after the attacker's training, ``rate``·n training images
(10 % of the set, drawn from the non-target ones) get their own trigger and
the target label, and
``cross_ratio``·that many other images get a random partner's trigger with
their labels kept (all marked ``poisoned``); ``test_triggered`` holds the
non-target test images with their own triggers. The attacker's classifier is
the fast net (paper: PreAct-ResNet-18). CPU settings in benchmarks/model_poisons.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse_ray.attacks.backdoor import _Backdoor, setting_target
from eclipse_ray.attacks.base import choose_rows, mask_of, setting_rate, setting_seed
from eclipse_ray.attacks.surrogate import BatchStream, images_tensor, torch_generator
from eclipse_ray.config import ConfigError, setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset
from eclipse_ray.tensors import augment_batch, pick_device
from eclipse_ray.victim.nets import FastNet, build_net

EPSILON = 1e-7


def conv_block(c_in: int, c_out: int, relu: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, momentum=0.05)] + \
        ([nn.ReLU()] if relu else [])


class Generator(nn.Sequential):
    """The authors' encoder–decoder: ``levels`` of (2 conv blocks, max-pool), a middle block, ``levels`` of
    (bilinear ×2, 2 conv blocks); output tanh(·)/2 + ½ in [0, 1] with ``out_channels`` channels."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 32, levels: int = 3) -> None:
        layers: list[nn.Module] = []
        c_in, c = in_channels, width
        for level in range(levels):
            layers += conv_block(c_in, c) + conv_block(c, c) + [nn.MaxPool2d(2)]
            c_in, c = c, (c * 2 if level < levels - 1 else c)
        layers += conv_block(c_in, c_in)
        c = c_in
        for level in range(levels):
            nxt = out_channels if level == levels - 1 else c // 2
            layers += [nn.Upsample(scale_factor=2, mode="bilinear")] + conv_block(c, c) + \
                conv_block(c, nxt, relu=level < levels - 1)
            c = nxt
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x)) / (2 + EPSILON) + 0.5


def soft_threshold(m: torch.Tensor) -> torch.Tensor:
    """The authors' mask step: tanh(20·m − 10)/2 + ½ (m ∈ [0,1] → nearly 0 below ½, nearly 1 above)."""
    return torch.tanh(m * 20 - 10) / (2 + EPSILON) + 0.5


def diversity_loss(x1: torch.Tensor, x2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """mean ‖x1 − x2‖ / ‖p1 − p2‖ (RMS distances per sample): small when different inputs get different outputs."""
    d_x = (x1 - x2).pow(2).mean((1, 2, 3)).sqrt()
    d_p = (p1 - p2).pow(2).mean((1, 2, 3)).sqrt()
    return (d_x / (d_p + EPSILON)).mean()


def apply_trigger(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """B(x) = x + (pattern − x) ⊙ mask."""
    return x + (pattern - x) * mask


@dataclass(frozen=True)
class IAD(_Backdoor):
    name: ClassVar[str] = "iad"
    crafted: ClassVar[bool] = True
    summary: ClassVar[str] = "input-aware dynamic backdoor: a trained generator makes each image its own trigger"
    epochs: int = setting(600, "epochs of the attacker's joint classifier + generator training (paper: 600)", ge=1)
    mask_epochs: int = setting(25, "epochs of the mask network's training before that (paper: 25)", ge=1)
    p_attack: float = setting(0.1, "share of each attacker batch in backdoor mode", ge=0.0, le=1.0)
    p_cross: float = setting(0.1, "share of each attacker batch in cross-trigger mode", ge=0.0, le=1.0)
    mask_density: float = setting(0.032, "target mean of the mask (its norm loss penalises more)", gt=0.0, le=1.0)
    lambda_div: float = setting(1.0, "weight of the diversity losses", ge=0.0)
    lambda_norm: float = setting(100.0, "weight of the mask norm loss", ge=0.0)
    lr: float = setting(0.01, "attacker classifier's SGD learning rate", gt=0.0)
    lr_generator: float = setting(0.01, "Adam learning rate of the pattern and mask generators", gt=0.0)
    gen_width: int = setting(32, "base width of the generators (doubled over 3 levels)", ge=4)
    width: int = setting(32, "base width of the attacker's fast-net classifier", ge=4)
    batch_size: int = setting(128, "attacker batch size", ge=2)
    schedule: str = setting("scaled", "learning-rate decays: scaled (the paper's fractions of the run) or "
                            "truncated (the paper's epochs: a short run is its first epochs)",
                            choices=("scaled", "truncated"), added=1)
    cross_ratio: float = setting(1.0, "cross-trigger rows per poisoned row in the poisoned set (p_cross/p_attack)",
                                 ge=0.0)
    rate: float = setting_rate(0.1)
    target: int = setting_target()
    seed: int = setting_seed()

    def check_dataset(self, train: ImageSet) -> None:
        super().check_dataset(train)
        h, w = train.image_shape[:2]
        if h % 8 or w % 8:
            raise ConfigError(f"iad: the generators halve the image 3 times; {h}x{w} is not a multiple of 8")
        if self.p_attack + self.p_cross > 1:
            raise ConfigError(f"attack.p_attack + attack.p_cross = {self.p_attack + self.p_cross}: more than a batch")

    def milestones(self, paper: tuple[int, ...], paper_epochs: int, epochs: int) -> list[int]:
        """The epochs after which a learning rate decays ×0.1 (the paper's, scaled to ``epochs`` or kept)."""
        if self.schedule == "truncated":
            return [m for m in paper if m < epochs]
        return [int(epochs * m / paper_epochs) for m in paper]

    def train_generators(self, x_all: torch.Tensor, y_all: torch.Tensor, num_classes: int,
                         gen: torch.Generator) -> tuple[Generator, Generator]:
        """(pattern generator G, mask network M), both in eval mode, trained as in the module docstring."""
        c = x_all.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
            net_g, net_m = Generator(c, c, self.gen_width), Generator(c, 1, self.gen_width)
            clf = build_net("fast", num_classes, self.width)
        net_g, net_m, clf = net_g.to(x_all.device), net_m.to(x_all.device), clf.to(x_all.device)
        mean = x_all.mean((0, 2, 3), keepdim=True)
        std = x_all.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
        if isinstance(clf, FastNet):
            clf.init_whitening(((x_all - mean) / std)[:5000], rel_tol=None)
        rows = np.arange(len(x_all))
        s1, s2 = BatchStream(rows, self.batch_size, gen), BatchStream(rows, self.batch_size, gen)
        steps = -(-len(rows) // self.batch_size)

        def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            i, j = s1.next(), s2.next()
            n = min(len(i), len(j))
            return augment_batch(x_all[i[:n]], gen), y_all[i[:n]], augment_batch(x_all[j[:n]], gen)

        def norm(x: torch.Tensor) -> torch.Tensor:
            return (x - mean) / std

        opt_m = torch.optim.Adam(net_m.parameters(), self.lr_generator, betas=(0.5, 0.9))
        sched_m = torch.optim.lr_scheduler.MultiStepLR(opt_m, self.milestones((10, 20), 25, self.mask_epochs), 0.1)
        net_m.train()
        for _ in tqdm(range(self.mask_epochs), desc="iad mask", disable=None, leave=False):
            for _ in range(steps):
                x1, _y, x2 = batch()
                m1, m2 = soft_threshold(net_m(norm(x1))), soft_threshold(net_m(norm(x2)))
                loss = self.lambda_norm * F.relu(m1 - self.mask_density).mean() + \
                    self.lambda_div * diversity_loss(x1, x2, m1, m2)
                opt_m.zero_grad(set_to_none=True)
                loss.backward()
                opt_m.step()
            sched_m.step()
        net_m.eval().requires_grad_(False)

        opt_c = torch.optim.SGD(clf.parameters(), self.lr, momentum=0.9, weight_decay=5e-4)
        opt_g = torch.optim.Adam(net_g.parameters(), self.lr_generator, betas=(0.5, 0.9))
        sched_c = torch.optim.lr_scheduler.MultiStepLR(opt_c, self.milestones((100, 200, 300, 400), 600, self.epochs),
                                                       0.1)
        sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, self.milestones((200, 300, 400, 500), 600, self.epochs),
                                                       0.1)
        clf.train()
        net_g.train()
        for _ in tqdm(range(self.epochs), desc="iad generator", disable=None, leave=False):
            for _ in range(steps):
                x1, y1, x2 = batch()
                n_bd, n_cross = int(self.p_attack * len(x1)), int(self.p_cross * len(x1))
                p1 = net_g(norm(x1[:n_bd]))
                bd = apply_trigger(x1[:n_bd], p1, soft_threshold(net_m(norm(x1[:n_bd]))))
                x2c = x2[n_bd:n_bd + n_cross]
                p2 = net_g(norm(x2c))
                cross = apply_trigger(x1[n_bd:n_bd + n_cross], p2, soft_threshold(net_m(norm(x2c))))
                inputs = torch.cat([bd, cross, x1[n_bd + n_cross:]])
                labels = torch.cat([torch.full_like(y1[:n_bd], self.target), y1[n_bd:]])
                loss = F.cross_entropy(clf(norm(inputs)), labels)
                m = min(n_bd, n_cross)
                if m and self.lambda_div:
                    loss = loss + self.lambda_div * diversity_loss(x1[:m], x2c[:m], p1[:m], p2[:m])
                opt_c.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step()
                opt_g.step()
            sched_c.step()
            sched_g.step()
        net_g.eval().requires_grad_(False)
        return net_g, net_m

    def apply(self, data: Dataset) -> Dataset:
        """Poison ``data`` (:meth:`AttackConfig.apply`); the generators trained by :meth:`poison_train` make the
        test triggers too, and are dropped afterwards (they are not part of the config)."""
        try:
            return super().apply(data)
        finally:
            self.__dict__.pop("_fitted", None)

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        gen = torch_generator(rng)
        device = pick_device("auto")
        x_all = images_tensor(train.images, device)
        y_all = torch.from_numpy(train.labels.astype(np.int64)).to(device)
        nets = self.train_generators(x_all, y_all, train.num_classes, gen)
        object.__setattr__(self, "_fitted", (nets, x_all.mean((0, 2, 3), keepdim=True),
                                             x_all.std((0, 2, 3), keepdim=True).clamp_min(1e-3), device))
        candidates, count = self.eligible_rows(train)
        rows = choose_rows(candidates, count, rng)
        rest = np.setdiff1d(np.arange(len(train)), rows)
        cross = choose_rows(rest, min(len(rest), int(round(self.cross_ratio * count))), rng)
        images, labels = train.images.copy(), train.labels.copy()
        images[rows] = self.trigger(train.images[rows], train=True)
        labels[rows] = self.target
        if len(cross):  # another image's trigger on each: labels kept
            partners = rng.choice(np.setdiff1d(np.arange(len(train)), cross), size=len(cross))
            images[cross] = self.triggered(train.images[cross], train.images[partners])
        return images, labels, mask_of(np.concatenate([rows, cross]), len(train))

    def trigger(self, images: np.ndarray, train: bool) -> np.ndarray:
        return self.triggered(images, images)

    @torch.no_grad()
    def triggered(self, images: np.ndarray, partners: np.ndarray) -> np.ndarray:
        """uint8 ``images`` with the triggers the trained generators make for ``partners`` (themselves:
        backdoor mode; other images: cross-trigger mode)."""
        fitted = self.__dict__.get("_fitted")
        if fitted is None:
            raise RuntimeError("iad: the generators exist only while apply() poisons a dataset")
        (net_g, net_m), mean, std, device = fitted
        out = np.empty_like(images)
        for i in range(0, len(images), 256):
            x = images_tensor(images[i:i + 256], device)
            p = (images_tensor(partners[i:i + 256], device) - mean) / std
            b = apply_trigger(x, net_g(p), soft_threshold(net_m(p)))
            out[i:i + 256] = (b.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return out
