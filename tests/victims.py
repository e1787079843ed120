"""The behavioural attack checks' victims: a fast 5-epoch width-16 net on digits, clean and on a poisoned set."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset
from eclipse_ray.victim.train import Victim, VictimConfig, train_victim

VICTIM = VictimConfig(epochs=5, width=16)


def victim_on(train: ImageSet, seed: int = 0) -> Victim:
    return train_victim(VICTIM, train.images, train.labels, train.num_classes, seed, progress=False)


@lru_cache(maxsize=2)
def _clean(images: bytes, labels: bytes, shape: tuple[int, ...], classes: int, seed: int) -> Victim:
    x = np.frombuffer(images, np.uint8).reshape(shape)
    return train_victim(VICTIM, x, np.frombuffer(labels, np.int64), classes, seed, progress=False)


def clean_and_poisoned(clean: Dataset, poisoned: Dataset, seed: int = 0) -> tuple[Victim, Victim]:
    """(the victim trained on ``clean.train`` — trained once per process —, the one trained on ``poisoned.train``)."""
    tr = clean.train
    ref = _clean(tr.images.tobytes(), tr.labels.astype(np.int64).tobytes(), tr.images.shape, tr.num_classes, seed)
    return ref, victim_on(poisoned.train, seed)


def accuracy(victim: Victim, data: Dataset) -> float:
    return float((victim.predict(data.test.images) == data.test.labels).mean())
