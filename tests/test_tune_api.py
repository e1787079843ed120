"""Ray Tune as Ray users drive it: a Tuner built from ``tuner_inputs`` returns a ResultGrid and fills the results
store; logger callbacks are chosen by name, replacing Tune's automatic ones; a missing package fails first."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from eclipse_ray.config import ConfigError
from eclipse_ray.distributed.tune import AUTO_LOGGERS, spec, tune_loggers, tuner_inputs
from eclipse_ray.result_store import read_results

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_tuner_of_our_own_with_the_csv_logger_only(tmp_path, monkeypatch):
    import ray
    from ray import tune

    monkeypatch.setenv(AUTO_LOGGERS, "1")  # only the callbacks given below
    quick = {"victim.epochs": "1", "victim.width": "8"}
    specs = [spec("digits", "badnets", d, quick) for d in ("none", "jpeg")]
    trainable, space = tuner_inputs(str(tmp_path / "mine"), specs)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        grid = tune.Tuner(trainable, param_space=space,
                          tune_config=tune.TuneConfig(metric="test_acc", mode="max"),
                          run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="exp",
                                                    callbacks=tune_loggers(["csv"], "mine"))).fit()
    finally:
        ray.shutdown()
    assert len(grid) == 2 and not grid.errors
    df = grid.get_dataframe()
    assert set(df["config/trial/spec/defense"]) == {"none", "jpeg"} and df["test_acc"].between(0, 1).all()
    best = grid.get_best_result()
    assert best.metrics["test_acc"] == df["test_acc"].max()
    rows = read_results(tmp_path / "mine")  # the full rows, as a study stores them
    assert sorted(rows["defense.name"]) == ["jpeg", "none"] and rows["config_hash"].is_unique
    trials = list((tmp_path / "tune" / "exp").glob("*/"))
    assert len([t for t in trials if (t / "progress.csv").is_file()]) == 2
    assert not list((tmp_path / "tune").rglob("events.out.tfevents*")) and not list((tmp_path / "tune").rglob(
        "result.json"))


def test_logger_names_are_checked_before_any_work():
    with pytest.raises(ConfigError, match=r"--tune-logger nope: unknown \(one of csv, json, tensorboard, mlflow, wandb\)"):
        tune_loggers(["nope"], "x")
    for name, package in (("mlflow", "mlflow"), ("wandb", "wandb")):
        if importlib.util.find_spec(package) is None:
            with pytest.raises(ConfigError, match=rf"--tune-logger {name}: needs the {package} package"):
                tune_loggers([name], "x")
    kinds = [type(cb).__name__ for cb in tune_loggers(["csv", "json", "tensorboard", "csv"], "x")]
    assert kinds == ["CSVLoggerCallback", "JsonLoggerCallback", "TBXLoggerCallback"]


def test_sweeps_take_tune_loggers():
    sys.path.insert(0, str(ROOT / "sweeps"))
    from _common import parser

    args = parser("x").parse_args(["--tune-logger", "csv", "--tune-logger", "tensorboard"])
    assert args.tune_logger == ["csv", "tensorboard"]
    with pytest.raises(SystemExit):
        parser("x").parse_args(["--tune-logger", "nope"])
