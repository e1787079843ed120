"""Ray Tune over trials: a thin trainable around :func:`eclipse_ray.trial.run_trial`.

* Each Tune trial is one eclipse_ray trial (a JSON-able spec: dataset, attack,
  defense, ``--set`` overrides). Resources per trial via ``tune.with_resources``
  (fractional GPUs suit the fast victim), retries via ``tune.FailureConfig``.
* Purified training sets come from the shared purification cache
  (:mod:`eclipse_ray.distributed.cache`): K distinct purifier configs cost K
  purifications however many victim trials use them.
* Rows go to the study's parquet store. A trial whose ``config_hash`` is already
  in the store is not rerun (its stored metrics are reported), so rerunning a
  killed sweep finishes it without duplicate rows; an interrupted Tune
  experiment is also restored with ``Tuner.restore``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from eclipse_ray.results.store import append_rows, read_results

METRIC_KEYS = ("test_acc", "asr", "poison_success", "acc_ref", "purify_psnr_poisoned", "purify_seconds",
               "train_seconds")


def spec(dataset: str, attack: str, defense: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial spec as Tune's param space carries it."""
    return {"dataset": dataset, "attack": attack, "defense": defense,
            "set": {k: str(v) for k, v in (settings or {}).items()}}


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k in METRIC_KEYS:
        v = row.get(k)
        if isinstance(v, (int, float)) and v == v:
            out[k] = float(v)
    return out


def run_spec(trial: dict[str, Any], results_dir: str, cache_dir: str, data_dir: str | None = None) -> dict[str, Any]:
    """Run one spec (or return its stored row): purification cached, row appended once."""
    from eclipse_ray.distributed.cache import cached_purify
    from eclipse_ray.config import flatten
    from eclipse_ray.trial import build_config, prepare, run_trial

    cfg = build_config(trial["dataset"], trial["attack"], trial["defense"], trial["set"])
    key = cfg.hash()
    done = read_results(results_dir)
    if not done.empty and key in set(done["config_hash"]):
        return {**done[done["config_hash"] == key].iloc[-1].to_dict(), "resumed": True}
    data = prepare(cfg, data_dir, cache_dir)
    purified, reused = None, None
    if cfg.defense.purifies:
        purified, reused = cached_purify(data, flatten(cfg.attack, "attack."), cfg.defense, cfg.defense_seed,
                                         cache_dir, cfg.dataset)
    row = run_trial(cfg, data=data, purified_train=purified, cache_dir=cache_dir, progress=False)
    row["purify_reused"] = reused
    append_rows(results_dir, [row])
    return row


def trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable."""
    from ray import tune

    row = run_spec(config["trial"], config["results_dir"], config["cache_dir"], config.get("data_dir"))
    tune.report(_numeric(row))


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Attach to ``address`` / ``RAY_ADDRESS`` (e.g. under ``ray job submit``), else start an embedded Ray
    (with at least ``num_cpus`` logical CPUs, so that an actor pool of that size fits on a small machine)."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, ignore_reinit_error=True)
    else:
        cpus = max(num_cpus or 0, os.cpu_count() or 1)
        ray.init(num_cpus=cpus, include_dashboard=False, ignore_reinit_error=True)


def run_sweep(study_dir: str | Path, specs: list[dict[str, Any]], *, address: str | None = None,
              cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_failures: int = 2,
              cache_dir: str | Path | None = None, data_dir: str | None = None,
              max_concurrent: int | None = None) -> pd.DataFrame:
    """Run every spec as a Tune trial; returns the study's rows. Rerun to resume."""
    from ray import tune

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # keep relative dataset paths meaningful
    study_dir = Path(study_dir).resolve()
    if cache_dir is None:  # models, poisons and purified sets: shared when $ECLIPSE_RAY_CACHE is set
        cache_dir = os.environ.get("ECLIPSE_RAY_CACHE") or study_dir / ".cache"
    cache_dir = Path(cache_dir).resolve()
    init_ray(address)
    storage = study_dir / "_tune"
    fn = tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    from eclipse_ray.config import config_hash

    name = f"sweep-{config_hash({'specs': specs}, 8)}"  # same command → same experiment → restored
    if tune.Tuner.can_restore(str(storage / name)):
        tuner = tune.Tuner.restore(str(storage / name), trainable=fn, resume_errored=True)
    else:
        tuner = tune.Tuner(
            fn,
            param_space={"trial": tune.grid_search(specs), "results_dir": str(study_dir),
                         "cache_dir": str(cache_dir), "data_dir": data_dir},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                      failure_config=tune.FailureConfig(max_failures=max_failures),
                                      verbose=1))
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed; first: {errors[0]}")
    return read_results(study_dir)


def cache_counts(df: pd.DataFrame) -> tuple[int, int]:
    """(purifications computed, purifications reused) over a study's rows."""
    if df.empty or "purify_reused" not in df:
        return 0, 0
    col = df["purify_reused"].dropna().astype(bool)
    return int((~col).sum()), int(col.sum())
