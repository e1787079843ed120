"""Dataset sources: ``digits``, ``cifar10``, ``cifar100``, ``svhn``, ``npz:PATH``, ``folder:PATH``, ``parquet:PATH``.

:func:`load_dataset` turns a spec string into a :class:`Dataset` with at least a
``train`` and a ``test`` split. torchvision sources download into ``data_dir``
when their files are missing (the only place eclipse_ray touches the network);
``digits`` ships with scikit-learn, so the smoke preset and the tests run
offline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from eclipse_ray.config import ConfigError
from eclipse_ray.data.imageset import ImageSet, validate_arrays
from eclipse_ray.data.store import read_dataset

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Dataset:
    """Named splits (``train``, ``test``, and for poisoned datasets ``test_triggered``, ``originals``)."""

    name: str
    splits: dict[str, ImageSet]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> ImageSet:
        return self.splits["train"]

    @property
    def test(self) -> ImageSet:
        return self.splits["test"]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


def default_data_dir() -> Path:
    return Path(os.environ.get("ECLIPSE_RAY_DATA", Path.home() / ".cache" / "eclipse_ray" / "data"))


def _split(images: np.ndarray, labels: np.ndarray, index: np.ndarray, classes: tuple[str, ...],
           source: str, split: str) -> ImageSet:
    validate_arrays(images, labels, len(classes), what=f"{source} {split}")
    return ImageSet(images, labels.astype(np.int64), index.astype(np.int64), np.zeros(len(images), bool),
                    classes, {"source": source, "split": split})


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class train/test row split."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(rows) * test_fraction))
        test.append(rows[:k])
        train.append(rows[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(size: int = 32) -> Dataset:
    """scikit-learn's bundled 8x8 digits, bilinearly upscaled to ``size`` px RGB; fixed 80/20 split."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    gray = np.rint(x[:, 0].numpy() * 255).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    labels = d.target.astype(np.int64)
    classes = tuple(str(c) for c in range(10))
    tr, te = stratified_split(labels, 0.2, seed=0)
    return Dataset("digits", {
        "train": _split(images[tr], labels[tr], tr, classes, "digits", "train"),
        "test": _split(images[te], labels[te], te, classes, "digits", "test"),
    }, {"source": "digits"})


def _torchvision(name: str, data_dir: Path, download: bool) -> Dataset:
    import torchvision.datasets as tvd

    root = data_dir / name
    try:
        if name == "svhn":
            tr = tvd.SVHN(str(root), split="train", download=download)
            te = tvd.SVHN(str(root), split="test", download=download)
            x_tr, y_tr = tr.data.transpose(0, 2, 3, 1), np.asarray(tr.labels)
            x_te, y_te = te.data.transpose(0, 2, 3, 1), np.asarray(te.labels)
            classes = tuple(str(c) for c in range(10))
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            tr = cls(str(root), train=True, download=download)
            te = cls(str(root), train=False, download=download)
            x_tr, y_tr, x_te, y_te = tr.data, np.asarray(tr.targets), te.data, np.asarray(te.targets)
            classes = tuple(tr.classes)
    except RuntimeError as e:
        raise ConfigError(f"{name}: files not found in {root} ({e}); run once with network access "
                          f"or pass --data-dir holding the standard files") from None
    except OSError as e:
        raise ConfigError(f"{name}: could not download to {root} ({e}); pass --data-dir holding the "
                          f"standard files") from None
    return Dataset(name, {
        "train": _split(np.ascontiguousarray(x_tr), y_tr, np.arange(len(y_tr)), classes, name, "train"),
        "test": _split(np.ascontiguousarray(x_te), y_te, np.arange(len(y_te)), classes, name, "test"),
    }, {"source": name})


def load_npz(path: str | Path) -> Dataset:
    """``x_train, y_train, x_test, y_test`` (uint8 NHWC); optional ``classes``. Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"npz:{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError:
        raise ConfigError(f"npz:{path}: not a valid .npz of plain arrays (pickled objects are refused, "
                          f"never loaded)") from None
    except Exception as e:  # zipfile.BadZipFile, OSError, ...
        raise ConfigError(f"npz:{path}: not a valid .npz file ({type(e).__name__})") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ConfigError(f"npz:{path}: missing array(s) {', '.join(missing)}")
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        if x.ndim == 3 and x.dtype == np.uint8:  # grayscale NHW
            arrays[f"x_{split}"] = np.repeat(x[..., None], 3, axis=-1)
        elif x.ndim == 4 and x.shape[-1] == 1 and x.dtype == np.uint8:
            arrays[f"x_{split}"] = np.repeat(x, 3, axis=-1)
    if "classes" in arrays:
        classes = tuple(str(c) for c in arrays["classes"])
    else:
        y = np.asarray(arrays["y_train"])
        if y.size == 0 or not np.issubdtype(y.dtype, np.number):
            raise ConfigError(f"npz:{path}: y_train is empty or not numeric")
        n_cls = int(np.nanmax(y)) + 1 if not np.isnan(np.asarray(y, float)).any() else 0
        if n_cls > 0 and np.issubdtype(y.dtype, np.integer):
            present = np.unique(y[y >= 0])
            if len(present) != n_cls:
                gaps = sorted(set(range(n_cls)) - set(present.tolist()))[:5]
                raise ConfigError(f"npz:{path}: labels must be 0..C-1 with every class present; "
                                  f"classes {gaps} have no training image (store a 'classes' array to declare C)")
        classes = tuple(str(c) for c in range(max(n_cls, 1)))
    src = f"npz:{path}"
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], np.asarray(arrays[f"y_{split}"])
        validate_arrays(x, y, len(classes), what=f"{src} {split}")
        out[split] = _split(np.ascontiguousarray(x), y.astype(np.int64), np.arange(len(y)), classes, src, split)
    if out["train"].image_shape != out["test"].image_shape:
        raise ConfigError(f"{src}: train images {out['train'].image_shape} and test images "
                          f"{out['test'].image_shape} differ in shape")
    return Dataset(src, out, {"source": src})


def _read_folder_split(root: Path, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    images, labels, names = [], [], []
    shape = None
    for k, cls in enumerate(classes):
        if not (root / cls).is_dir():
            continue
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except Exception as e:
                raise ConfigError(f"folder: cannot read image {f} ({type(e).__name__})") from None
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise ConfigError(f"folder: {f} is {arr.shape[1]}x{arr.shape[0]}, others are {shape[1]}x{shape[0]}; "
                                  f"resize the folder to one image size first")
            images.append(arr)
            labels.append(k)
            names.append(str(f.relative_to(root)))
    if not images:
        raise ConfigError(f"folder: no images under {root} (empty set)")
    return np.stack(images), np.asarray(labels, np.int64), names


def load_folder(path: str | Path) -> Dataset:
    """Class sub-folders of images; ``train/`` and ``test/`` sub-trees if present, else a fixed 80/20 split."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"folder:{path}: no such directory")
    src = f"folder:{path}"
    has_splits = (path / "train").is_dir() and (path / "test").is_dir()
    top = path / "train" if has_splits else path
    classes = tuple(sorted(d.name for d in top.iterdir() if d.is_dir()))
    if not classes:
        raise ConfigError(f"{src}: no class sub-folders (empty set)")
    if has_splits:
        x_tr, y_tr, _ = _read_folder_split(path / "train", classes)
        test_classes = tuple(sorted(d.name for d in (path / "test").iterdir() if d.is_dir()))
        if not set(test_classes) <= set(classes):
            raise ConfigError(f"{src}: test has classes not in train: {sorted(set(test_classes) - set(classes))}")
        x_te, y_te, _ = _read_folder_split(path / "test", classes)
        idx_tr, idx_te = np.arange(len(y_tr)), np.arange(len(y_te))
    else:
        x, y, _ = _read_folder_split(path, classes)
        idx_tr, idx_te = stratified_split(y, 0.2, seed=0)
        x_tr, y_tr, x_te, y_te = x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ConfigError(f"{src}: train and test images differ in size")
    return Dataset(src, {"train": _split(x_tr, y_tr, idx_tr, classes, src, "train"),
                         "test": _split(x_te, y_te, idx_te, classes, src, "test")}, {"source": src})


def load_parquet(path: str | Path) -> Dataset:
    """A dataset directory written by eclipse_ray (``eclipse-ray poison`` / ``purify``)."""
    splits, meta = read_dataset(path)
    for need in ("train", "test"):
        if need not in splits:
            raise ConfigError(f"parquet:{path}: needs a {need!r} split (has {', '.join(splits)})")
    return Dataset(f"parquet:{path}", splits, meta)


NAMED: dict[str, Callable[[Path, bool], Dataset]] = {
    "digits": lambda data_dir, download: load_digits(),
    "cifar10": lambda data_dir, download: _torchvision("cifar10", data_dir, download),
    "cifar100": lambda data_dir, download: _torchvision("cifar100", data_dir, download),
    "svhn": lambda data_dir, download: _torchvision("svhn", data_dir, download),
}
PREFIXED: dict[str, Callable[[str], Dataset]] = {"npz": load_npz, "folder": load_folder, "parquet": load_parquet}
DESCRIPTIONS = {
    "digits": "scikit-learn's bundled 8x8 digits upscaled to 32x32 RGB (1,437 train / 360 test, offline)",
    "cifar10": "CIFAR-10 via torchvision (downloads to --data-dir if missing)",
    "cifar100": "CIFAR-100 via torchvision (downloads to --data-dir if missing)",
    "svhn": "SVHN via torchvision (downloads to --data-dir if missing)",
    "npz:PATH": "x_train, y_train, x_test, y_test uint8 NHWC arrays (optional 'classes')",
    "folder:PATH": "class sub-folders of images; train/ and test/ sub-trees, or a fixed 80/20 split",
    "parquet:PATH": "an eclipse_ray dataset directory (e.g. written by `eclipse-ray poison`)",
}


def load_dataset(spec: str, data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Load a dataset from its spec string (see ``eclipse-ray list``)."""
    if spec in NAMED:
        return NAMED[spec](Path(data_dir) if data_dir else default_data_dir(), download)
    kind, sep, rest = spec.partition(":")
    if sep and kind in PREFIXED:
        if not rest:
            raise ConfigError(f"dataset {spec!r}: give a path after '{kind}:'")
        return PREFIXED[kind](rest)
    if Path(spec).is_dir() and (Path(spec) / "meta.json").is_file():
        return load_parquet(spec)
    raise ConfigError(f"unknown dataset {spec!r} (known: {', '.join(DESCRIPTIONS)})")
