"""The artifact cache: content-addressed poisoned sets, generative models, purified sets, reference accuracies.

Layout under the cache location (a local path or a URI, ``$ECLIPSE_RAY_CACHE``,
default ``~/.cache/eclipse_ray``; a sweep uses ``<study>/.cache`` unless the
variable is set)::

    poisons/<poison_key>/      a (dataset, attack) as a dataset directory (meta.json last)
    models/<hash>/             a trained DDPM/EBM (config.json last), hash of its clean set + recipe
    purified/<purification_key>/  a purified training set (meta.json last)
    acc_ref/<config_hash>.json    the clean victim's accuracy a relative loss is measured against

Every address is a hash of what the artifact depends on (the dataset by its
address, :mod:`eclipse_ray.data.address`: a named source by its name, a file
read from a path by its content), and every artifact is
published whole (renamed into place, or its manifest uploaded last), so an
artifact that exists is complete, two writers of one address write the same
thing, and no correctness rests on locks. The staged study
(:mod:`eclipse_ray.distributed.study`) computes each artifact once before the
victim trials that read it; a lone ``eclipse-ray run`` computes what it misses
in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from eclipse_ray import storage
from eclipse_ray.config import ConfigError, config_hash, flatten
from eclipse_ray.data import store
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset, clean_reference_rows


def study_cache(study: str | os.PathLike) -> str:
    """The cache of a study's artifacts: ``$ECLIPSE_RAY_CACHE`` when set (shared by every study), else the
    study's own ``.cache``. Studies, Tune trials and reports all find it here."""
    return storage.normalize(os.environ.get("ECLIPSE_RAY_CACHE") or storage.join(storage.normalize(study), ".cache"))


def cache_root() -> str:
    """The cache location: ``$ECLIPSE_RAY_CACHE``, else ``~/.cache/eclipse_ray``."""
    return storage.normalize(os.environ.get("ECLIPSE_RAY_CACHE") or Path.home() / ".cache" / "eclipse_ray")


def address_settings(cfg, prefix: str) -> dict:
    """A config's settings as they enter an artifact's address: spelled as the earliest version that can
    express them did (:meth:`eclipse_ray.config.Config.spellings`), so that artifacts computed before the
    model-training settings were nested, or before any later setting existed, are found again."""
    return cfg.spellings(prefix)[0]


def poison_key(address: str, attack) -> str:
    """The address of a poisoned set: a hash of its dataset's address (:mod:`eclipse_ray.data.address`;
    ``TrialConfig.dataset_address``) and the attack's settings."""
    return config_hash({"dataset": address, **address_settings(attack, "attack.")})


def purification_key(source: dict, defense, seed: int, model: str | None = None) -> str:
    """The one address of a purified training set: a hash of what it depends on — ``source``, what it
    reads (a study's poisoned set: ``{"dataset": …, "attack.…": …}``; any dataset directory: the content
    hash of its train split, ``{"input": …}``), the defense's settings, the seed, and ``model``, the
    fingerprint of a model named by location (an ``auto`` model is itself a function of the source and
    the settings). Victim and training-time settings are not part of it; settings are spelled by
    :func:`address_settings`."""
    return config_hash({**source, **address_settings(defense, "defense."), "seed": seed,
                        **({"model_fingerprint": model} if model else {})})


def model_fingerprint(loc: str | os.PathLike) -> str:
    """A content hash of a model directory's weights and configs (local path or URI; checkpoints excluded)."""
    path = storage.local_dir(loc, "config.json")
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors")
                    and "checkpoint" not in p.relative_to(path).parts):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def poisons_location(cache_dir: str, address: str, attack) -> str:
    return storage.join(cache_dir, "poisons", poison_key(address, attack))


def purified_location(cache_dir: str, key: str) -> str:
    return storage.join(cache_dir, "purified", key)


def intact(loc: str, deep: bool = True) -> bool:
    """Whether a complete dataset is at ``loc``: its ``meta.json`` against the schema and, when ``deep``,
    every shard against its checksum (one written by an older version, without checksums, is taken as is).

    A corrupt one is moved aside with a warning naming it, so the caller recomputes it.
    """
    if not store.is_dataset(loc):
        return False
    if deep:
        problems = store.verify_dataset(loc, require_checksums=False)
    else:
        try:
            store.read_meta(loc)
            problems = []
        except ConfigError as e:
            problems = [str(e)]
    if problems:
        storage.quarantine(loc, f"corrupt ({problems[0]})")
        return False
    return True


def read_or_heal(loc: str, read):
    """``read(loc)`` of a cached dataset, or ``None`` (moved aside) when a checksum or the schema fails."""
    if not intact(loc, deep=False):
        return None
    try:
        return read(loc)
    except (storage.CorruptArtifact, ConfigError) as e:
        storage.quarantine(loc, f"corrupt ({e})")
        return None


def read_poisoned(loc: str, name: str, base_meta: dict | None = None) -> Dataset:
    splits, meta = store.read_dataset(loc)
    return Dataset(name, splits, {**(base_meta or {}), **meta, "poison_cached": True})


def cached_attack(attack, data: Dataset, address: str, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """``attack.apply(data)``, computed once per (dataset address, attack config) and then read from the cache.

    The crafting time is kept in the dataset meta (``craft_seconds``) either way.
    """
    loc = poisons_location(storage.normalize(cache_dir) if cache_dir else cache_root(), address, attack)
    cached = read_or_heal(loc, lambda lo: read_poisoned(lo, data.name, data.meta))  # one checksummed read
    if cached is not None:
        return cached
    t = time.perf_counter()
    poisoned = attack.apply(data)
    meta = {**poisoned.meta, "craft_seconds": poisoned.meta.get("craft_seconds", time.perf_counter() - t)}
    store.write_dataset(loc, poisoned.splits, {**meta, "poison_key": poison_key(address, attack)}, if_absent=True)
    return Dataset(poisoned.name, poisoned.splits, {**meta, "poison_cached": False})


def cached_model(tag: bytes, tcfg, src: ImageSet, train_fn, progress: bool = True) -> str:
    """The location of a generative model trained once per (clean reference set, training config).

    The reference set is drawn from ``src`` on true labels (the same set whatever
    the attack); ``train_fn(tcfg, ref, out, progress=…)`` writes the model to a
    local directory, which is then published to the cache (``config.json`` last).
    """

    rows = clean_reference_rows(src, tcfg.clean_fraction, tcfg.seed)
    ref = ImageSet(src.images[rows], src.labels[rows], src.index[rows], np.zeros(len(rows), bool), src.classes)
    h = hashlib.sha256(tag + ref.images.tobytes() + ref.index.tobytes() + config_hash(flatten(tcfg)).encode())
    loc = storage.join(cache_root(), "models", h.hexdigest()[:16])
    if storage.is_file(storage.join(loc, "config.json")):
        has_manifest = storage.is_file(storage.join(loc, storage.MANIFEST))
        problems = storage.verify_manifest(loc) if has_manifest else []  # an older model: taken as is
        if not problems:
            return loc
        storage.quarantine(loc, f"corrupt ({problems[0]})")
    # trained in a staging directory of its own (a killed training resumes there from its checkpoint;
    # a finished one returns at once), then published: first writer wins, a published model is never replaced
    name = h.hexdigest()[:16]
    staging = (Path(storage.normalize(cache_root())) / "models" / f".train-{name}" if not storage.is_uri(loc)
               else storage.local_root() / f"train-{name}")
    wait = float(os.environ.get("ECLIPSE_RAY_CLAIM_WAIT", 6 * 3600))
    with storage.claim(str(staging), "model training", wait_s=wait):  # another process training it: wait
        if storage.is_file(storage.join(loc, "config.json")):
            return loc  # published by that process meanwhile
        train_fn(tcfg, ref, staging, progress=progress)
        _publish_model(staging, loc)
    return loc


def _publish_model(staging: Path, loc: str) -> None:
    if storage.is_uri(loc):
        storage.copy_tree(staging, loc, last="config.json")
        shutil.rmtree(staging, ignore_errors=True)
    else:
        storage.publish_dir(staging, loc, "config.json")


def acc_ref_location(cache_dir: str, key: str) -> str:
    return storage.join(cache_dir, "acc_ref", f"{key}.json")


def acc_ref_doc(acc: float, key: str) -> dict:
    body = {"test_acc": float(acc), "config_hash": key}
    return {**body, "sha256": storage.sha256(json.dumps(body, sort_keys=True).encode())}


def read_acc_ref(cache_dir: str, key: str) -> float | None:
    """The cached clean accuracy; ``None`` when missing. An unreadable, edited or foreign record is moved
    aside with a warning (and so recomputed)."""
    loc = acc_ref_location(cache_dir, key)
    if not storage.is_file(loc):
        return None
    try:
        doc = storage.read_json(loc)
        acc = float(doc["test_acc"])
        legacy = {"test_acc": acc, "config_hash": key}  # written before records carried a checksum
        ok = doc in (acc_ref_doc(acc, key), legacy) and 0.0 <= acc <= 1.0
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok:
        storage.quarantine(loc, "corrupt (empty, edited or not this trial's)")
        return None
    return acc


def write_acc_ref(cache_dir: str, key: str, acc: float) -> None:
    storage.write_json(acc_ref_location(cache_dir, key), acc_ref_doc(acc, key))
