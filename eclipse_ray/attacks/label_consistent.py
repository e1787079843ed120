"""LC — the label-consistent backdoor (Turner, Tsipras & Madry 2019; one of V&B's six backdoors).

A clean-label backdoor: only images of the target class are poisoned and their
labels are kept. To make the victim rely on the trigger rather than on the
images' own content, each poisoned image is first made hard to classify — an
untargeted PGD adversarial example (``norm``/``eps``: ℓ∞ 16/255 by default; the
reference code's default data set ``two_300`` is ℓ2 ε = 300 on the 0–255 scale,
``norm=l2 eps=1.176``) against an
*adversarially trained* surrogate (as the paper's examples come from a robust
model: its adversarial examples change what the image looks like, where a
plain model's are a learnable shortcut — measured on digits: with a plain
surrogate the victim learns the perturbations and the trigger's ASR is 0 %) —
and then stamped with the trigger: a
3×3 black/white checkerboard in each of the four corners (the paper's
four-corner pattern), blended in with ``amplitude`` (1: fully visible; the
paper's reduced-visibility variant uses less). At test time the full trigger
is stamped on every non-target image; ASR is the share classified as target.

Defaults follow V&B's protocol (target 0, 10 % of the training set poisoned:
the whole target class of CIFAR-10, ``rate=1`` of the class). PGD: random
start, ``steps`` steepest steps of ``tau``·eps (the gradient's sign under ℓ∞, the unit-ℓ2 gradient
under ℓ2), maximising the surrogate's
cross-entropy on the true label.

Deviation: the robust surrogate is the fast victim adversarially trained
``surrogate_epochs`` on clean data (PGD ℓ∞ ``robust_eps`` with
``robust_steps`` steps per batch), not the paper's robust ResNet.

Victim: measured on the CIFAR-10 subset (docs/results.md), LC implants in the
fast victim only when its first layer is trained (``victim.whiten=false``:
ASR 99.9 %, 98.1 % for a second seed); airbench's frozen patch-whitening stem
amplifies the high-frequency PGD perturbations into a class signature learnt
instead of the trigger (0.2 %). The papers' ResNet-18 has no such stem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from eclipse_ray.attacks.backdoor import _Backdoor, setting_target
from eclipse_ray.attacks.base import choose_rows, mask_of, setting_seed
from eclipse_ray.attacks.surrogate import (MIN_L2_EPS, NORMS, ball_project, budget_steps, images_tensor, pgd, quantise_ball,
                                           robust_surrogate, setting_robust_whiten, torch_generator)
from eclipse_ray.config import ConfigError, setting
from eclipse_ray.data.imageset import ImageSet, to_float, to_uint8
from eclipse_ray.tensors import pick_device
from eclipse_ray.victim.train import VictimConfig


def corner_trigger(shape: tuple[int, ...], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask, pattern) of HWC images: a ``size``×``size`` black/white checkerboard in each corner."""
    h, w, c = shape
    mask = np.zeros((h, w, 1), np.float32)
    pattern = np.zeros((h, w, 1), np.float32)
    i, j = np.indices((size, size))
    board = ((i + j) % 2 == 0).astype(np.float32)
    for r in (slice(0, size), slice(h - size, h)):
        for q in (slice(0, size), slice(w - size, w)):
            mask[r, q, 0] = 1.0
            pattern[r, q, 0] = board
    return mask, pattern


@dataclass(frozen=True)
class LabelConsistent(_Backdoor):
    name: ClassVar[str] = "lc"
    clean_label: ClassVar[bool] = True
    crafted: ClassVar[bool] = True
    summary: ClassVar[str] = "label-consistent: adversarially hardened target-class images + four-corner trigger"
    eps: float = setting(16 / 255, "budget of the adversarial perturbation on [0,1]: ℓ∞ per pixel (paper: 16/255) "
                         "or, with norm=l2, each image's ℓ2 norm (reference code: 300/255 = 1.176)", ge=0.0)
    norm: str = setting("linf", "budget norm of the adversarial perturbation: linf or l2 (the paper has both)",
                        choices=NORMS, added=1)
    steps: int = setting(100, "PGD steps", ge=0)
    tau: float = setting(0.1, "PGD step size as a fraction of eps", gt=0.0)
    size: int = setting(3, "side of each corner's checkerboard in pixels", ge=1)
    amplitude: float = setting(1.0, "trigger visibility in training poisons (1: full; reduced-visibility < 1)",
                               ge=0.0, le=1.0)
    surrogate_epochs: int = setting(10, "epochs of the fast surrogate trained on the clean training set", ge=1)
    surrogate_width: int = setting(32, "base width of the fast surrogate net", ge=4)
    robust_eps: float = setting(8 / 255, "ℓ∞ radius of the surrogate's adversarial training (0: plain training)",
                                ge=0.0, le=1.0)
    robust_steps: int = setting(5, "PGD steps per batch of the surrogate's adversarial training", ge=1)
    robust_whiten: bool = setting_robust_whiten()
    rate: float = setting(1.0, "fraction of the *target class* poisoned (1: 10 % of CIFAR-10, V&B's ratio)",
                          ge=0.0, le=1.0)
    target: int = setting_target()
    seed: int = setting_seed()

    def validate(self) -> None:
        super().validate()
        if self.norm == "linf" and self.eps > 1:
            raise ConfigError(f"attack.eps={self.eps}: an ℓ∞ budget on [0,1] is at most 1 (ℓ2 budgets: norm=l2)")
        if self.norm == "l2" and 0 < self.eps < MIN_L2_EPS:
            raise ConfigError(f"attack.eps={self.eps}: with norm=l2 eps is each image's ℓ2 norm on [0,1]; below "
                              f"{MIN_L2_EPS} it rounds to (almost) nothing in uint8 images")

    def check_dataset(self, train: ImageSet) -> None:
        super().check_dataset(train)
        if 2 * self.size > min(train.image_shape[:2]):
            raise ConfigError(f"attack.size={self.size}: corner triggers overlap on "
                              f"{train.image_shape[0]}px images")

    def eligible_rows(self, train: ImageSet) -> tuple[np.ndarray, int]:
        rows = np.flatnonzero(train.labels == self.target)
        return rows, int(round(self.rate * len(rows)))

    def trigger(self, images: np.ndarray, train: bool) -> np.ndarray:
        mask, pattern = corner_trigger(images.shape[1:], self.size)
        a = mask * (self.amplitude if train else 1.0)
        return to_uint8((1 - a) * to_float(images) + a * pattern)

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        candidates, count = self.eligible_rows(train)
        rows = choose_rows(candidates, count, rng)
        gen = torch_generator(rng)
        hard = self.harden(train, rows, gen)
        images = train.images.copy()
        images[rows] = self.trigger(hard[rows], train=True)
        return images, train.labels.copy(), mask_of(rows, len(train))

    def harden(self, train: ImageSet, rows: np.ndarray, gen: torch.Generator) -> np.ndarray:
        """``train.images`` with ``rows`` replaced by untargeted adversarial examples against a surrogate."""
        eps = budget_steps(self.eps) / 255 if self.norm == "linf" else self.eps  # ℓ∞: whole uint8 steps
        if self.steps == 0 or eps == 0 or not len(rows):
            return train.images
        device = pick_device("auto")
        seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        cfg = VictimConfig(arch="fast", epochs=self.surrogate_epochs, width=self.surrogate_width, device=str(device))
        sur = robust_surrogate(cfg, train.images, train.labels, train.num_classes, self.robust_eps,
                               self.robust_steps, seed, self.robust_whiten)
        out = torch.zeros(len(rows), *images_tensor(train.images[rows[:1]], device).shape[1:], device=device)
        for i in range(0, len(rows), 256):
            x = images_tensor(train.images[rows[i:i + 256]], device)
            y = torch.from_numpy(train.labels[rows[i:i + 256]].astype(np.int64)).to(device)
            start = (torch.rand(x.shape, generator=gen) * 2 - 1).to(device) * eps  # ℓ2: projected onto the ball
            out[i:i + 256] = pgd(start, lambda d: F.cross_entropy(sur(x + d), y), ball_project(x, eps, self.norm),
                                 self.tau * eps, self.steps, minimise=False, norm=self.norm)
        return quantise_ball(train.images, rows, out, eps, self.norm)
