"""Shared pieces of the poison importers: the clean reference set, image/label/index conversion, assembly.

Foreign tools name training samples by their *position* in the clean split
(torchvision order for CIFAR/SVHN). Importers map a position ``p`` to the clean
sample ``clean.train.index[p]``, so ``index`` and ``labels`` stay consistent
with the clean dataset (for ``cifar10``/``npz:`` sources position and index
coincide).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from eclipse_ray.config import ConfigError
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset, load_dataset


def load_clean(spec: str | None, data_dir: str | Path | None, fmt: str) -> Dataset:
    """The clean dataset the poisons were made from (``--clean``); refuses a poisoned one."""
    if not spec:
        raise ConfigError(f"{fmt}: give the clean dataset the poisons were made from with --clean "
                          f"(e.g. cifar10 or npz:PATH)")
    data = load_dataset(spec, data_dir)
    if data.meta.get("attack") or any(s.poisoned.any() for s in data.splits.values()):
        raise ConfigError(f"--clean {spec} is itself poisoned; give the clean dataset")
    return data


def to_rgb(obj: Any, shape: tuple[int, int, int], what: str) -> np.ndarray:
    """A PIL image, raw RGB bytes or an HWC/CHW array (uint8, or float in [0, 1]) as uint8 HWC RGB of ``shape``."""
    from PIL import Image

    h, w, _ = shape
    if isinstance(obj, Image.Image):
        arr = np.asarray(obj.convert("RGB"), dtype=np.uint8)
    elif isinstance(obj, (bytes, bytearray)):
        if len(obj) != h * w * 3:
            raise ConfigError(f"{what}: {len(obj)} image bytes, expected {h * w * 3} for a {w}x{h} RGB image")
        arr = np.frombuffer(bytes(obj), dtype=np.uint8).reshape(h, w, 3)
    elif isinstance(obj, np.ndarray):
        arr = obj
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)  # CHW (torch layout)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        if np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
                raise ConfigError(f"{what}: float image values must be finite and in [0, 1]")
            arr = np.rint(arr * 255.0).astype(np.uint8)
        elif np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                raise ConfigError(f"{what}: integer image values must lie in 0..255")
            arr = arr.astype(np.uint8)
        elif arr.dtype != np.uint8:
            raise ConfigError(f"{what}: image array has dtype {arr.dtype}; expected uint8 or float")
    else:
        raise ConfigError(f"{what}: expected an image (PIL image, uint8 array or raw RGB bytes), "
                          f"got {type(obj).__name__}")
    if arr.shape != tuple(shape):
        raise ConfigError(f"{what}: image has shape {tuple(arr.shape)}, the clean set's images are {tuple(shape)}")
    return arr


def read_png(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file as uint8 HWC RGB of ``shape``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        raise ConfigError(f"cannot read image {path} ({type(e).__name__}: truncated or not an image)") from None
    return to_rgb(arr, shape, str(path))


def as_label(obj: Any, num_classes: int, what: str) -> int:
    """An int label in ``0..num_classes-1`` from an int, numpy integer, a float holding an exact integer
    (``3.0``) or a 0-d array of one."""
    if isinstance(obj, np.ndarray) and obj.ndim == 0:
        obj = obj.item()
    if isinstance(obj, (float, np.floating)) and np.isfinite(obj) and float(obj).is_integer():
        obj = int(obj)
    if isinstance(obj, (bool, np.bool_)) or not isinstance(obj, (int, np.integer)):
        shown = f"{obj!r}" if isinstance(obj, (float, np.floating)) else type(obj).__name__
        raise ConfigError(f"{what}: label must be an integer, got {shown}")
    if not 0 <= int(obj) < num_classes:
        raise ConfigError(f"{what}: label {int(obj)} outside 0..{num_classes - 1} (wrong --clean?)")
    return int(obj)


def positions(values: Any, n: int, what: str) -> np.ndarray:
    """Distinct integer positions into a split of ``n`` samples, as int64."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(f"{what}: expected a 1-D list of integer indices, got {arr.dtype} of shape {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ConfigError(f"{what}: index {int(arr.max() if arr.max() >= n else arr.min())} outside the clean "
                          f"split's {n} samples (wrong --clean?)")
    if len(np.unique(arr)) != len(arr):
        raise ConfigError(f"{what}: an index appears twice")
    return arr


def split(images: np.ndarray, labels: Iterable[int], index: np.ndarray, poisoned: np.ndarray,
          classes: tuple[str, ...], source: str, name: str, **meta: Any) -> ImageSet:
    """An ImageSet (validated by its constructor) with ``source``/``split`` meta."""
    return ImageSet(np.ascontiguousarray(images), np.asarray(list(labels), dtype=np.int64), index, poisoned,
                    classes, {"source": source, "split": name, **meta})


def originals(clean_train: ImageSet, rows: np.ndarray, source: str) -> ImageSet:
    """The clean originals of the poisoned training rows (for PSNR and the defender's clean view)."""
    rows = np.sort(rows)
    return split(clean_train.images[rows], clean_train.labels[rows], clean_train.index[rows],
                 np.zeros(len(rows), bool), clean_train.classes, source, "originals")


def assemble(fmt: str, path: Path, clean_spec: str | None, splits: dict[str, ImageSet], kind: str,
             **meta: Any) -> Dataset:
    """The imported Dataset; dataset meta records where it came from and what kind of poison it holds."""
    source = f"{fmt}:{path}"
    info = {"format": fmt, "path": str(path), "clean": clean_spec}
    return Dataset(source, splits, {"source": source, "imported": info, "attack": {"attack.name": f"import:{fmt}"},
                                    "attack_kind": kind, **meta})
