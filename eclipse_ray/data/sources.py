"""Dataset sources: ``digits``, ``cifar10``, ``cifar100``, ``svhn``, ``cifar10-jpeg``, ``npz:PATH``,
``folder:PATH`` (a folder or a tar archive of one), ``parquet:PATH``.

:func:`load_dataset` turns a spec string into a :class:`Dataset` with at least a
``train`` and a ``test`` split. torchvision sources download into ``data_dir``
when their files are missing (the only place eclipse_ray touches the network);
``digits`` ships with scikit-learn, so the smoke preset and the tests run
offline.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import warnings
import zlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import numpy as np

from eclipse_ray.config import ConfigError
from eclipse_ray.data.fingerprint import sha256_file, sha256_tree
from eclipse_ray.data.imageset import ImageSet, classes_from_labels, validate_arrays
from eclipse_ray.data.store import read_dataset
from eclipse_ray.registry import Registry
from eclipse_ray import storage
from eclipse_ray.storage import replacing

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the checkout
CIFAR10_JPEG_ENV = "ECLIPSE_RAY_CIFAR10_JPEG"
CIFAR10_JPEG_DEFAULT = SHARED_DATA / "cifar10_jpeg.tar.gz"
SUBSET_ENV = "ECLIPSE_RAY_SUBSET"
SUBSET_DEFAULT = SHARED_DATA / "cifar10_subset.npz"
# The published files behind the named sources (../shared/data/README.md): a name stands for these bytes on
# every machine, wherever the file lies; any other file is read by its path (npz:PATH, folder:PATH).
SHIPPED_SHA256 = {
    "cifar10-subset": "b407fc95953c1239ef30d8958225dfcd1688aadeabb60c09d838c10270e6505d",
    "cifar10-jpeg": "f170b792786df4654329943017f173d7916c847d20d769cfa329dc37c74c97f8",
}
# How studies spelled a named source before it had a name: the published subset rows and caches were computed
# under this spec (its file at /work/shared/data on the machine that made them). A stored row or cached
# artifact under it is the named source's (the same file, checked by SHIPPED_SHA256), on every machine.
FORMER_SPECS = {"cifar10-subset": ("npz:/work/shared/data/cifar10_subset.npz",)}
_DECODED_VERSION = 1  # bump when decoding changes, so cached arrays are not reused
FOLDER_DEPTH = 3  # how deep folder: reads (split/class/image)
Payload = Union[bytes, Callable[[], bytes], None]  # a file's bytes or a reader of them; None: a folder


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


def clean_reference_rows(train: ImageSet, fraction: float, seed: int) -> np.ndarray:
    """Rows of the defender's clean reference set: a stratified ``fraction`` of the training split."""
    _, rows = stratified_split(train.labels, fraction, seed=seed)
    if len(rows) == 0:
        raise ConfigError(f"train.clean_fraction={fraction}: selects no image of {len(train)}")
    return rows


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
    data = from_arrays(f"npz:{path}", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                       arrays.get("classes"))
    data.meta["fingerprint"] = sha256_file(path)  # the content fingerprint in rows and reports (dataset_label)
    return data


def from_arrays(src: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                classes: Iterable[Any] | None = None) -> Dataset:
    """A dataset named ``src`` from uint8 NHWC (or grayscale NHW / NHW1) images and integer labels 0..C-1,
    every class present in the training split unless ``classes`` declares C; validated as any source."""
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        if x.ndim == 3 and x.dtype == np.uint8:  # grayscale NHW
            arrays[f"x_{split}"] = np.repeat(x[..., None], 3, axis=-1)
        elif x.ndim == 4 and x.shape[-1] == 1 and x.dtype == np.uint8:
            arrays[f"x_{split}"] = np.repeat(x, 3, axis=-1)
    if classes is not None:
        classes = tuple(str(c) for c in classes)
    else:
        y = np.asarray(arrays["y_train"])
        if y.size == 0 or not np.issubdtype(y.dtype, np.number):
            raise ConfigError(f"{src}: y_train is empty or not numeric")
        n_cls = classes_from_labels(y, len(y), f"{src} y_train")  # bounded before any per-class work
        if n_cls > 0 and np.issubdtype(y.dtype, np.integer):
            present = np.unique(y[y >= 0])
            if len(present) != n_cls:
                gaps = sorted(set(range(n_cls)) - set(present.tolist()))[:5]
                raise ConfigError(f"{src}: labels must be 0..C-1 with every class present; "
                                  f"classes {gaps} have no training image (store a 'classes' array to declare C)")
        classes = tuple(str(c) for c in range(max(n_cls, 1)))
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], np.asarray(arrays[f"y_{split}"])
        validate_arrays(x, y, len(classes), what=f"{src} {split}")
        out[split] = _split(np.ascontiguousarray(x), y.astype(np.int64), np.arange(len(y)), classes, src, split)
    if out["train"].image_shape != out["test"].image_shape:
        raise ConfigError(f"{src}: train images {out['train'].image_shape} and test images "
                          f"{out['test'].image_shape} differ in shape")
    return Dataset(src, out, {"source": src})


def _scan_dir(root: Path, rel: str = "", depth: int = FOLDER_DEPTH) -> Iterator[tuple[str, Payload]]:
    """``(relative path, opener)`` for files, ``(path, None)`` for folders, ``depth`` levels deep."""
    with os.scandir(root) as it:
        found = list(it)
    for e in found:
        name = f"{rel}{e.name}"
        if e.is_dir():
            yield name, None
            if depth > 1:
                yield from _scan_dir(Path(e.path), f"{name}/", depth - 1)
        else:
            yield name, Path(e.path).read_bytes


def _scan_archive(path: Path, src: str) -> tuple[list[tuple[str, Payload]], str]:
    """One streaming pass over a tar archive: image members' bytes, other files as ``b""``, folders as
    ``None``; links, absolute and ``..`` names are refused. A single top-level folder holding folders
    is a wrapper: it is dropped from the names and returned (``"W/"``, else ``""``)."""
    entries: list[tuple[str, Payload]] = []
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                if m.name.startswith("/") or ".." in m.name.split("/"):
                    raise ConfigError(f"{src}: refusing archive member {m.name!r} (absolute path or '..')")
                if m.issym() or m.islnk():
                    raise ConfigError(f"{src}: refusing link member {m.name!r} -> {m.linkname!r} "
                                      f"(links in archives are never followed)")
                name = "/".join(p for p in m.name.split("/") if p not in ("", "."))
                if not name:
                    continue
                if m.isdir():
                    entries.append((name, None))
                elif m.isfile():  # devices, fifos: skipped
                    image = Path(name).suffix.lower() in IMAGE_SUFFIXES
                    entries.append((name, tf.extractfile(m).read() if image else b""))  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ConfigError(f"{src}: not a readable tar archive ({type(e).__name__}: {e})") from None
    tops = {n.split("/", 1)[0] for n, _ in entries}
    wrapper = next(iter(tops)) if len(tops) == 1 else None
    if wrapper and any(n.count("/") >= 2 or (b is None and n.count("/") == 1) for n, b in entries) \
            and not any(n == wrapper and b is not None for n, b in entries):
        return [(n[len(wrapper) + 1:], b) for n, b in entries if n != wrapper], f"{wrapper}/"
    return entries, ""


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)


def _read_tree(src: str, entries: Iterable[tuple[str, Payload]],
               where: Callable[[str], str]) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Arrays (``x_/y_/i_`` + ``train``/``test``) and classes of an ImageFolder tree given as
    ``(posix relative path, bytes or opener)`` entries (``None``: a folder); ``where`` names a path in messages."""
    files: dict[str, dict[str, Payload]] = {}  # folder -> {file name: payload}
    subdirs: dict[str, set[str]] = {}  # folder -> sub-folder names
    for name, payload in entries:
        parent, _, base = name.rpartition("/")
        if payload is not None:
            files.setdefault(parent, {})[base] = payload
        else:
            subdirs.setdefault(parent, set()).add(base)
        while parent:  # folders implied by deeper paths
            parent, _, base = parent.rpartition("/")
            subdirs.setdefault(parent, set()).add(base)

    def read_split(prefix: str, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        rows = [(k, f"{prefix}{cls}/{f}", payload) for k, cls in enumerate(classes)
                for f, payload in sorted(files.get(f"{prefix}{cls}", {}).items())
                if Path(f).suffix.lower() in IMAGE_SUFFIXES]
        if not rows:
            raise ConfigError(f"folder: no images under {where(prefix.rstrip('/'))} (empty set)")
        images: np.ndarray | None = None
        for i, (_, rel, payload) in enumerate(rows):
            try:
                arr = _decode(payload if isinstance(payload, bytes) else payload())
            except Exception as e:
                raise ConfigError(f"folder: cannot read image {where(rel)} ({type(e).__name__})") from None
            if images is None:
                images = np.empty((len(rows), *arr.shape), np.uint8)
            elif arr.shape != images.shape[1:]:
                h, w = images.shape[1:3]
                raise ConfigError(f"folder: {where(rel)} is {arr.shape[1]}x{arr.shape[0]}, others are {w}x{h}; "
                                  f"resize the folder to one image size first")
            images[i] = arr
        return images, np.asarray([k for k, _, _ in rows], np.int64)  # type: ignore[return-value]

    top = subdirs.get("", set())
    has_splits = "train" in top and "test" in top
    classes = tuple(sorted(subdirs.get("train" if has_splits else "", set())))
    if not classes:
        raise ConfigError(f"{src}: no class sub-folders (empty set)")
    if has_splits:
        x_tr, y_tr = read_split("train/", classes)
        test_classes = subdirs.get("test", set())
        if not test_classes <= set(classes):
            raise ConfigError(f"{src}: test has classes not in train: {sorted(test_classes - set(classes))}")
        x_te, y_te = read_split("test/", classes)
        idx_tr, idx_te = np.arange(len(y_tr)), np.arange(len(y_te))
    else:
        x, y = read_split("", classes)
        idx_tr, idx_te = stratified_split(y, 0.2, seed=0)
        x_tr, y_tr, x_te, y_te = x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ConfigError(f"{src}: train and test images differ in size")
    return {"x_train": x_tr, "y_train": y_tr, "i_train": idx_tr,
            "x_test": x_te, "y_test": y_te, "i_test": idx_te}, classes


def _tree_dataset(src: str, arrays: dict[str, np.ndarray], classes: tuple[str, ...], meta: dict[str, Any]) -> Dataset:
    return Dataset(src, {s: _split(arrays[f"x_{s}"], arrays[f"y_{s}"], arrays[f"i_{s}"], classes, src, s)
                                 for s in ("train", "test")}, {"source": src, **meta})


def check_shipped(name: str, path: Path) -> str:
    """``path``'s sha256, which must be that of the published file behind the named source ``name``."""
    digest = sha256_file(path)
    if digest != SHIPPED_SHA256[name]:
        raise ConfigError(f"{name}: {path} is not the published file (sha256 {digest[:12]}…, expected "
                          f"{SHIPPED_SHA256[name][:12]}…); read another file as "
                          f"{'npz' if path.suffix == '.npz' else 'folder'}:PATH")
    return digest


def _read_archive(path: Path, src: str, cache_dir: str | Path | None
                  ) -> tuple[dict[str, np.ndarray], tuple[str, ...], str]:
    """Decoded arrays of a tar'd ImageFolder tree, cached as ``.npz`` under ``cache_dir/decoded``
    (default: :func:`default_data_dir`), keyed by the archive's sha256."""
    digest = sha256_file(path)
    cache = Path(cache_dir or default_data_dir()) / "decoded" / f"folder-v{_DECODED_VERSION}-{digest}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            return arrays, tuple(str(c) for c in arrays.pop("classes")), digest
        except Exception as e:  # a damaged cache file is decoded again and rewritten
            warnings.warn(f"{src}: ignoring unreadable decoded cache {cache} ({type(e).__name__})", stacklevel=2)
    entries, wrapper = _scan_archive(path, src)
    arrays, classes = _read_tree(src, entries, lambda rel: f"{path}:{wrapper}{rel}" if rel or wrapper else str(path))
    try:
        with replacing(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, classes=np.asarray(classes, dtype=str), **arrays)
    except OSError as e:
        warnings.warn(f"{src}: could not write decoded cache {cache} ({e})", stacklevel=2)
    return arrays, classes, digest


def load_folder(path: str | Path, cache_dir: str | Path | None = None) -> Dataset:
    """Class sub-folders of images; ``train/`` and ``test/`` sub-trees if present, else a fixed 80/20 split.

    ``path`` is a folder or a tar archive (``.tar``, ``.tar.gz``/``.tgz``, ...) of one, read without
    unpacking (one top-level wrapper folder allowed); an archive's decoded arrays are cached under ``cache_dir``.
    """
    path = Path(path)
    src = f"folder:{path}"
    if path.is_dir():
        arrays, classes = _read_tree(src, _scan_dir(path), lambda rel: str(path / rel))
        return _tree_dataset(src, arrays, classes, {"fingerprint": tree_digest(path)})
    if not path.is_file():
        raise ConfigError(f"folder:{path}: no such directory or archive")
    arrays, classes, digest = _read_archive(path, src, cache_dir)
    return _tree_dataset(src, arrays, classes, {"archive_sha256": digest, "fingerprint": digest})


def tree_digest(root: str | Path) -> str:
    """The content fingerprint of an image folder: the images ``folder:`` reads (:func:`sha256_tree`)."""
    return sha256_tree(root, IMAGE_SUFFIXES, depth=FOLDER_DEPTH)


def cifar10_jpeg_path() -> Path:
    """``$ECLIPSE_RAY_CIFAR10_JPEG``, else ``../shared/data/cifar10_jpeg.tar.gz`` beside the checkout."""
    return Path(os.environ.get(CIFAR10_JPEG_ENV, CIFAR10_JPEG_DEFAULT))


def load_cifar10_jpeg(cache_dir: str | Path | None = None) -> Dataset:
    """All 60,000 CIFAR-10 images re-encoded as JPEG (quality 75, 4:2:0), from the archive of
    :func:`cifar10_jpeg_path`; decoded once, then cached under ``cache_dir``."""
    path = cifar10_jpeg_path()
    if not path.is_file():
        raise ConfigError(f"cifar10-jpeg: no archive at {path}; set ${CIFAR10_JPEG_ENV} to cifar10_jpeg.tar.gz")
    check_shipped("cifar10-jpeg", path)
    arrays, classes, digest = _read_archive(path, "cifar10-jpeg", cache_dir)
    if classes != CIFAR10_CLASSES:
        raise ConfigError(f"cifar10-jpeg: {path} has class folders {', '.join(classes)}, "
                          f"expected CIFAR-10's {', '.join(CIFAR10_CLASSES)}")
    return _tree_dataset("cifar10-jpeg", arrays, classes, {
        "archive": str(path), "archive_sha256": digest, "fingerprint": digest, "jpeg_quality": 75, "chroma_subsampling": "4:2:0",
        "note": "CIFAR-10 re-encoded as JPEG (quality 75, 4:2:0), lossy: not the original pixels"})


def cifar10_subset_path() -> Path:
    """``$ECLIPSE_RAY_SUBSET``, else ``../shared/data/cifar10_subset.npz`` beside the checkout."""
    return Path(os.environ.get(SUBSET_ENV, SUBSET_DEFAULT))


def load_cifar10_subset() -> Dataset:
    """The 4,660/932-image lossless CIFAR-10 subset (``cifar10_subset.npz`` of :func:`cifar10_subset_path`),
    named by what it is rather than where it lies: its rows and caches are the same on every machine."""
    path = cifar10_subset_path()
    if not path.is_file():
        raise ConfigError(f"cifar10-subset: no file at {path}; set ${SUBSET_ENV} to cifar10_subset.npz")
    check_shipped("cifar10-subset", path)
    data = load_npz(path)
    return dataclasses.replace(data, name="cifar10-subset", meta={**data.meta, "file": str(path)})


def npz_spec(path: str | Path) -> str:
    """The dataset spec of an ``.npz`` file: the named source where it is the published subset (by content,
    wherever it lies), else ``npz:PATH``."""
    path = Path(path)
    return "cifar10-subset" if path.is_file() and sha256_file(path) == SHIPPED_SHA256["cifar10-subset"] else f"npz:{path}"


def former_specs(spec: str) -> tuple[str, ...]:
    """Other spellings under which rows of ``spec`` were stored: the named subset as the published rows read
    it by path (:data:`FORMER_SPECS`). Rows a machine stored under its own path before are not among them."""
    return FORMER_SPECS.get(spec, ())


def load_parquet(path: str | Path) -> Dataset:
    """A dataset directory written by eclipse_ray (``eclipse-ray poison`` / ``purify``)."""
    splits, meta = read_dataset(path)
    for need in ("train", "test"):
        if need not in splits:
            raise ConfigError(f"parquet:{path}: needs a {need!r} split (has {', '.join(splits)})")
    doc = storage.join(str(path), "meta.json")  # lists every shard's checksum: a fingerprint of the content
    return Dataset(f"parquet:{path}", splits, {**meta, "fingerprint": storage.sha256(storage.read_bytes(doc))})


NAMED: dict[str, Callable[[Path, bool], Dataset]] = {
    "digits": lambda data_dir, download: load_digits(),
    "cifar10": lambda data_dir, download: _torchvision("cifar10", data_dir, download),
    "cifar100": lambda data_dir, download: _torchvision("cifar100", data_dir, download),
    "svhn": lambda data_dir, download: _torchvision("svhn", data_dir, download),
    "cifar10-jpeg": lambda data_dir, download: load_cifar10_jpeg(data_dir),
    "cifar10-subset": lambda data_dir, download: load_cifar10_subset(),
}
PREFIXED: dict[str, Callable[[str], Dataset]] = {"npz": load_npz, "folder": load_folder, "parquet": load_parquet}
DESCRIPTIONS = {
    "digits": "scikit-learn's bundled 8x8 digits upscaled to 32x32 RGB (1,437 train / 360 test, offline)",
    "cifar10": "CIFAR-10 via torchvision (downloads to --data-dir if missing)",
    "cifar100": "CIFAR-100 via torchvision (downloads to --data-dir if missing)",
    "svhn": "SVHN via torchvision (downloads to --data-dir if missing)",
    "cifar10-jpeg": f"all 60,000 CIFAR-10 images re-encoded as JPEG (q75, 4:2:0; lossy) from "
                    f"../shared/data/cifar10_jpeg.tar.gz or ${CIFAR10_JPEG_ENV} (the published archive, checked by its "
                    f"sha256); decoded once, cached in --data-dir",
    "cifar10-subset": f"4,660 train / 932 test CIFAR-10 images, lossless, from ../shared/data/cifar10_subset.npz "
                      f"or ${SUBSET_ENV} (the published file, checked by its sha256)",
    "npz:PATH": "x_train, y_train, x_test, y_test uint8 NHWC arrays (optional 'classes')",
    "folder:PATH": "class sub-folders of images; train/ and test/ sub-trees, or a fixed 80/20 split; "
                   "or a .tar/.tar.gz/.tgz of such a folder (read without unpacking, decoded once, cached)",
    "parquet:PATH": "an eclipse_ray dataset directory (e.g. written by `eclipse-ray poison`)",
}


# Dataset sources from plugins: NAME (or NAME:ARG) -> f(arg, data_dir) -> Dataset with train and test
# splits; the first line of its docstring is its ``eclipse-ray list`` entry.
DATASETS: Registry = Registry("dataset", {}, group="eclipse_ray.datasets", reserved=[*NAMED, *PREFIXED])


def short_name(spec: str) -> str:
    """A dataset spec without the machine's paths: ``npz:/a/b/cifar10_subset.npz`` -> ``cifar10_subset.npz``."""
    kind, sep, rest = spec.partition(":")
    if spec in NAMED or not (sep and kind in PREFIXED) and not ("/" in spec or os.sep in spec):
        return spec
    return Path((rest if sep and kind in PREFIXED else spec).rstrip("/\\")).name or spec


FINGERPRINTED = re.compile(r"^(?P<name>.+)@(?P<digest>[0-9a-f]{8})$")  # a dataset_label's name@fingerprint


def dataset_label(spec: str, meta: dict[str, Any]) -> str:
    """How rows, plots and reports name a dataset: its short name and, where known, a content fingerprint
    (``cifar10_subset.npz@b407fc95``), never one machine's absolute path."""
    digest = meta.get("fingerprint")
    return f"{short_name(spec)}@{str(digest)[:8]}" if digest else short_name(spec)


def descriptions() -> dict[str, str]:
    """Every dataset spec form with its one-line description (built-ins, then plugins)."""
    out = dict(DESCRIPTIONS)
    for name in DATASETS:
        doc = (DATASETS[name].__doc__ or "").strip().splitlines()
        out[f"{name}[:ARG]"] = (doc[0] if doc else "") + f" ({DATASETS.origin.get(name, 'plugin')})"
    return out


def load_dataset(spec: str, data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Load a dataset from its spec string (see ``eclipse-ray list``)."""
    if spec in NAMED:
        return NAMED[spec](Path(data_dir) if data_dir else default_data_dir(), download)
    kind, sep, rest = spec.partition(":")
    if kind not in PREFIXED and kind in DATASETS:
        return _from_plugin(spec, kind, rest, Path(data_dir) if data_dir else default_data_dir())
    if sep and kind in PREFIXED:
        if not rest:
            raise ConfigError(f"dataset {spec!r}: give a path after '{kind}:'")
        if kind == "folder":
            return load_folder(rest, cache_dir=data_dir)
        return PREFIXED[kind](rest)
    if Path(spec).is_dir() and (Path(spec) / "meta.json").is_file():
        return load_parquet(spec)
    raise ConfigError(f"unknown dataset {spec!r} (known: {', '.join(descriptions())})")


def _from_plugin(spec: str, name: str, arg: str, data_dir: Path) -> Dataset:
    data = DATASETS[name](arg, data_dir)
    if not isinstance(data, Dataset):
        raise ConfigError(f"dataset {spec!r}: its plugin returned {type(data).__name__}, not a Dataset")
    for need in ("train", "test"):
        if need not in data.splits:
            raise ConfigError(f"dataset {spec!r}: needs a {need!r} split (has {', '.join(data.splits)})")
    return dataclasses.replace(data, name=spec) if data.name != spec else data
