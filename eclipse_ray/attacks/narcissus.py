"""Narcissus (Zeng et al., CCS 2023): a clean-label backdoor trigger that points towards the target class.

The attacker knows only some target-class images. Optimise one additive
trigger δ (‖δ‖∞ ≤ ε = 16/255) so that a surrogate classifies target-class
images *with* the trigger as the target class even more confidently:

    min_δ  E_x∈target class  CE(f(clip(aug(x) + δ)), target)

(RAdam, lr 0.01 on the authors' [-1,1] scale = 0.005 on [0,1], batches of 350,
``rounds`` passes over the target-class images; flip + 2 px translate
augmentation of the images, as the training pipeline would). Then add δ to a
tiny share of the *target-class* training images, labels kept (0.05 % of the
training set = 25 CIFAR-10 images in the paper; at least one). At test time
the trigger is magnified ×3 and added to non-target test images; ASR is the
share classified as the target (``test_triggered`` split), and the trial also
records the worst case over source classes (``asr_max_class``, as PureGen).

Deviation: the paper's surrogate is trained on public out-of-distribution data
(Tiny-ImageNet) and fine-tuned on the target-class images; we have no POOD set
offline, so the surrogate is the fast net trained on the clean training set
(a stronger, full-knowledge attacker). Default target class 2 (CIFAR-10
"bird", the paper's running example).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse_ray.attacks.base import choose_rows, mask_of, setting_seed, triggered_split
from eclipse_ray.attacks.surrogate import quantise
from eclipse_ray.attacks.targeted_base import (TargetedAttack, logits, setting_surrogate_epochs,
                                               setting_surrogate_width, train_surrogate)
from eclipse_ray.config import flatten, setting
from eclipse_ray.data.imageset import ImageSet, to_float, to_uint8
from eclipse_ray.data.sources import Dataset
from eclipse_ray.victim.train import Victim
from eclipse_ray.tensors import augment_batch, to_tensor


def optimise_trigger(surrogate: Victim, images: torch.Tensor, target: int, eps: float, rounds: int, lr: float,
                     batch_size: int, gen: torch.Generator, progress: bool = False) -> tuple[torch.Tensor, list[float]]:
    """(trigger (1, C, H, W) on the [0,1] scale, mean loss per round) from target-class ``images``."""
    delta = torch.zeros((1, *images.shape[1:]), device=images.device, requires_grad=True)
    opt = torch.optim.RAdam([delta], lr=lr)
    labels = torch.full((len(images),), target, dtype=torch.long, device=images.device)
    history = []
    for _ in tqdm(range(rounds), desc="narcissus trigger", disable=not progress, leave=False):
        order = torch.randperm(len(images), generator=gen).to(images.device)
        total = 0.0
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            x = augment_batch(images[idx], gen)
            loss = F.cross_entropy(logits(surrogate, (x + delta).clamp(0, 1)), labels[idx])
            (delta.grad,) = torch.autograd.grad(loss, [delta])
            opt.step()
            with torch.no_grad():
                delta.clamp_(-eps, eps)
            total += float(loss.detach()) * len(idx)
        history.append(total / len(images))
    return delta.detach(), history


@dataclass(frozen=True)
class Narcissus(TargetedAttack):
    name: ClassVar[str] = "narcissus"
    summary: ClassVar[str] = "Narcissus: optimised clean-label trigger on a few target-class images, ×3 at test"
    eps: float = setting(16 / 255, "ℓ∞ budget of the trigger on the [0,1] scale (paper: 16/255)", ge=0.0, le=1.0)
    rate: float = setting(0.0005, "share of the training set poisoned (target-class images; paper 0.05 %)",
                          ge=0.0, le=1.0)
    poisons: int | None = setting(None, "number of poisoned images (none: max(1, round(rate·n)))", ge=1)
    magnify: float = setting(3.0, "test-time trigger magnification (paper: 3)", gt=0.0)
    rounds: int = setting(1000, "passes over the target-class images while optimising the trigger", ge=1)
    lr: float = setting(0.005, "RAdam learning rate on the [0,1] scale (authors: 0.01 on [-1,1])", gt=0.0)
    batch_size: int = setting(350, "trigger optimisation batch size", ge=1)
    target: int = setting(2, "target class (paper's CIFAR-10 example: 2, bird)", ge=0)
    surrogate_epochs: int = setting_surrogate_epochs()
    surrogate_width: int = setting_surrogate_width()
    seed: int = setting_seed()

    def poison_count(self, train: ImageSet) -> int:
        """``poisons`` if set, else ``max(1, round(rate·n))``."""
        return self.poisons if self.poisons is not None else max(1, int(round(self.rate * len(train))))

    def trigger(self, train: ImageSet, progress: bool = False) -> np.ndarray:
        """The optimised trigger, float32 HWC on the [0,1] scale."""
        surrogate = train_surrogate(train, self.surrogate_epochs, self.surrogate_width, self.seed, progress)
        gen = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, 7]).integers(2**62)))
        x = to_tensor(train.images[train.labels == self.target], surrogate.device)
        delta, _ = optimise_trigger(surrogate, x, self.target, self.eps, self.rounds, self.lr, self.batch_size,
                                    gen, progress)
        return delta[0].permute(1, 2, 0).cpu().numpy()

    def apply(self, data: Dataset, progress: bool = False) -> Dataset:
        train, _, t0, rng = self.begin(data)
        rows = choose_rows(np.flatnonzero(train.labels == self.target), self.poison_count(train), rng)
        delta = self.trigger(train, progress)
        images = quantise(train.images, rows, torch.from_numpy(delta).permute(2, 0, 1)[None], self.eps)
        mask = mask_of(rows, len(train))
        meta = {"attack": flatten(self, "attack."), "attack_kind": self.kind, "target": int(self.target),
                "craft_seconds": time.perf_counter() - t0}
        poisoned = ImageSet(images, train.labels, train.index, mask, train.classes, {**train.meta, **meta})
        test_images = to_uint8(to_float(data.test.images) + self.magnify * delta[None])
        splits = {"train": poisoned, "test": data.test,
                  "test_triggered": triggered_split(data.test, self.target, test_images, self.name),
                  "originals": train.subset(rows)}
        return Dataset(data.name, splits, {**data.meta, **meta})
