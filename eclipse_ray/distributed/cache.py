"""The purification cache: each (dataset, attack, purifier config, seed) is purified once.

Purification costs 100–500 fast-victim trainings, so every victim trial that
needs the same purified training set reads it from
``CACHE/purified/<key>/`` (the dataset store format). An exclusive file lock
per key means two trials never compute the same thing at once: the second
waits, then reads the first one's result. On a multi-node cluster put the cache
on shared storage (NFS), where ``flock`` works across nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Iterator

from eclipse_ray.config import config_hash, flatten
from eclipse_ray.data import store
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset
from eclipse_ray.victim.metrics import clean_view


def cache_root() -> Path:
    """Where trained models, crafted poisons and purified sets are cached ($ECLIPSE_RAY_CACHE)."""
    return Path(os.environ.get("ECLIPSE_RAY_CACHE", Path.home() / ".cache" / "eclipse_ray"))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), held for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def purification_key(dataset: str, attack_flat: dict, defense, seed: int) -> str:
    """What a purified training set depends on (the victim and training-time settings excluded)."""
    return config_hash({"dataset": dataset, **attack_flat, **flatten(defense, "defense."), "seed": seed})


def cached_purify(data: Dataset, attack_flat: dict, defense, seed: int, cache_dir: str | Path,
                  dataset: str, progress: bool = False) -> tuple[ImageSet, bool]:
    """(purified training set, whether it came from the cache)."""
    key = purification_key(dataset, attack_flat, defense, seed)
    root = Path(cache_dir) / "purified"
    path = root / key
    with file_lock(root / f"{key}.lock"):
        if (path / "meta.json").is_file():
            return store.read_split(path, "train"), True
        t = time.perf_counter()
        train = data.train
        purified = defense.purify(train, seed, progress=progress,
                                  clean=clean_view(train, data.splits.get("originals")))
        purified = purified.with_images(purified.images, purify_seconds=time.perf_counter() - t)
        store.write_dataset(path, {"train": purified}, {"purification_key": key, "defense": flatten(defense)})
        return purified, False


def cached_attack(attack, data: Dataset, dataset: str, cache_dir: str | Path | None = None) -> Dataset:
    """``attack.apply(data)``, crafted once per (dataset, attack config) and then read from the cache.

    For attacks that optimise their poisons against a surrogate (EM, TAP,
    gradient matching …), whose crafting costs many victim trainings. The
    crafting time is kept in the dataset meta (``craft_seconds``) either way.
    """
    key = config_hash({"dataset": dataset, **flatten(attack, "attack.")})
    root = Path(cache_dir) if cache_dir else cache_root()
    path = root / "poisons" / key
    with file_lock(root / "poisons" / f"{key}.lock"):
        if (path / "meta.json").is_file():
            splits, meta = store.read_dataset(path)
            return Dataset(data.name, splits, {**data.meta, **meta, "poison_cached": True})
        t = time.perf_counter()
        poisoned = attack.apply(data)
        meta = {**poisoned.meta, "craft_seconds": poisoned.meta.get("craft_seconds", time.perf_counter() - t)}
        store.write_dataset(path, poisoned.splits, {**meta, "poison_key": key})
        return Dataset(poisoned.name, poisoned.splits, {**meta, "poison_cached": False})


def cached_model(tag: bytes, tcfg, src: ImageSet, train_fn, progress: bool = True) -> Path:
    """A generative model trained once per (clean reference set, training config), then read from the cache.

    The reference set is drawn from ``src`` on true labels (the same set whatever
    the attack); ``train_fn(tcfg, ref, out, progress=…)`` writes the model to
    ``out``. Concurrent trials wait on a lock and train it only once.
    """
    import numpy as np

    from eclipse_ray.diffusion.train import clean_reference_rows

    rows = clean_reference_rows(src, tcfg.clean_fraction, tcfg.seed)
    ref = ImageSet(src.images[rows], src.labels[rows], src.index[rows], np.zeros(len(rows), bool), src.classes)
    h = hashlib.sha256(tag + ref.images.tobytes() + ref.index.tobytes() + config_hash(flatten(tcfg)).encode())
    out = cache_root() / "models" / h.hexdigest()[:16]
    with file_lock(out.with_suffix(".lock")):
        if not (out / "config.json").is_file():
            train_fn(tcfg, ref, out, progress=progress)
    return out
