"""Import ECLIPSE's pickled datasets (Wang et al., ESORICS 2024; github.com/CGCL-codes/ECLIPSE).

ECLIPSE ships each poisoned CIFAR-10 training set as ``poisoned_data/cifar10/<POISON>.pkl``
and its purified version as ``<POISON>-pure.pkl``: one pickled list of
``(img_bytes, label)`` pairs, ``img_bytes`` being ``PIL.Image.tobytes()`` of a
32x32 RGB image (read back with ``Image.frombytes('RGB', (32, 32), ...)``). The
list is read with the restricted unpickler; PIL images and uint8 arrays are
accepted in place of bytes. Every row is marked poisoned (ECLIPSE evaluates
100 % poisoned sets). The test split comes from ``--clean`` (ECLIPSE tests on
the CIFAR-10 test set).

If the list has as many rows as the clean training set and the same labels in
the same order, row ``i`` is clean sample ``i`` (``index`` aligned, clean
originals kept for PSNR). Purified files are written from a shuffled loader, so
their order is lost: then ``index`` is the row number and ``meta.aligned`` is false.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eclipse_ray.data.kinds import AVAILABILITY
from eclipse_ray.config import ConfigError
from eclipse_ray.data import safe_pickle
from eclipse_ray.data.importers.common import as_label, assemble, load_clean, originals, split, to_rgb
from eclipse_ray.data.sources import Dataset


def import_eclipse(path: str | Path, clean: str | None = None, data_dir: str | Path | None = None, *,
                   progress: bool = False) -> Dataset:
    """Train split from an ECLIPSE ``.pkl`` list of (image bytes, label); test split from ``clean``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"eclipse:{path}: no such file")
    rows = safe_pickle.load(path)
    data = load_clean(clean, data_dir, "eclipse")
    train = data.train
    if not isinstance(rows, (list, tuple)) or not rows:
        raise ConfigError(f"{path}: expected a non-empty list of (image bytes, label) pairs")
    images = np.empty((len(rows), *train.image_shape), np.uint8)
    labels = np.empty(len(rows), np.int64)
    for i, item in enumerate(rows):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConfigError(f"{path}[{i}]: expected an (image bytes, label) pair")
        images[i] = to_rgb(item[0], train.image_shape, f"{path}[{i}]")
        labels[i] = as_label(item[1], train.num_classes, f"{path}[{i}]")
    aligned = len(rows) == len(train) and bool(np.array_equal(labels, train.labels))
    index = train.index if aligned else np.arange(len(rows), dtype=np.int64)
    source = f"eclipse:{path}"
    splits = {"train": split(images, labels, index, np.ones(len(rows), bool), train.classes, source, "train"),
              "test": data.test}
    if aligned:
        splits["originals"] = originals(train, np.arange(len(train)), source)
    return assemble("eclipse", path, clean, splits, AVAILABILITY, n_poisoned=len(rows), aligned=aligned)
