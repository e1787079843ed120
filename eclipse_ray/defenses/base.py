"""What every defense shares: its config base, and the one way images are purified.

A *purification* defense rewrites the training images once, offline, keeping
every sample's index, label and poison flag (checked by the caller). It says how
in one place, :meth:`DefenseConfig.image_purifier`: f(uint8 NHWC images, index)
-> images, with any model loaded once. Every purification runs that function
over the same fixed row ranges (:func:`chunk_rows`; the model batches inside
them fixed by :func:`fixed_shape`):

* in memory, :meth:`DefenseConfig.purify` (a lone ``eclipse-ray run``, certify,
  the adaptive attack) — :func:`purify_in_batches` over the set;
* from storage, :mod:`eclipse_ray.distributed.purify` — one work unit per row
  range, in-process or on Ray Data actors (``eclipse-ray purify``, a study's
  purify stage, a Tune trial whose purified set is missing).

A defense may also ask for a per-batch transform during victim training
(:meth:`DefenseConfig.train_transform`), which is how ECLIPSE's public code
applies its compensation. A *training-time* defense (V&B) replaces victim
training altogether (:meth:`DefenseConfig.train_victim`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from eclipse_ray.config import Config
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.victim.train import BatchTransform, Victim, VictimConfig

ImagePurifier = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (uint8 NHWC images, index) -> images


CHUNK_ROWS = 512  # rows per purifier call (a storage work unit), rounded up to a multiple of the batch size


def chunk_rows(batch_size: int, rows: int = CHUNK_ROWS) -> int:
    """Rows per purifier call: ``rows`` rounded up to a multiple of ``batch_size`` (several model
    batches per call, which the purifier runs side by side; see :func:`fixed_shape`)."""
    return -(-max(rows, batch_size) // batch_size) * batch_size


def purify_in_batches(run: ImagePurifier, train: ImageSet, chunk: int, desc: str,
                      progress: bool = True) -> np.ndarray:
    """``run`` over ``train``, ``chunk`` rows per call (the in-memory loop), with progress."""
    from tqdm.auto import tqdm

    out = np.empty_like(train.images)
    bar = tqdm(total=len(train), desc=desc, unit="img", disable=not progress, leave=False)
    for i in range(0, len(train), chunk):
        sl = slice(i, i + chunk)
        got = run(train.images[sl], train.index[sl])
        if got.shape != train.images[sl].shape or got.dtype != np.uint8:
            raise RuntimeError(f"{desc}: rows {i}:{i + len(got)} came back as {got.dtype}{tuple(got.shape)}, "
                               f"expected uint8{tuple(train.images[sl].shape)}")
        out[sl] = got
        bar.update(len(got))
    bar.close()
    return out


def fixed_shape(run: ImagePurifier, rows: int, device: torch.device, parallel: bool = True) -> ImagePurifier:
    """``run`` called on exactly ``rows`` images at a time (the tail padded with copies of its last row,
    whose outputs are dropped), each call on one CPU thread when on the CPU.

    A network's float arithmetic depends on the batch shape and, on the CPU, on the thread
    count — never on which samples share a batch or where a sample sits in it (measured:
    0.0 difference under any composition at a fixed shape; up to 3e-6 between shapes, which
    flips a few uint8 pixels by 1/255). Fixing both makes a purified image a function of
    its pixels, its index, the seed and the settings only: not of batching, shards,
    chunks, actors or Ray Data's blocks. On the CPU the calls of one request run side by
    side on as many Python threads as torch had intra-op threads (each call single-threaded:
    the same arithmetic, the cores still used); actors add parallelism across processes.
    """
    def pad(images: np.ndarray, index: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        x, ix = images[i:i + rows], index[i:i + rows]
        n = len(x)
        if n < rows:
            x = np.concatenate([x, np.repeat(x[-1:], rows - n, axis=0)])
            ix = np.concatenate([ix, np.repeat(ix[-1:], rows - n)])
        return x, ix, n

    def call(args: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
        x, ix, n = args
        return run(x, ix)[:n]

    def fixed(images: np.ndarray, index: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return images.copy()
        jobs = [pad(images, index, i) for i in range(0, len(images), rows)]
        if device.type != "cpu":
            return np.concatenate([call(j) for j in jobs])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if parallel and threads > 1 and len(jobs) > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(min(threads, len(jobs))) as pool:
                    return np.concatenate(list(pool.map(call, jobs)))
            return np.concatenate([call(j) for j in jobs])
        finally:
            torch.set_num_threads(threads)

    return fixed


@dataclass(frozen=True)
class DefenseConfig(Config):
    section: ClassVar[str] = "defense"
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # True where a purified row is the same bytes whichever rows share its call (model batches through
    # fixed_shape): a set sharing rows with one already purified then copies them (distributed.purify)
    row_wise: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "purify" in vars(cls):  # one purification path: in memory and on storage alike
            raise TypeError(f"{cls.__qualname__}: implement image_purifier(model_dir, seed) -> "
                            f"f(images, index), not purify (see eclipse_ray.defenses.base)")

    def purify(self, train: ImageSet, seed: int, progress: bool = True,
               clean: ImageSet | None = None) -> ImageSet:
        """The purified training set (same samples, new pixels): :meth:`image_purifier` over ``train``.

        ``clean`` (aligned to ``train``) holds the clean originals and their true labels,
        from which defenses that need a clean reference set (ECLIPSE) draw theirs. Not
        meant to be overridden: a defense purifies through :meth:`image_purifier`, so that
        in-memory and storage-to-storage purification give the same bytes.
        """
        if not self.purifies:
            return train
        self.check_images(train.image_shape)  # before any model is trained
        model_dir = self.model_path(train, clean, progress) if self.needs_model else None
        if model_dir is not None:
            self.check_model(model_dir, train.image_shape)
        run = self.image_purifier(model_dir, seed)
        out = purify_in_batches(run, train, self.chunk_rows(), f"purify {self.name}", progress)
        return train.with_images(out, resolved=self.model_resolved(model_dir) if model_dir is not None else {})

    def train_transform(self) -> BatchTransform | None:
        """A transform applied to every training batch, or ``None``."""
        return None

    def train_victim(self, victim_cfg: VictimConfig, train: ImageSet, seed: int,
                     progress: bool = True) -> tuple[Victim, dict[str, Any]] | None:
        """A training-time defense's own training: (model to evaluate, extra result columns).

        ``None`` (the default) means: train the victim normally. ``train.poisoned`` is the
        ground truth; a defense may use it only for the metrics it returns.
        """
        return None

    @property
    def trains_victim(self) -> bool:
        """Whether this defense trains the victim its own way (a training-time defense: :meth:`train_victim`)."""
        return type(self).train_victim is not DefenseConfig.train_victim

    @property
    def purifies(self) -> bool:
        """Whether this defense rewrites pixels (it has an :meth:`image_purifier`)."""
        return type(self).image_purifier is not DefenseConfig.image_purifier

    def chunk_rows(self) -> int:
        """Rows per purifier call (a multiple of the defense's ``batch_size`` where it has one)."""
        return chunk_rows(int(getattr(self, "batch_size", 1)))

    # --- purification ----------------------------------------------------------------------
    def image_purifier(self, model_dir: str | Path | None, seed: int) -> ImagePurifier:
        """f(uint8 NHWC images, index) -> purified images, with any model loaded once (here, not per call).

        A sample's output must depend on its pixels, its index, ``seed`` and the settings only
        (draw randomness per (seed, index); run model batches through :func:`fixed_shape`).
        ``model_dir`` is :meth:`model_path`'s location for model-based purifiers, else ``None``.
        The base class does not purify.
        """
        raise NotImplementedError(f"defense {self.name} does not purify images")

    def check_images(self, image_shape: tuple[int, ...]) -> None:
        """Refuse images this defense cannot purify, before any model is trained (default: all fit)."""

    def model_path(self, train: ImageSet, clean: ImageSet | None, progress: bool = True) -> Path | str | None:
        """The model directory this defense purifies with (``auto``: trained once, cached); ``None``: model-free."""
        return None

    def check_model(self, model_dir: str | Path, image_shape: tuple[int, ...]) -> None:
        """Refuse a model not made for images of ``image_shape`` (reads its config only)."""

    def model_resolved(self, model_dir: str | Path) -> dict[str, Any]:
        """Result columns that depend on the model (noise levels in both units, model calls …)."""
        return {}

    @property
    def needs_model(self) -> bool:
        """Whether :meth:`model_path` names a model to load (model-based purifier)."""
        return type(self).model_path is not DefenseConfig.model_path

    def model_part(self) -> "DefenseConfig | None":
        """The defense whose settings name the model (``model``, ``train``): this one, a composite's part, or None."""
        return self if self.needs_model else None

    def purifying(self) -> "DefenseConfig":
        """What makes this defense's purified set (a composite: its purifiers only; the set is theirs)."""
        return self

    def split_first(self) -> "tuple[DefenseConfig, DefenseConfig] | None":
        """(first purifier, the rest) of a chain of purifiers, so the first part's set can be shared; None."""
        return None


@dataclass(frozen=True)
class NoDefense(DefenseConfig):
    name: ClassVar[str] = "none"
    summary: ClassVar[str] = "no defense: train on the data as given"


def batched_uint8(images: np.ndarray, fn, batch: int = 1024) -> np.ndarray:
    """Apply ``fn`` (float [0,1] NCHW tensor -> same) to uint8 NHWC ``images`` in batches."""
    out = np.empty_like(images)
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float().div(255)
        y = fn(x).clamp(0, 1).mul(255).round().to(torch.uint8)
        out[i:i + batch] = y.permute(0, 2, 3, 1).numpy()
    return out
