"""A trial's artifacts one at a time: its poisoned set, its purifier's model, its purified set.

The staged study (:mod:`eclipse_ray.distributed.study`) computes them stage by
stage over the whole cluster; a Tune trial that finds one missing (a spec run
on its own, or a study interrupted between stages) computes it in-process.
Both go through these functions, so an artifact has one address
(:func:`eclipse_ray.data.cache.purification_key`) and one way of being made
(the purified set: :func:`eclipse_ray.distributed.purify.run_purifications`,
in-process or on Ray Data actors — the same bytes either way).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eclipse_ray import storage
from eclipse_ray.config import config_hash, flatten
from eclipse_ray.data import cache as C
from eclipse_ray.data import store
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.distributed.purify import PurifyRequest, model_for, run_purifications
from eclipse_ray.trial import load_data


def make_poison(cfg, cache_dir: str, data_dir: str | None) -> str:
    """The (dataset, attack) training set in the cache (crafted once; the clean set for ``none``)."""
    loc = C.poisons_location(cache_dir, cfg.dataset_address, cfg.attack)
    data = load_data(cfg, data_dir)  # the file the study was planned on, or a one-line error
    if cfg.attack.name == "none":
        key = C.poison_key(cfg.dataset_address, cfg.attack)
        store.write_dataset(loc, data.splits, {**data.meta, "poison_key": key}, if_absent=True)
    else:
        C.cached_attack(cfg.attack, data, cfg.dataset_address, cache_dir)
    return loc


def make_model(cfg, cache_dir: str) -> str:
    """The location of the model ``cfg.defense`` purifies ``cfg``'s poisoned set with (trained once)."""
    return model_for(C.poisons_location(cache_dir, cfg.dataset_address, cfg.attack), cfg.defense, cache_dir)


def model_recipe(defense) -> str:
    """What a defense's model depends on besides the data (its model setting or training recipe)."""
    part = defense.model_part()
    if getattr(part, "model", "auto") != "auto":
        return f"path:{part.model}"
    return config_hash(flatten(part.train))


def purification_key(cfg) -> str:
    """The cache address of ``cfg``'s purified training set: that of its purifying part (a composite's
    training-time part does not change the set, so ``jpeg+vab`` reads ``jpeg``'s), a named model by its
    fingerprint."""
    defense = cfg.defense.purifying()
    part = defense.model_part()
    model = getattr(part, "model", "auto")
    fingerprint = C.model_fingerprint(model) if part is not None and model != "auto" else None
    source = {"dataset": cfg.dataset_address, **C.address_settings(cfg.attack, "attack.")}
    return C.purification_key(source, defense, cfg.defense_seed, fingerprint)


def purification_request(cfg, cache_dir: str, key: str, model: str | None, source: str | None = None) -> PurifyRequest:
    """The request that writes ``cfg``'s purified set (``cfg.defense``: a purifying defense) to the cache:
    from its poisoned set, or — a chain of purifiers — from the first part's purified set ``source``."""
    defense = cfg.defense
    # this defense's own noise level, sampler and model calls on that model (never another config's)
    resolved = defense.model_resolved(model) if model is not None else {}
    run, run_model, loc = defense, model, C.poisons_location(cache_dir, cfg.dataset_address, cfg.attack)
    if source is not None:
        run = defense.split_first()[1]
        run_model = model if run.model_part() is not None else None
        loc = C.purified_location(cache_dir, source)
    return PurifyRequest(loc, C.purified_location(cache_dir, key), run, cfg.defense_seed, run_model, key,
                         getattr(run, "batch_size", 256), meta={"purification_key": key, "defense": flatten(defense)},
                         resolved=resolved, copy_splits=False)


def first_part(cfg):
    """``cfg`` with only the first purifier of its chain (whose set the chain starts from), or None."""
    split = cfg.defense.purifying().split_first()
    return None if split is None else dataclasses.replace(cfg, defense=split[0])


def purified(cfg, cache_dir: str, data_dir: str | None = None) -> tuple[ImageSet, bool]:
    """(``cfg``'s purified training set, whether it was in the cache), computed in-process when missing."""
    key = purification_key(cfg)
    loc = C.purified_location(cache_dir, key)
    got = C.read_or_heal(loc, _train)  # a corrupt set is moved aside here, and computed anew
    if got is not None:
        return got, True
    if not C.intact(C.poisons_location(cache_dir, cfg.dataset_address, cfg.attack)):
        make_poison(cfg, cache_dir, data_dir)
    first = first_part(cfg)
    if first is not None:
        purified(first, cache_dir, data_dir)
    own = dataclasses.replace(cfg, defense=cfg.defense.purifying())
    model = make_model(own, cache_dir) if own.defense.needs_model else None
    run_purifications([purification_request(own, cache_dir, key, model,
                                            None if first is None else purification_key(first))], progress=False)
    got = C.read_or_heal(loc, _train)
    if got is not None:
        return got, False
    raise RuntimeError(f"purified set {storage.normalize(loc)} could not be read back")


def _train(loc: str) -> ImageSet:
    return store.read_split(loc, "train")


def keys(cfg) -> dict[str, Any]:
    """Where a row's images are: its poisoned set and (for a purifier) its purified set."""
    out: dict[str, Any] = {"poison_key": C.poison_key(cfg.dataset_address, cfg.attack)}
    if cfg.defense.purifies:
        out["purification_key"] = purification_key(cfg)
    return out
