"""Import a BackdoorBench attack record (Wu et al., NeurIPS 2022 D&B; github.com/SCLBD/BackdoorBench).

``record/<attack>/attack_result.pt`` is a ``torch.save`` dict (``save_attack_result``)
with ``model_name, num_classes, model, data_path, img_size, clean_data`` and the
states of the backdoored train and test sets (``prepro_cls_DatasetBD_v2.retrieve_state``)::

    bd_train / bd_test = {original_index_array, poison_indicator (0/1 per clean sample),
                          bd_data_container: {save_folder_path, save_file_format,
                                              data_dict: {index: (PIL image, bd_label, label)}    # in RAM
                                                      or {index: {path, other_info: [bd_label, label]}}}}  # on disk

Only poisoned samples are stored; the clean ones come from the clean dataset
(``--clean``, default: the record's ``clean_data`` when eclipse_ray knows it).
The record is read with ``torch.load(weights_only=True)``; on-disk images are
looked up as ``<record dir>/<folder>/<label>/<index>.png`` (the last three parts
of the recorded path, never outside the record folder).

* ``train``: the clean samples at ``bd_train.original_index_array`` with the
  poisoned ones replaced (image and backdoor label), ``poisoned`` from the indicator;
* ``test``: the clean test set; ``test_triggered``: the ``bd_test`` samples
  (triggered images, true labels), meta ``target`` when all share one backdoor label.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

import numpy as np
from tqdm import tqdm

from eclipse_ray.data.kinds import BACKDOOR
from eclipse_ray.config import ConfigError
from eclipse_ray.data import safe_pickle
from eclipse_ray.data.importers.common import as_label, assemble, load_clean, originals, positions, read_png, \
    split, to_rgb
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset

KEYS = ("clean_data", "bd_train", "bd_test")
CLEAN_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn"}


def _resolve(stored: Any, record_dir: Path) -> Path:
    parts = PurePath(str(stored).replace("\\", "/")).parts[-3:]
    if len(parts) < 3 or any(p in ("..", ".", "") or p.startswith("/") for p in parts):
        raise ConfigError(f"backdoorbench: recorded image path {stored!r} is not <folder>/<label>/<index>.png")
    path = record_dir.joinpath(*parts)
    if not path.resolve().is_relative_to(record_dir.resolve()):
        raise ConfigError(f"backdoorbench: recorded image path {stored!r} leaves the record folder")
    if not path.is_file():
        raise ConfigError(f"backdoorbench: image {path} not found (recorded as {stored}); keep bd_train_dataset/ "
                          f"and bd_test_dataset/ next to attack_result.pt")
    return path


def _poisoned_samples(state: Any, name: str, clean: ImageSet, record_dir: Path, progress: bool) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, int]]]:
    """(original_index_array, {position: (image, backdoor label)}) of one dataset state; labels checked."""
    n_clean, clean_labels, shape, n_cls = len(clean), clean.labels, clean.image_shape, clean.num_classes
    if not isinstance(state, dict) or not {"original_index_array", "poison_indicator", "bd_data_container"} <= set(state):
        raise ConfigError(f"backdoorbench: {name} is not a prepro_cls_DatasetBD_v2 state")
    order = positions(np.asarray(state["original_index_array"]), n_clean, f"backdoorbench {name} original_index_array")
    indicator = np.asarray(state["poison_indicator"])
    if indicator.shape != (n_clean,):
        raise ConfigError(f"backdoorbench: {name} poison_indicator has shape {indicator.shape}, the clean split has "
                          f"{n_clean} samples (wrong --clean?)")
    container = state["bd_data_container"]
    data = container.get("data_dict") if isinstance(container, dict) else None
    if not isinstance(data, dict):
        raise ConfigError(f"backdoorbench: {name} has no bd_data_container.data_dict")
    try:
        data = {int(k): v for k, v in data.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"backdoorbench: {name} data_dict keys must be sample indices") from None
    wanted = [int(p) for p in order if indicator[p] == 1]
    missing = [p for p in wanted if p not in data]
    if missing:
        raise ConfigError(f"backdoorbench: {name} marks index {missing[0]} poisoned but stores no image for it")
    out: dict[int, tuple[np.ndarray, int]] = {}
    for p in tqdm(wanted, desc=f"backdoorbench: {name}", disable=not progress, unit="img"):
        value, what = data[p], f"backdoorbench {name}[{p}]"
        if isinstance(value, dict) and "path" in value:
            other = list(value.get("other_info") or [])
            img = read_png(_resolve(value["path"], record_dir), shape)
        elif isinstance(value, (tuple, list)) and len(value) >= 3:
            img, other = to_rgb(value[0], shape, what), list(value[1:])
        else:
            raise ConfigError(f"{what}: expected (image, bd_label, label) or {{path, other_info}}")
        if len(other) < 2:
            raise ConfigError(f"{what}: expected a backdoor label and the original label")
        bd_label, label = as_label(other[0], n_cls, what), as_label(other[1], n_cls, what)
        if label != clean_labels[p]:
            raise ConfigError(f"{what}: original label {label}, the clean set says {int(clean_labels[p])} "
                              f"(wrong --clean?)")
        out[p] = (img, bd_label)
    return order, out


def import_backdoorbench(path: str | Path, clean: str | None = None, data_dir: str | Path | None = None, *,
                         progress: bool = False) -> Dataset:
    """Train (poisoned rows replaced), clean test and triggered test splits from ``attack_result.pt``."""
    path = Path(path)
    file = path / "attack_result.pt" if path.is_dir() else path
    record = safe_pickle.load_torch(file)
    if not isinstance(record, dict) or not set(KEYS) <= set(record):
        raise ConfigError(f"{file}: not a BackdoorBench attack record (needs keys {', '.join(KEYS)})")
    if record["bd_train"] is None:
        raise ConfigError(f"{file}: the record has no bd_train (the attack poisons during training, e.g. WaNet); "
                          f"there is no poisoned training set to import")
    spec = clean or CLEAN_NAMES.get(str(record["clean_data"]).lower())
    if spec is None:
        raise ConfigError(f"{file}: clean dataset {record['clean_data']!r} is not one eclipse_ray knows; "
                          f"pass --clean")
    data = load_clean(spec, data_dir, "backdoorbench")
    train, test = data.train, data.test
    rec_dir = file.parent
    order, poisoned = _poisoned_samples(record["bd_train"], "bd_train", train, rec_dir, progress)
    images, labels = train.images.copy(), train.labels.copy()
    for p, (img, bd_label) in poisoned.items():
        images[p], labels[p] = img, bd_label
    mask = np.zeros(len(train), bool)
    mask[list(poisoned)] = True
    source = f"backdoorbench:{file}"
    splits = {"train": split(images[order], labels[order], train.index[order], mask[order], train.classes, source,
                             "train"),
              "test": test}
    t_order, t_poisoned = _poisoned_samples(record["bd_test"], "bd_test", test, rec_dir, progress)
    t_rows = np.array([p for p in t_order if int(p) in t_poisoned], dtype=np.int64)
    bd_labels = sorted({b for _, b in t_poisoned.values()})
    target = bd_labels[0] if len(bd_labels) == 1 else None
    meta: dict[str, Any] = {"n_poisoned": len(poisoned), "model_name": str(record.get("model_name")),
                            "record_clean_data": str(record["clean_data"])}
    if len(t_rows):
        t_meta = {"target": target} if target is not None else {"bd_labels": bd_labels}
        splits["test_triggered"] = ImageSet(np.stack([t_poisoned[int(p)][0] for p in t_rows]), test.labels[t_rows],
                                            test.index[t_rows], np.ones(len(t_rows), bool), test.classes,
                                            {"source": source, "split": "test_triggered", **t_meta})
    if poisoned:
        splits["originals"] = originals(train, np.array(sorted(poisoned)), source)
    if target is not None:
        meta["target"] = target
    return assemble("backdoorbench", file, spec, splits, BACKDOOR, **meta)
