"""Import a poisoned dataset stored as a generic ``.npz`` (read with ``allow_pickle=False``: never unpickles).

Arrays: ``x_train, y_train, x_test, y_test`` (uint8 NHWC, as ``npz:PATH``; optional
``classes``) plus, all optional:

* ``poisoned``: bool/0-1 per training row (default: none marked);
* ``x_train_clean``: the clean originals aligned with ``x_train`` (kept for PSNR
  and the defender's clean view where ``poisoned``);
* ``x_test_triggered`` with ``y_test_triggered`` (true labels; default ``y_test``
  when the lengths match) and ``target`` (the backdoor class, a scalar).

The kind recorded for trials is ``backdoor`` with a triggered test set and a
target, ``availability`` when rows are marked poisoned, ``none`` otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eclipse_ray.data.kinds import AVAILABILITY, BACKDOOR, NONE
from eclipse_ray.config import ConfigError
from eclipse_ray.data.importers.common import as_label, assemble, split
from eclipse_ray.data.imageset import ImageSet, classes_from_labels, validate_arrays
from eclipse_ray.data.sources import Dataset, load_npz

OPTIONAL = ("poisoned", "x_train_clean", "x_test_triggered", "y_test_triggered", "target")


def _check_train_labels(path: Path) -> None:
    """Without a ``classes`` array, C = max(y_train) + 1: refuse labels that are not whole numbers ≥ 0 or imply
    more classes than images (one stray label 10**9) before anything is sized by C. Problems of the file itself
    are left to :func:`load_npz` to report."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "classes" in f.files or "y_train" not in f.files:
                return
            y = f["y_train"]
    except Exception:  # noqa: BLE001 - not a readable npz of plain arrays: load_npz says why
        return
    classes_from_labels(y, len(y) if y.ndim else 0, f"npz:{path} y_train")


def import_npz(path: str | Path, clean: str | None = None, data_dir: str | Path | None = None, *,
               progress: bool = False) -> Dataset:
    """Train/test from the npz, with its poison mask, clean originals and triggered test set when present."""
    path = Path(path)
    if clean:
        raise ConfigError("npz: --clean is not used (the npz holds the clean test set itself)")
    _check_train_labels(path)  # before any per-class structure is built from them
    base = load_npz(path)  # validates the four required arrays; refuses pickled objects
    with np.load(path, allow_pickle=False) as f:
        extra = {k: f[k] for k in OPTIONAL if k in f.files}
    train, test = base.train, base.test
    src, n = f"npz:{path}", len(train)
    mask = np.zeros(n, bool)
    if "poisoned" in extra:
        p = extra["poisoned"]
        if p.shape != (n,) or not (p.dtype == bool or np.isin(p, (0, 1)).all()):
            raise ConfigError(f"{src}: 'poisoned' must be {n} booleans (0/1), got {p.dtype} of shape {p.shape}")
        mask = p.astype(bool)
    splits: dict[str, ImageSet] = {"train": split(train.images, train.labels, train.index, mask, train.classes, src,
                                                  "train"), "test": test}
    if "x_train_clean" in extra:
        x = extra["x_train_clean"]
        validate_arrays(x, train.labels, train.num_classes, f"{src} x_train_clean")
        if x.shape != train.images.shape:
            raise ConfigError(f"{src}: x_train_clean has shape {x.shape}, x_train has {train.images.shape}")
        if mask.any():
            rows = np.flatnonzero(mask)
            splits["originals"] = split(x[rows], train.labels[rows], train.index[rows], np.zeros(len(rows), bool),
                                        train.classes, src, "originals")
    target = None
    if "target" in extra:
        if extra["target"].ndim != 0:
            raise ConfigError(f"{src}: 'target' must be a scalar class")
        target = as_label(extra["target"], train.num_classes, f"{src} target")
    if "x_test_triggered" in extra:
        x = extra["x_test_triggered"]
        y = extra.get("y_test_triggered", test.labels if len(x) == len(test) else None)
        if y is None:
            raise ConfigError(f"{src}: x_test_triggered has {len(x)} images but y_test has {len(test)}; "
                              f"store y_test_triggered")
        validate_arrays(x, y, train.num_classes, f"{src} test_triggered")
        if x.shape[1:] != train.image_shape:
            raise ConfigError(f"{src}: x_test_triggered images have shape {x.shape[1:]}, train has {train.image_shape}")
        splits["test_triggered"] = ImageSet(np.ascontiguousarray(x), np.asarray(y, np.int64), np.arange(len(x)),
                                            np.ones(len(x), bool), train.classes,
                                            {"source": src, "split": "test_triggered",
                                             **({"target": target} if target is not None else {})})
    kind = BACKDOOR if target is not None and "test_triggered" in splits else AVAILABILITY if mask.any() else NONE
    meta = {"n_poisoned": int(mask.sum()), **({"target": target} if target is not None else {})}
    return assemble("npz", path, None, splits, kind, **meta)
