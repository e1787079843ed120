"""Import a trial of the "Just how toxic is data poisoning?" benchmark (Schwarzschild et al., ICML 2021;
github.com/aks2203/poisoning-benchmark).

A trial folder holds three pickles, read here with the restricted unpickler:

* ``poisons.pickle``: list of ``(PIL image, label)``; the label of the first
  poison is the class the target should be misclassified as;
* ``base_indices.pickle``: the training indices the poisons were crafted from;
* ``target.pickle``: ``(PIL image, target class)``, or for the hidden-trigger /
  clean-label backdoors ``(image, class, patch[3,p,p], (x, y))``, the patch
  pasted onto the target at column ``x``, row ``y`` (as ``poison_test.py`` does).

The training set is the clean one with each base row replaced by its poison
(label from the poison tuple, ``poisoned`` set). With ``trainset_size`` the
benchmark's subset is rebuilt as its ``PoisonedDataset.find_indices`` does: the
first ``trainset_size / C`` clean images of each class (base rows excluded),
fewer in the poisoned class so the poisons fit. The ``targets`` split holds the
target image; its meta ``adv_labels`` lists the adversarial class per row, and
the index is the clean test sample with identical pixels (-1 if none matches),
which is left out of ``test`` (as eclipse_ray's own targeted attacks do;
dataset meta ``adv_labels`` and ``target_index`` follow them too).
Deviation: the benchmark appends poisons after the clean rows; here they keep
their base row's place (same multiset of samples, stable indices).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eclipse_ray.data.kinds import TARGETED
from eclipse_ray.config import ConfigError
from eclipse_ray.data import safe_pickle
from eclipse_ray.data.importers.common import as_label, assemble, load_clean, originals, positions, split, to_rgb
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset

FILES = ("poisons.pickle", "base_indices.pickle", "target.pickle")


def _target_image(target: Any, shape: tuple[int, int, int], num_classes: int, file: Path) -> tuple[np.ndarray, int]:
    if not isinstance(target, (tuple, list)) or len(target) not in (2, 4):
        raise ConfigError(f"{file}: expected (image, class) or (image, class, patch, (x, y))")
    image = to_rgb(target[0], shape, f"{file} image")
    label = as_label(target[1], num_classes, f"{file} class")
    if len(target) == 4:
        raw = np.asarray(target[2])
        if raw.ndim != 3 or raw.shape[0] != 3:
            raise ConfigError(f"{file}: patch must have shape [3, p, p] (CHW), got {raw.shape}")
        raw = raw.transpose(1, 2, 0)
        patch = to_rgb(raw, raw.shape, f"{file} patch")
        try:
            x, y = (int(v) for v in target[3])
        except (TypeError, ValueError):
            raise ConfigError(f"{file}: patch position must be two integers (x, y)") from None
        p_h, p_w = patch.shape[:2]
        if x < 0 or y < 0 or y + p_h > shape[0] or x + p_w > shape[1]:
            raise ConfigError(f"{file}: a {p_w}x{p_h} patch at ({x}, {y}) does not fit a {shape[1]}x{shape[0]} image")
        image = image.copy()
        image[y:y + p_h, x:x + p_w] = patch
    return image, label


def _subset_rows(labels: np.ndarray, base: np.ndarray, adv: int, size: int) -> np.ndarray:
    """Clean rows of the benchmark's ``trainset_size`` subset (PoisonedDataset.find_indices)."""
    classes = np.unique(labels)
    per_class = size // len(classes)
    keep = []
    for c in classes:
        rows = np.setdiff1d(np.flatnonzero(labels == c), base)[:per_class]
        if c == adv:
            rows = rows[:max(per_class - len(base), 0)]
        keep.append(rows)
    return np.concatenate(keep)


def import_toxic(path: str | Path, clean: str | None = None, data_dir: str | Path | None = None, *,
                 progress: bool = False, trainset_size: int | None = None) -> Dataset:
    """Training set with the trial's poisons in place of their bases, clean test set, and a ``targets`` split."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"toxic:{root}: no such directory (give the trial folder holding {', '.join(FILES)})")
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise ConfigError(f"toxic:{root}: missing {', '.join(missing)}")
    poisons = safe_pickle.load(root / "poisons.pickle")
    base_raw = safe_pickle.load(root / "base_indices.pickle")
    target = safe_pickle.load(root / "target.pickle")
    data = load_clean(clean, data_dir, "toxic")
    train, test = data.train, data.test
    shape, n_cls = train.image_shape, train.num_classes
    if not isinstance(poisons, (list, tuple)) or not poisons:
        raise ConfigError(f"{root / 'poisons.pickle'}: expected a non-empty list of (image, label) tuples")
    if isinstance(base_raw, (int, np.integer)):
        base_raw = [base_raw]
    base = positions(base_raw, len(train), str(root / "base_indices.pickle"))
    if len(base) != len(poisons):
        raise ConfigError(f"toxic: {len(poisons)} poisons but {len(base)} base indices")
    images, labels = train.images.copy(), train.labels.copy()
    for k, (item, row) in enumerate(zip(poisons, base)):
        what = f"{root / 'poisons.pickle'}[{k}]"
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConfigError(f"{what}: expected an (image, label) tuple")
        images[row] = to_rgb(item[0], shape, what)
        labels[row] = as_label(item[1], n_cls, what)
    adv = int(labels[base[0]])
    mask = np.zeros(len(train), bool)
    mask[base] = True
    keep = np.arange(len(train))
    if trainset_size is not None:
        if not len(base) < trainset_size <= len(train):
            raise ConfigError(f"--trainset-size={trainset_size}: must exceed the {len(base)} poisons and be at most "
                              f"the clean training set's {len(train)} images")
        keep = np.sort(np.concatenate([_subset_rows(train.labels, base, adv, trainset_size), base]))
    source = f"toxic:{root}"
    linf = int(np.abs(images[base].astype(np.int16) - train.images[base].astype(np.int16)).max()) / 255.0
    t_img, t_cls = _target_image(target, shape, n_cls, root / "target.pickle")
    same = np.flatnonzero(np.all(test.images == t_img, axis=(1, 2, 3)) & (test.labels == t_cls))
    t_index = int(test.index[same[0]]) if len(same) else -1
    targets = ImageSet(t_img[None], np.array([t_cls]), np.array([t_index]), np.ones(1, bool), train.classes,
                       {"source": source, "split": "targets", "adv_labels": [adv]})
    test_rows = np.setdiff1d(np.arange(len(test)), same[:1])  # natural accuracy on images not targeted
    splits = {"train": split(images[keep], labels[keep], train.index[keep], mask[keep], train.classes, source,
                             "train"),
              "test": test.subset(test_rows), "targets": targets, "originals": originals(train, base, source)}
    return assemble("toxic", root, clean, splits, TARGETED, n_poisoned=len(base), adv_labels=[adv],
                    target_class=t_cls, target_index=[t_index], max_linf=linf, trainset_size=int(len(keep)))
