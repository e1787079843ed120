"""A study as a plan of content-addressed stages, each computed once on the whole cluster.

    specs ──compile──▶ poisons ─▶ models ─▶ purified sets ─▶ references ─▶ victim trials
                      (Ray tasks)  (Ray tasks)  (one Ray Data     (Ray tasks)  (Ray Tune, read
                                                 streaming job)                 artifacts only)

:func:`compile_plan` validates every spec (all settings checked before any
work) and lists the distinct artifacts they need. Each artifact's address in the
cache (:mod:`eclipse_ray.data.cache`) is a hash of what it depends on; a
stage skips every artifact that already exists, so rerunning a killed study
finishes it without redoing finished work. Tasks are retried when a node is
lost (``max_retries``), Ray Data restarts lost purification actors, and Tune
reruns a lost trial elsewhere: an artifact written twice is written with the
same content, and a trial's row is stored under its ``config_hash``, so every
row lands exactly once. Each stage prints one summary line (computed, reused,
seconds). The references stage trains the clean victims whose accuracy (``acc_ref``)
the trials compare against, except those a trial of the plan trains itself (clean
data, no defense): those trials run first and store it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from eclipse_ray import storage
from eclipse_ray.config import ConfigError
from eclipse_ray.data import cache as C
from eclipse_ray.data import store
from eclipse_ray.data.kinds import AVAILABILITY
from eclipse_ray.data.address import DIGEST_KEY, pin
from eclipse_ray.data.sources import FINGERPRINTED
from eclipse_ray.distributed import artifacts as A
from eclipse_ray.distributed.connect import init_ray
from eclipse_ray.distributed.purify import find_donor, purifier_identity, run_purifications
from eclipse_ray.distributed.tune import run_trials, tune_loggers
from eclipse_ray.result_store import read_results
from eclipse_ray.trial import build_config, is_reference, reference_accuracy, reference_config, stored_reference

RETRIES = 3


@dataclass
class PlannedTrial:
    spec: dict[str, Any]
    cfg: Any  # TrialConfig
    poison_key: str
    purification_key: str | None = None
    purify_reused: bool | None = None


@dataclass
class Plan:
    trials: list[PlannedTrial]
    poisons: "OrderedDict[str, Any]" = field(default_factory=OrderedDict)        # key -> TrialConfig (dataset, attack)
    purifications: "OrderedDict[str, Any]" = field(default_factory=OrderedDict)  # key -> TrialConfig (purifying)
    sources: dict[str, str] = field(default_factory=dict)  # key of a chain's set -> key of its first part's
    references: "OrderedDict[str, Any]" = field(default_factory=OrderedDict)     # acc_ref key -> TrialConfig


def compile_plan(specs: list[dict[str, Any]]) -> Plan:
    """Validate every spec and list the distinct artifacts they need, in dependency order."""

    plan = Plan([])
    digests: dict[str, str | None] = {}
    for s in specs:
        s = pin(s, digests)  # a dataset read from a path: its content digest, taken once here, carried to workers
        cfg = build_config(s["dataset"], s["attack"], s["defense"], s["set"], s.get(DIGEST_KEY))
        t = PlannedTrial(s, cfg, C.poison_key(cfg.dataset_address, cfg.attack))
        plan.poisons.setdefault(t.poison_key, cfg)
        if cfg.defense.purifies:
            t.purification_key = plan_purification(plan, cfg)
        if not is_reference(cfg) and (cfg.attack.kind == AVAILABILITY or cfg.attack.name == "none"):
            ref = reference_config(cfg)
            plan.references.setdefault(ref.cache_hashes()[0], ref)  # one per record: two paths, one content
        plan.trials.append(t)
    return plan


def plan_purification(plan: Plan, cfg) -> str:
    """Add ``cfg``'s purified set to the plan (a chain of purifiers: its first part's set first, which the
    chain starts from and other chains share); its key."""
    key = A.purification_key(cfg)
    first = A.first_part(cfg)
    if first is not None:
        plan.sources[key] = plan_purification(plan, first)
    plan.purifications.setdefault(key, dataclasses.replace(cfg, defense=cfg.defense.purifying()))
    return key


def _stage_line(name: str, computed: int, reused: int, seconds: float) -> None:
    print(f"stage {name}: {computed} computed, {reused} reused, {seconds:.1f} s", flush=True)


def references_to_train(plan: Plan, cache_dir: str) -> list:
    """Stage 4's clean victims: the plan's reference configs neither cached nor trained by a trial of the plan
    itself (clean data, no defense: :func:`trial_groups` runs those first and they store their accuracy)."""
    own = {reference_config(tr.cfg).cache_hashes()[0] for tr in plan.trials if is_reference(tr.cfg)}
    return [cfg for key, cfg in plan.references.items() if key not in own and stored_reference(cache_dir, cfg) is None]


def trial_groups(trials: list[PlannedTrial]) -> list[list[PlannedTrial]]:
    """The trials in the order they run: the reference trials first (the others read their accuracy), then the rest."""
    first = [tr for tr in trials if is_reference(tr.cfg)]
    return [g for g in (first, [tr for tr in trials if not is_reference(tr.cfg)]) if g]


def _make_reference(cfg, cache_dir: str) -> float:

    data = C.read_poisoned(C.poisons_location(cache_dir, cfg.dataset_address, cfg.attack), cfg.dataset)
    return reference_accuracy(cfg, data, cache_dir)


def _with_threads(fn, *args):
    """``fn(*args)`` with torch on as many threads as CPUs the task holds (Ray sets OMP_NUM_THREADS, but
    torch in a pooled worker has already read it)."""
    import ray
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def _run_tasks(fn, calls: list[tuple], resources: dict[str, float]) -> list[Any]:
    import ray

    env = storage.env()  # workers on other nodes reach the same storage (endpoint, keys)
    task = ray.remote(max_retries=RETRIES, retry_exceptions=False, **resources,
                      **({"runtime_env": {"env_vars": env}} if env else {}))(_with_threads)
    return ray.get([task.remote(fn, *a) for a in calls])


def _resources(gpus: float) -> dict[str, float]:
    return {"num_cpus": 1, "num_gpus": gpus}


def _cpu_share(tasks: int) -> dict[str, float]:
    """Resources of each of ``tasks`` CPU tasks that train (models, crafted poisons, references): the
    cluster's CPUs shared among them, at most one node's — one model alone on a 2-core machine trains on
    both cores instead of leaving one idle (measured: the full-size DDPM, 21 min on one core)."""
    import ray

    node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    total = ray.cluster_resources().get("CPU", 1)
    return {"num_cpus": max(1, int(min(node, total // max(1, tasks))))}


def run_stages(plan: Plan, cache_dir: str, *, data_dir: str | None = None, actors: int = 2,
               gpu: bool = False) -> None:
    """Compute every artifact the plan's trials need (each once), stage by stage."""
    res = _resources(1 if gpu else 0)
    # 1. poisoned (and clean) datasets
    t = time.perf_counter()
    todo = [cfg for key, cfg in plan.poisons.items()
            if not C.intact(storage.join(cache_dir, "poisons", key))]
    crafted = [cfg for cfg in todo if cfg.attack.crafted]  # crafting trains surrogates: a GPU where there is one
    _run_tasks(A.make_poison, [(cfg, cache_dir, data_dir) for cfg in todo if not cfg.attack.crafted],
               {"num_cpus": 1})
    _run_tasks(A.make_poison, [(cfg, cache_dir, data_dir) for cfg in crafted],
               res if gpu else _cpu_share(len(crafted)))
    _stage_line("poisons", len(todo), len(plan.poisons) - len(todo), time.perf_counter() - t)

    # 2. generative models: one task per distinct (dataset, recipe) first, then the rest (cache hits)
    t = time.perf_counter()
    missing = {k for k in plan.purifications if not C.intact(C.purified_location(cache_dir, k), deep=False)}
    wanted = {tr.purification_key for tr in plan.trials if tr.purification_key in missing}
    wanted |= {plan.sources[k] for k in wanted if plan.sources.get(k) in missing}  # a missing chain's first part
    pending = {k: cfg for k, cfg in plan.purifications.items() if k in wanted}
    needs = OrderedDict()
    for k, cfg in pending.items():
        if cfg.defense.needs_model:
            needs.setdefault((C.poison_key(cfg.dataset_address, cfg.attack), A.model_recipe(cfg.defense)), cfg)
    groups: OrderedDict = OrderedDict()
    for (pk, recipe), cfg in needs.items():
        groups.setdefault((cfg.dataset_address, recipe), []).append(((pk, recipe), cfg))
    models: dict[tuple, str] = {}
    before = _count_models(cache_dir)
    for wave in (0, 1):
        batch = [(key, cfg) for g in groups.values() for i, (key, cfg) in enumerate(g) if (i == 0) == (wave == 0)]
        calls = [(cfg, cache_dir) for _, cfg in batch]
        for (key, _), out in zip(batch, _run_tasks(A.make_model, calls, res if gpu else _cpu_share(len(calls)))):
            models[key] = out
    trained = _count_models(cache_dir) - before
    _stage_line("models", trained, len(set(models.values())) - trained, time.perf_counter() - t)

    # 3. purified training sets: one Ray Data streaming job over the cluster's actors
    t = time.perf_counter()
    def model_of(cfg):
        return models[(C.poison_key(cfg.dataset_address, cfg.attack), A.model_recipe(cfg.defense))] \
            if cfg.defense.needs_model else None

    for wave in (False, True):  # sets read from the poisoned data, then chains read from their first part's
        requests = {k: A.purification_request(cfg, cache_dir, k, model_of(cfg), plan.sources.get(k))
                    for k, cfg in pending.items() if (k in plan.sources) == wave}
        for group in _donor_order(requests, pending):
            run_purifications(_with_donors(group, pending, cache_dir), actors=actors,
                              desc=f"purify {len(group)} sets")
    computed = set(pending)
    for tr in plan.trials:  # the first trial of a purification computed now reports it as computed
        if tr.purification_key is not None:
            tr.purify_reused = tr.purification_key not in computed
            computed.discard(tr.purification_key)
    _stage_line("purify", len(pending), len(plan.purifications) - len(pending), time.perf_counter() - t)

    # 4. reference accuracies (a clean victim per victim config and seed) not produced by a trial of the plan
    t = time.perf_counter()
    refs = references_to_train(plan, cache_dir)
    if refs:
        missing = [cfg for cfg in refs if not C.intact(C.poisons_location(cache_dir, cfg.dataset_address, cfg.attack))]
        _run_tasks(A.make_poison, [(cfg, cache_dir, data_dir) for cfg in missing], {"num_cpus": 1})
        _run_tasks(_make_reference, [(cfg, cache_dir) for cfg in refs], res if gpu else _cpu_share(len(refs)))
    _stage_line("references", len(refs), len(plan.references) - len(refs), time.perf_counter() - t)


def _shares_rows(cfg) -> bool:
    """Whether ``cfg``'s poisoned set leaves rows clean (clean data, a backdoor's or targeted poison's few
    rows, an availability poison below rate 1), so that its purification may copy the rows another
    purification of the same data has made."""
    return cfg.attack.kind != AVAILABILITY or float(getattr(cfg.attack, "rate", 1.0)) < 1


def _donor_order(requests: dict[str, Any], cfgs: dict[str, Any]) -> list[list[Any]]:
    """The requests in groups run one after the other: clean sets first where the same row-wise purifier
    also purifies a set that shares most of its rows (which then copies them), then the rest."""
    def purifier(k: str) -> str:
        return json.dumps(purifier_identity(requests[k]))

    partial = {purifier(k) for k in requests if cfgs[k].attack.name != "none" and _shares_rows(cfgs[k])
               and requests[k].defense.row_wise}
    first = [k for k in requests if cfgs[k].attack.name == "none" and purifier(k) in partial]
    rest = [k for k in requests if k not in first]
    return [[requests[k] for k in g] for g in (first, rest) if g]


def _with_donors(requests: list[Any], cfgs: dict[str, Any], cache_dir: str) -> list[Any]:
    """Each request of a set that shares most rows with its dataset's other sets, with a donor: the
    published purification by the same purifier with the fewest poisoned rows (see distributed.purify)."""
    by_out = {storage.normalize(C.purified_location(cache_dir, k)): cfg for k, cfg in cfgs.items()}
    out = []
    published = None
    for req in requests:
        cfg = by_out.get(storage.normalize(req.out))
        if cfg is not None and _shares_rows(cfg) and req.defense.row_wise:
            if published is None:
                root = storage.join(cache_dir, "purified")
                published = [storage.join(root, n) for n in storage.listdir(root)]
            donor = find_donor(req, store.read_meta(req.input), published)
            req = dataclasses.replace(req, donor=donor) if donor else req
        out.append(req)
    return out


def check_stored_sources(plan: Plan, done) -> None:
    """A study's stored rows of a dataset read from a path must come from the content there now (the
    fingerprint in their ``dataset_label``): rows of another file are not this study's, and finding
    them is a one-line error before any work, not trials skipped as done."""
    if done.empty or "dataset_label" not in done or "dataset" not in done:
        return
    for spec, digest in dict.fromkeys((tr.cfg.dataset, tr.cfg.dataset_digest) for tr in plan.trials):
        if digest is None:
            continue
        labels = done.loc[done["dataset"] == spec, "dataset_label"].dropna().astype(str)
        before = sorted({m["digest"] for m in map(FINGERPRINTED.match, labels) if m} - {digest[:8]})
        if before:
            raise ConfigError(f"{spec}: the study's stored rows were computed on another file (fingerprint "
                              f"{', '.join(before)}; now {digest[:8]}): write to a fresh --results")


def _count_models(cache_dir: str) -> int:
    return sum(storage.is_file(storage.join(cache_dir, "models", m, "config.json"))
               for m in storage.listdir(storage.join(cache_dir, "models")))


def run_study(study_dir: str | os.PathLike, specs: list[dict[str, Any]], *, address: str | None = None,
              cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_failures: int = 2,
              cache_dir: str | os.PathLike | None = None, data_dir: str | None = None,
              max_concurrent: int | None = None, actors: int | None = None, loggers: list[str] | None = None):
    """Compile ``specs``, compute their artifacts stage by stage, then run the victim trials on Tune."""
    import ray


    study = storage.normalize(study_dir)
    if cache_dir is None:  # models, poisons and purified sets: shared when $ECLIPSE_RAY_CACHE is set
        cache_dir = C.study_cache(study)
    cache = storage.normalize(cache_dir)
    plan = compile_plan(specs)  # every setting checked before any work
    if loggers:

        tune_loggers(loggers, "check")  # an unknown logger or a missing package: before any work
    done = read_results(study)
    check_stored_sources(plan, done)
    stored = set(done["config_hash"]) if not done.empty and "config_hash" in done else set()
    todo = [tr for tr in plan.trials if not stored.intersection(tr.cfg.hashes())]
    print(f"study: {len(plan.trials)} trials ({len(plan.trials) - len(todo)} stored), "
          f"{len(plan.poisons)} datasets, {len(plan.purifications)} purifications -> {storage.normalize(study)}",
          flush=True)
    if todo:
        init_ray(address)
        sub = Plan(todo)
        for tr in todo:  # only what the remaining trials need
            sub.poisons.setdefault(tr.poison_key, tr.cfg)
            if tr.purification_key:
                plan_purification(sub, tr.cfg)
        sub.references = compile_plan([tr.spec for tr in todo]).references
        n_actors = actors or max(1, int(ray.cluster_resources().get("GPU", 0))
                                 or int(ray.cluster_resources().get("CPU", 1)))
        run_stages(sub, cache, data_dir=data_dir, actors=n_actors,
                   gpu=ray.cluster_resources().get("GPU", 0) >= 1)
        t = time.perf_counter()
        for group in trial_groups(todo):  # the plan's own reference trials first: the others read their accuracy
            run_trials(study, [(tr.spec, tr.purify_reused) for tr in group], cache, data_dir=data_dir,
                       cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                       max_failures=max_failures, max_concurrent=max_concurrent, loggers=loggers)
        stored = read_results(study)
        have = set() if stored.empty else set(stored["config_hash"])
        missing = [tr for tr in todo if not have.intersection(tr.cfg.hashes())]
        if missing:  # Tune returns early when interrupted: say so rather than report a partial study
            raise RuntimeError(f"{len(missing)} of {len(todo)} trials have no row (interrupted?); "
                               f"rerun the same command to finish them")
        _stage_line("trials", len(todo), len(plan.trials) - len(todo), time.perf_counter() - t)
    return read_results(study)
