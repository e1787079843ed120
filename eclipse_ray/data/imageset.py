"""ImageSet: an in-memory image dataset that never loses track of its samples.

Every stage of eclipse_ray (poisoning, purification, training) takes ImageSets
and returns ImageSets. ``index`` is the stable id of each sample in its source
dataset; ``labels`` and ``poisoned`` travel with it. Purification must keep all
three exactly (:func:`check_same_samples` enforces this in code).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eclipse_ray.config import ConfigError


@dataclass(frozen=True, eq=False)
class ImageSet:
    """uint8 NHWC RGB images with labels, stable indices and a ground-truth poison mask."""

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    poisoned: np.ndarray
    classes: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_arrays(self.images, self.labels, len(self.classes), what="image set")
        n = len(self.images)
        index = np.asarray(self.index)
        poisoned = np.asarray(self.poisoned)
        if index.shape != (n,) or poisoned.shape != (n,):
            raise ConfigError(
                f"image set: index {index.shape} and poisoned {poisoned.shape} must both have shape ({n},)"
            )
        if not np.issubdtype(index.dtype, np.integer):
            raise ConfigError(f"image set: index must be integers, got {index.dtype}")
        if len(np.unique(index)) != n:
            raise ConfigError("image set: index values must be unique (a sample is duplicated)")
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64))
        object.__setattr__(self, "index", index.astype(np.int64))
        object.__setattr__(self, "poisoned", poisoned.astype(bool))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def with_images(self, images: np.ndarray, **meta: Any) -> "ImageSet":
        """Same samples (index, labels, poisoned), new pixels; ``meta`` entries are added."""
        if images.shape[0] != len(self):
            raise ConfigError(f"with_images: {images.shape[0]} images for {len(self)} samples")
        return dataclasses.replace(self, images=images, meta={**self.meta, **meta})

    def subset(self, rows: np.ndarray) -> "ImageSet":
        """The samples at positions ``rows`` (in that order)."""
        rows = np.asarray(rows)
        return ImageSet(self.images[rows], self.labels[rows], self.index[rows],
                        self.poisoned[rows], self.classes, dict(self.meta))

    def sorted_by_index(self) -> "ImageSet":
        return self.subset(np.argsort(self.index, kind="stable"))


def validate_arrays(images: Any, labels: Any, num_classes: int, what: str) -> None:
    """Raise a one-line :class:`ConfigError` unless images/labels form a valid dataset."""
    if not isinstance(images, np.ndarray):
        raise ConfigError(f"{what}: images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and np.isnan(images).any():
            raise ConfigError(f"{what}: images contain NaN")
        raise ConfigError(f"{what}: images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(f"{what}: images must have shape (N, H, W, 3), got {images.shape}")
    if images.shape[0] == 0:
        raise ConfigError(f"{what}: no images (empty set)")
    labels = np.asarray(labels)
    if labels.ndim == 1 and len(labels) != len(images):
        raise ConfigError(f"{what}: {len(images)} images but {len(labels)} labels")
    lo, hi = check_labels(labels, what)
    if num_classes < 1:
        raise ConfigError(f"{what}: no classes")
    if hi >= num_classes:
        raise ConfigError(f"{what}: labels must lie in 0..{num_classes - 1}, found {lo}..{hi}")


MAX_INFERRED_CLASSES = 10_000  # a class count inferred from labels above this is a broken label, not a dataset


def check_labels(labels: Any, what: str) -> tuple[int, int]:
    """(smallest, largest) label, after checking ``labels`` are a non-empty 1-D array of whole numbers ≥ 0.

    Float labels pass only when every value is an exact integer (``3.0``, not ``3.5``, NaN or inf).
    Reads the values only: nothing of the size of a label is allocated.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"{what}: labels must be 1-D, got shape {labels.shape}")
    if labels.size == 0:
        raise ConfigError(f"{what}: no labels (empty set)")
    if np.issubdtype(labels.dtype, np.floating):
        if np.isnan(labels).any():
            raise ConfigError(f"{what}: labels contain NaN")
        if not np.isfinite(labels).all():
            raise ConfigError(f"{what}: labels contain inf")
        if not np.all(labels == np.round(labels)):
            bad = float(labels[labels != np.round(labels)][0])
            raise ConfigError(f"{what}: labels must be whole numbers, found {bad:g}")
    elif labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"{what}: labels must be integers, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ConfigError(f"{what}: labels must be ≥ 0, found {lo}")
    return lo, hi


def classes_from_labels(labels: Any, n_images: int, what: str) -> int:
    """The class count C = max label + 1 implied by ``labels``, bounded before anything per class is built:
    C ≤ ``n_images`` (a class needs an image) and C ≤ ``MAX_INFERRED_CLASSES``; a larger C is a broken label."""
    _, hi = check_labels(labels, what)
    c = hi + 1
    if c > n_images:
        raise ConfigError(f"{what}: largest label {hi} implies {c} classes for only {n_images} images; "
                          f"labels must be 0..C-1")
    if c > MAX_INFERRED_CLASSES:
        raise ConfigError(f"{what}: largest label {hi} implies {c} classes, above the limit of "
                          f"{MAX_INFERRED_CLASSES}; labels must be 0..C-1")
    return c


def check_same_samples(before: ImageSet, after: ImageSet, stage: str) -> None:
    """Raise unless ``after`` holds exactly the samples of ``before`` in the same order."""
    if len(before) != len(after):
        raise RuntimeError(f"{stage}: {len(before)} samples went in, {len(after)} came out")
    for name in ("index", "labels", "poisoned"):
        if not np.array_equal(getattr(before, name), getattr(after, name)):
            raise RuntimeError(f"{stage}: '{name}' changed; samples were lost, duplicated or reordered")
    if after.images.shape[1:] != before.images.shape[1:]:
        raise RuntimeError(f"{stage}: image shape changed {before.images.shape[1:]} -> {after.images.shape[1:]}")


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC to float32 in [0, 1]."""
    return images.astype(np.float32) / 255.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float in [0, 1] to uint8 with rounding and clipping."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def originals_aligned(train: ImageSet, originals: ImageSet | None) -> np.ndarray:
    """Clean originals aligned to ``train``: from ``originals`` where poisoned, else the image itself."""
    out = train.images.copy()
    if originals is not None and len(originals):
        pos = {int(i): r for r, i in enumerate(train.index)}
        rows = np.array([pos[int(i)] for i in originals.index if int(i) in pos], dtype=np.int64)
        keep = np.array([int(i) in pos for i in originals.index])
        out[rows] = originals.images[keep]
    return out


def clean_view(train: ImageSet, originals: ImageSet | None) -> ImageSet:
    """``train`` with the clean originals' pixels *and labels* put back (what the defender's clean data is)."""
    images = originals_aligned(train, originals)
    labels = train.labels.copy()
    if originals is not None and len(originals):
        pos = {int(i): r for r, i in enumerate(train.index)}
        for i, y in zip(originals.index, originals.labels):
            if int(i) in pos:
                labels[pos[int(i)]] = y
    return ImageSet(images, labels, train.index, train.poisoned, train.classes, dict(train.meta))
