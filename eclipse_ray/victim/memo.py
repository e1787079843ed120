"""Trained nets kept in memory: deterministic training, so a net asked for again in this process is reused.

The attacks' surrogates and the transfer victim's pre-trained nets are each
a function of (data, recipe, seed); a process that runs several trials on the
same data (a benchmark, an attack then its victim) trains each once.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np


def data_key(images: np.ndarray, labels: np.ndarray) -> str:
    """A digest of a training set's pixels and labels."""
    return hashlib.sha1(np.ascontiguousarray(images).tobytes() + np.asarray(labels, np.int64).tobytes()).hexdigest()


def kept(store: dict, key: Any, make: Callable[[], Any], keep: int = 2) -> Any:
    """``store[key]``, made by ``make()`` (a trained victim, put in eval mode: a forward pass in train mode would
    move its BatchNorm statistics) when missing; only the last ``keep`` made are kept."""
    if key not in store:
        victim = make()
        victim.model.eval()
        while len(store) >= keep:
            store.pop(next(iter(store)))
        store[key] = victim
    return store[key]
