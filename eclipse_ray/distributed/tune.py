"""Ray Tune over victim trials: a thin trainable around :func:`eclipse_ray.trial.run_trial`.

* Each Tune trial is one eclipse_ray trial (a JSON-able spec: dataset, attack,
  defense, ``--set`` overrides). Resources per trial via ``tune.with_resources``
  (fractional GPUs suit the fast victim), retries via ``tune.FailureConfig``: a
  trial on a lost node runs again elsewhere.
* Trials only *read* artifacts: the staged study
  (:mod:`eclipse_ray.distributed.study`) computed the poisoned and purified sets
  and reference accuracies before them. A spec run on its own computes what it
  misses in-process.
* Rows go to the study's parquet store (local or URI), one part per trial named
  after its ``config_hash``: a trial whose row is stored is not rerun, and a
  retried trial rewrites its own part, so every row lands exactly once.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pandas as pd

from eclipse_ray import storage
from eclipse_ray.config import ConfigError, config_hash
from eclipse_ray.data import cache as C
from eclipse_ray.data.address import DIGEST_KEY, pin
from eclipse_ray.data.cache import study_cache
from eclipse_ray.distributed import artifacts as A
from eclipse_ray.result_store import METRIC_NAMES, CorruptPart, append_rows, read_part
from eclipse_ray.trial import build_config, run_trial

METRIC_KEYS = METRIC_NAMES  # what each trial reports to Tune (those present in its row)


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


def stored_row(results_dir: str, key: str) -> dict[str, Any] | None:
    """The stored row of trial ``key`` (its own part ``part-<key>.parquet``), else ``None``.

    Rows of older stores (parts with other names) are found by the study's driver, which
    leaves those trials out before any is submitted.
    """

    own = storage.join(results_dir, f"part-{key}.parquet")
    if storage.is_file(own):
        try:
            return read_part(own).iloc[-1].to_dict()
        except CorruptPart as e:
            storage.quarantine(own, f"corrupt ({e.detail})")  # the trial runs again and rewrites it
    return None


def run_spec(trial: dict[str, Any], results_dir: str, cache_dir: str, data_dir: str | None = None,
             purify_reused: bool | None = None) -> dict[str, Any]:
    """Run one spec (or return its stored row), reading the artifacts the study's stages computed.

    Whatever is missing from the cache (a spec run on its own) is computed in-process.
    The row is stored under the trial's ``config_hash``: a retried trial rewrites it.
    """
    cfg = build_config(trial["dataset"], trial["attack"], trial["defense"], trial["set"], trial.get(DIGEST_KEY))
    key = cfg.hash()
    results_dir, cache_dir = storage.normalize(results_dir), storage.normalize(cache_dir)
    for stored in cfg.hashes():  # also a row an earlier version stored under this config's former hash
        row = stored_row(results_dir, stored)
        if row is not None:
            return {**row, "resumed": True}
    os.environ["ECLIPSE_RAY_CACHE"] = cache_dir  # models are looked up there
    loc = C.poisons_location(cache_dir, cfg.dataset_address, cfg.attack)
    if not C.intact(loc, deep=False):
        A.make_poison(cfg, cache_dir, data_dir)
    data = C.read_poisoned(loc, cfg.dataset)
    purified, reused = A.purified(cfg, cache_dir, data_dir) if cfg.defense.purifies else (None, None)
    row = run_trial(cfg, data=data, purified_train=purified, cache_dir=cache_dir, progress=False)
    row["purify_reused"] = reused if purify_reused is None or not reused else purify_reused
    row.update(A.keys(cfg))  # where the report finds the images of this row
    append_rows(results_dir, [row], name=key)
    return row


def trainable(config: dict[str, Any], results_dir: str, cache_dir: str, data_dir: str | None = None,
              env: dict[str, str] | None = None) -> None:
    """The Tune function trainable (the study's locations and storage variables bound with ``with_parameters``,
    so that they never appear in trial names or logs)."""
    from ray import tune

    os.environ.update(env or {})  # storage endpoint and keys, as the driver had them
    row = run_spec(config["trial"]["spec"], results_dir, cache_dir, data_dir, config["trial"].get("purify_reused"))
    tune.report(_numeric(row))


def tuner_inputs(study_dir: str, specs: list[dict[str, Any]], cache_dir: str | None = None, *,
                 cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, data_dir: str | None = None,
                 purify_reused: list[bool | None] | None = None) -> tuple[Any, dict[str, Any]]:
    """(trainable, param_space) of victim trials, for people who drive Ray Tune themselves::

        from ray import tune
        from eclipse_ray.distributed.tune import spec, tuner_inputs

        specs = [spec("digits", "lsp", d, {"victim.epochs": "4"}) for d in ("none", "jpeg")]
        trainable, space = tuner_inputs("results/mine", specs)
        grid = tune.Tuner(trainable, param_space=space,
                          tune_config=tune.TuneConfig(metric="test_acc", mode="max")).fit()
        grid.get_best_result().metrics, grid.get_dataframe()

    Each trial reports :data:`METRIC_KEYS` and appends its full row to the parquet store at
    ``study_dir`` (read it with :func:`eclipse_ray.result_store.read_results`); ``cache_dir``
    (default ``<study_dir>/.cache``) holds poisoned and purified sets and models, computed by the
    trial that first needs them (:func:`eclipse_ray.distributed.study.run_study` computes them once,
    stage by stage, before any trial). The param space is a grid over ``specs``.
    """
    from ray import tune


    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # keep relative dataset paths meaningful
    study = storage.normalize(study_dir)
    cache = storage.normalize(cache_dir) if cache_dir else study_cache(study)
    reused = purify_reused if purify_reused is not None else [None] * len(specs)
    if len(reused) != len(specs):
        raise ValueError(f"purify_reused has {len(reused)} entries for {len(specs)} specs")
    fn = tune.with_resources(tune.with_parameters(trainable, results_dir=study, cache_dir=cache,
                                                  data_dir=data_dir, env=storage.env()),
                             {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    return fn, {"trial": tune.grid_search([{"spec": pin(s), "purify_reused": r} for s, r in zip(specs, reused)])}


LOGGERS = ("csv", "json", "tensorboard", "mlflow", "wandb")
AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"  # Tune's switch for its automatic CSV/JSON/TensorBoard loggers


def tune_loggers(names: list[str], experiment: str) -> list[Any]:
    """Ray Tune's logger callbacks by name (``csv``, ``json``, ``tensorboard``, ``mlflow``: tracking URI
    from ``$MLFLOW_TRACKING_URI``; ``wandb``: project from ``$WANDB_PROJECT``, default eclipse_ray).
    A name that is unknown, or whose package is missing, is a one-line error before any work."""

    out = []
    for name in dict.fromkeys(names):
        if name not in LOGGERS:
            raise ConfigError(f"--tune-logger {name}: unknown (one of {', '.join(LOGGERS)})")
        need = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}.get(name)
        if need:
            try:
                __import__(need)
            except ImportError:
                raise ConfigError(f"--tune-logger {name}: needs the {need} package (pip install {need})") from None
        if name in ("csv", "json", "tensorboard"):
            from ray.tune import logger

            out.append({"csv": logger.CSVLoggerCallback, "json": logger.JsonLoggerCallback,
                        "tensorboard": logger.TBXLoggerCallback}[name]())
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            out.append(MLflowLoggerCallback(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
                                            experiment_name=experiment))
        else:
            from ray.air.integrations.wandb import WandbLoggerCallback

            out.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", "eclipse_ray"), group=experiment))
    return out


def run_trials(study_dir: str, trials: list[tuple[dict[str, Any], bool | None]], cache_dir: str, *,
               cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_failures: int = 2,
               data_dir: str | None = None, max_concurrent: int | None = None,
               loggers: list[str] | None = None) -> None:
    """Victim trials as one Tune experiment (state under ``<study>/_tune``); a lost trial is rerun elsewhere.

    ``loggers``: Tune logger callbacks by name (:func:`tune_loggers`), in place of Tune's automatic
    CSV/JSON/TensorBoard ones; ``None``: Tune's own choice (its automatic ones unless
    ``$TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` is 1). Sets ``RAY_CHDIR_TO_TRIAL_DIR=0`` unless given
    (relative dataset paths stay meaningful in trials)."""
    from ray import tune


    fn, space = tuner_inputs(study_dir, [s for s, _ in trials], cache_dir, cpus_per_trial=cpus_per_trial,
                             gpus_per_trial=gpus_per_trial, data_dir=data_dir,
                             purify_reused=[r for _, r in trials])
    name = f"trials-{config_hash({'specs': [s for s, _ in trials]}, 8)}-{time.strftime('%Y%m%dT%H%M%S')}"
    callbacks = tune_loggers(loggers, storage.normalize(study_dir).rstrip("/").rsplit("/", 1)[-1]) \
        if loggers else None
    tuner = tune.Tuner(
        fn,
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name=name, storage_path=storage.join(study_dir, "_tune"), callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=max_failures), verbose=1))
    auto = os.environ.get(AUTO_LOGGERS)
    if loggers:  # exactly the loggers asked for
        os.environ[AUTO_LOGGERS] = "1"
    try:
        grid = tuner.fit()
    finally:
        if loggers and auto is None:
            del os.environ[AUTO_LOGGERS]
        elif loggers:
            os.environ[AUTO_LOGGERS] = auto
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed; first: {errors[0]}")



def cache_counts(df: pd.DataFrame) -> tuple[int, int]:
    """(purifications computed, purifications reused) over a study's rows."""
    if df.empty or "purify_reused" not in df:
        return 0, 0
    col = df["purify_reused"].dropna().astype(bool)
    return int((~col).sum()), int(col.sum())
