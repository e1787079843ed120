"""Model-free backdoor poisons: BadNets, Blend and SIG (BackdoorBench defaults).

All are all-to-one with target class 0. BadNets' default patch is a 3x3
black/white checkerboard (as in ABL) rather than BackdoorBench's plain white
square: on the 4,660-image CIFAR-10 subset a fast victim trained 10 epochs
learns the checkerboard (ASR 100 %) but not the white square (ASR 11 %, since
bright corners are common in natural images); ``attack.pattern=white`` gives
BackdoorBench's trigger. BadNets and Blend are dirty-label:
``rate`` of the training set (drawn from non-target samples) gets the trigger
and the target label. SIG is clean-label: ``rate`` of the *target class* gets
the sinusoid and keeps its label. The ``test_triggered`` split holds every
non-target test image with the trigger; ASR is the share classified as target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from eclipse_ray.attacks.base import (BACKDOOR, AttackConfig, choose_rows, mask_of, setting_rate, setting_seed,
                                      triggered_split)
from eclipse_ray.config import ConfigError, setting
from eclipse_ray.data.imageset import ImageSet, to_float, to_uint8


def setting_target() -> int:
    return setting(0, "target class of the backdoor", ge=0)


@dataclass(frozen=True)
class _Backdoor(AttackConfig):
    kind: ClassVar[str] = BACKDOOR
    clean_label: ClassVar[bool] = False

    def trigger(self, images: np.ndarray, train: bool) -> np.ndarray:
        """The triggered copies of uint8 NHWC ``images``."""
        raise NotImplementedError

    def eligible_rows(self, train: ImageSet) -> tuple[np.ndarray, int]:
        """(rows that may be poisoned, how many to poison)."""
        return np.flatnonzero(train.labels != self.target), int(round(self.rate * len(train)))

    def poison_count(self, train: ImageSet) -> int:
        return self.eligible_rows(train)[1]

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        candidates, count = self.eligible_rows(train)
        rows = choose_rows(candidates, count, rng)
        images = train.images.copy()
        labels = train.labels.copy()
        if len(rows):
            images[rows] = self.trigger(train.images[rows], train=True)
            if not self.clean_label:
                labels[rows] = self.target
        return images, labels, mask_of(rows, len(train))

    def trigger_test(self, test: ImageSet, rng: np.random.Generator) -> ImageSet:
        return triggered_split(test, self.target, self.trigger(test.images, train=False), self.name)


@dataclass(frozen=True)
class BadNets(_Backdoor):
    name: ClassVar[str] = "badnets"
    summary: ClassVar[str] = "3x3 patch in the bottom-right corner, label flipped to target"
    patch: int = setting(3, "side of the square patch in pixels", ge=1)
    pattern: str = setting("checkerboard", "patch pattern: black/white checkerboard (ABL) or white square "
                           "(BackdoorBench; implants poorly on small data)", choices=("checkerboard", "white"))
    rate: float = setting_rate(0.1)
    target: int = setting_target()
    seed: int = setting_seed()

    def check_dataset(self, train: ImageSet) -> None:
        super().check_dataset(train)
        if self.patch > min(train.image_shape[:2]):
            raise ConfigError(f"attack.patch={self.patch}: larger than the {train.image_shape[0]}px images")

    def trigger(self, images: np.ndarray, train: bool) -> np.ndarray:
        out = images.copy()
        if self.pattern == "white":
            out[:, -self.patch:, -self.patch:, :] = 255
        else:
            i, j = np.indices((self.patch, self.patch))
            out[:, -self.patch:, -self.patch:, :] = (((i + j) % 2 == 0) * 255).astype(np.uint8)[..., None]
        return out


@dataclass(frozen=True)
class Blend(_Backdoor):
    name: ClassVar[str] = "blend"
    summary: ClassVar[str] = "fixed random key image blended in with weight alpha, label flipped to target"
    alpha: float = setting(0.2, "blend weight of the key image in training poisons", ge=0.0, le=1.0)
    alpha_test: float = setting(0.2, "blend weight of the key image at test time", ge=0.0, le=1.0)
    key_seed: int = setting(1234, "seed of the uniform-noise key image", ge=0)
    rate: float = setting_rate(0.1)
    target: int = setting_target()
    seed: int = setting_seed()

    def key(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng(self.key_seed).uniform(0, 1, size=shape[1:])

    def trigger(self, images: np.ndarray, train: bool) -> np.ndarray:
        a = self.alpha if train else self.alpha_test
        return to_uint8((1 - a) * to_float(images) + a * self.key(images.shape))


@dataclass(frozen=True)
class SIG(_Backdoor):
    name: ClassVar[str] = "sig"
    clean_label: ClassVar[bool] = True
    summary: ClassVar[str] = "clean-label horizontal sinusoid on target-class images"
    delta: float = setting(40 / 255, "sinusoid amplitude on the [0,1] scale (BackdoorBench: 40/255)", ge=0.0, le=1.0)
    delta_test: float | None = setting(None, "amplitude at test time (none: same as delta)", ge=0.0, le=1.0)
    freq: float = setting(6.0, "sinusoid frequency f (periods across the image width)", gt=0.0)
    rate: float = setting(1.0, "fraction of the *target class* poisoned", ge=0.0, le=1.0)
    target: int = setting_target()
    seed: int = setting_seed()

    def eligible_rows(self, train: ImageSet) -> tuple[np.ndarray, int]:
        rows = np.flatnonzero(train.labels == self.target)
        return rows, int(round(self.rate * len(rows)))

    def trigger(self, images: np.ndarray, train: bool) -> np.ndarray:
        delta = self.delta if train or self.delta_test is None else self.delta_test
        w = images.shape[2]
        signal = delta * np.sin(2 * np.pi * np.arange(w) * self.freq / w)
        return to_uint8(to_float(images) + signal[None, None, :, None])
