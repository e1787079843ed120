"""Import APBench availability poisons (Qin et al., "APBench: A Unified Benchmark for Availability Poisoning
Attacks and Defenses", 2023; github.com/lafeat/apbench).

On-disk layout written by APBench's ``export_poison`` for CIFAR-10/100 and SVHN::

    dataset/<type>_poisons/<dataset>/data/<i>.png     one PNG per training index i

(``<type>_pure/`` folders of purified data have the same layout). APBench's
loader takes each image's label from the clean training set at index ``i``, so
``--clean`` must name that set; every row with a PNG is marked poisoned (APBench
poisons the whole training set). Rows without a PNG keep their clean image and
are marked clean. Deviation: the ImageNet-100 layout (``<class>/<n>.png``, with
``n`` a position in a randomly drawn 20 % subset) carries no stable index and is
refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eclipse_ray.data.kinds import AVAILABILITY
from eclipse_ray.config import ConfigError
from eclipse_ray.data.importers.common import assemble, load_clean, originals, read_png, split
from eclipse_ray.data.sources import Dataset

_NAME = re.compile(r"^(\d+)\.png$", re.IGNORECASE)


def import_apbench(path: str | Path, clean: str | None = None, data_dir: str | Path | None = None, *,
                   progress: bool = False) -> Dataset:
    """Poisoned train split from an APBench ``data/`` folder of ``<index>.png``; clean test split from ``clean``."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"apbench:{root}: no such directory")
    folder = root / "data" if (root / "data").is_dir() else root
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if any(p.is_dir() for p in entries):
        raise ConfigError(f"apbench:{folder} has sub-folders; only the CIFAR/SVHN layout data/<index>.png is "
                          f"supported (ImageNet-100 folders carry no training index)")
    found: dict[int, Path] = {}
    for p in entries:
        m = _NAME.match(p.name)
        if not m:
            raise ConfigError(f"apbench: unexpected file {p}; APBench names each image <training index>.png")
        i = int(m.group(1))
        if i in found:
            raise ConfigError(f"apbench: {found[i].name} and {p.name} both hold training index {i}")
        found[i] = p
    if not found:
        raise ConfigError(f"apbench:{folder}: no PNG files (empty set)")
    data = load_clean(clean, data_dir, "apbench")
    train = data.train
    rows = np.array(sorted(found), dtype=np.int64)
    if rows[-1] >= len(train):
        raise ConfigError(f"apbench: {found[int(rows[-1])].name} is beyond the clean training set "
                          f"({len(train)} images); wrong --clean?")
    images = train.images.copy()
    for r in tqdm(rows, desc="apbench: reading PNGs", disable=not progress, unit="img"):
        images[r] = read_png(found[int(r)], train.image_shape)
    mask = np.zeros(len(train), bool)
    mask[rows] = True
    source = f"apbench:{root}"
    unchanged = int(np.all(images[rows] == train.images[rows], axis=(1, 2, 3)).sum())
    splits = {"train": split(images, train.labels, train.index, mask, train.classes, source, "train"),
              "test": data.test, "originals": originals(train, rows, source)}
    return assemble("apbench", root, clean, splits, AVAILABILITY, n_poisoned=len(rows), unchanged_pngs=unchanged)
