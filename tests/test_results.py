"""Results analysis: seed aggregation, the Pareto frontier, plots and the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import pandas as pd

from eclipse_ray.results.pareto import pareto, pareto_front, summarize
from eclipse_ray.results.report import write_report
from eclipse_ray.result_store import append_rows, read_results


def rows():
    out = []
    for seed in (0, 1):
        for name, sigma, acc, ps in [("none", None, 0.2, 0.7), ("jpeg", None, 0.5, 0.3), ("eclipse", 0.05, 0.6, 0.2),
                                     ("eclipse", 0.1, 0.7, 0.25), ("denoise", 0.1, 0.55, 0.35)]:
            out.append({"dataset": "d", "attack.name": "lsp", "defense.name": name, "defense.sigma": sigma,
                        "victim.epochs": 5, "seed": seed, "test_acc": acc + 0.01 * seed,
                        "poison_success": ps, "config_hash": f"{name}{sigma}{seed}"})
    out.append({"dataset": "d", "attack.name": "none", "defense.name": "none", "defense.sigma": None,
                "victim.epochs": 5, "seed": 0, "test_acc": 0.9, "config_hash": "clean"})
    return out


def test_summary_averages_over_seeds():
    s = summarize(pd.DataFrame(rows()))
    e = s[(s["defense.name"] == "eclipse") & (s["defense.sigma"] == 0.05)].iloc[0]
    assert e["seeds"] == 2 and abs(e["test_acc_mean"] - 0.605) < 1e-9 and e["test_acc_std"] > 0


def test_summary_keeps_boolean_settings_apart():
    """Two configurations differing only in a boolean setting stay two rows, each with its own value (they
    used to be coerced to numbers: both NaN, so a report could not tell ``victim.whiten`` true from false)."""
    df = pd.DataFrame([{"dataset": "d", "attack.name": "lc", "defense.name": "none", "victim.whiten": w,
                        "seed": 0, "test_acc": acc, "poison_success": ps, "config_hash": str(w)}
                       for w, acc, ps in ((True, 0.66, 0.002), (False, 0.67, 0.999))])
    s = summarize(df).set_index("victim.whiten")
    assert s.index.tolist() in ([False, True], [True, False]) and s.loc[False, "poison_success_mean"] == 0.999
    older = pd.concat([df, df.iloc[:1].assign(**{"victim.whiten": None, "config_hash": "old", "test_acc": 0.5})])
    for column in (older["victim.whiten"], older["victim.whiten"].astype("boolean")):  # rows from before the setting
        got = summarize(older.assign(**{"victim.whiten": column}))["victim.whiten"].tolist()
        assert sorted(v for v in got if isinstance(v, bool)) == [False, True] and sum(pd.isna(v) for v in got) == 1


def test_pareto_frontier_keeps_only_non_dominated_configs():
    p = pareto(pd.DataFrame(rows()))
    front = set(zip(p[p["on_front"]]["defense.name"], p[p["on_front"]]["defense.sigma"].fillna(-1)))
    assert front == {("eclipse", 0.05), ("eclipse", 0.1)}
    assert "none" not in set(p["attack.name"])  # utility rows are not attack points
    pts = pd.DataFrame({"a": [1.0, 2.0, 2.0, 0.5], "b": [1.0, 1.0, 0.5, 0.1]})
    assert pareto_front(pts, "a", "b").tolist() == [False, False, True, True]


def test_report_and_plot_are_written(tmp_path, monkeypatch):
    import eclipse_ray.results.pareto as pareto_mod

    append_rows(tmp_path, rows()[:6])
    append_rows(tmp_path, rows()[6:])
    assert len(read_results(tmp_path)) == 11
    calls = []
    real = pareto_mod.summarize
    for mod in ("eclipse_ray.results.pareto", "eclipse_ray.results.report", "eclipse_ray.results.html"):
        monkeypatch.setattr(f"{mod}.summarize", lambda df: calls.append(1) or real(df))
    report = write_report(tmp_path)
    assert len(calls) == 1, "the plots, the Markdown and the HTML report share one summary of the store"
    text = Path(report).read_text()
    assert "Pareto frontier" in text and "eclipse" in text and "![Pareto](pareto.png)" in text
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_sigma_plot_only_for_sweeps_over_sigma(tmp_path):
    append_rows(tmp_path / "two", rows())  # two σ values: no σ plot
    assert "sigma.png" not in Path(write_report(tmp_path / "two")).read_text()
    extra = [{**r, "defense.sigma": 0.2, "config_hash": r["config_hash"] + "b", "test_acc": 0.4}
             for r in rows() if r["defense.name"] == "eclipse" and r["defense.sigma"] == 0.1]
    append_rows(tmp_path / "three", rows() + extra)
    assert "![sigma](sigma.png)" in Path(write_report(tmp_path / "three")).read_text()
    assert (tmp_path / "three" / "sigma.png").read_bytes()[:4] == b"\x89PNG"


def test_rows_stored_before_a_setting_existed_pool_with_rows_at_its_default(tmp_path):
    """A study resumed after an upgrade: seed 0 stored without the columns added since (victim.precision, the
    airbench settings, defense.rng and compile_mode), seed 1 with them. One configuration, two seeds; a row at
    another value of an added setting stays apart."""
    import numpy as np

    from eclipse_ray.trial import build_config

    def row(seed, **extra):
        flat = build_config("digits", "lsp", "eclipse", {"seed": str(seed), **extra}).flat()
        return {**flat, "test_acc": 0.5 + seed / 10, "poison_success": np.nan}

    added = ("victim.precision", "victim.bias_lr_scale", "victim.bias_decay", "victim.lookahead", "victim.tta",
             "victim.whiten_bias_epochs", "defense.rng", "defense.compile_mode")
    old = {k: v for k, v in row(0).items() if k not in added}
    append_rows(tmp_path, [old])
    append_rows(tmp_path, [row(1), row(2, **{"defense.rng": "philox"})])
    df = read_results(tmp_path)
    assert df["defense.rng"].isna().sum() == 1  # the store is read as written
    s = summarize(df).sort_values("seeds")
    assert s["seeds"].tolist() == [1, 2] and s["defense.rng"].tolist() == ["philox", "generator"]
    assert s["victim.precision"].tolist() == ["fp32", "fp32"]
    assert s["test_acc_mean"].tolist() == pytest.approx([0.7, 0.55])
    from eclipse_ray.results.html import varying_settings

    assert varying_settings(df) == ["defense.rng"]  # not the settings only the old row lacks
    assert varying_settings(df[df["defense.rng"] != "philox"]) == []


def test_a_number_filled_in_pools_with_the_stored_number(tmp_path):
    """victim.tta: an int setting, stored as 2, read back as 2.0 beside a part without it; filled as 2.0."""
    import numpy as np

    from eclipse_ray.trial import build_config

    def row(seed):
        flat = build_config("digits", "lsp", "jpeg", {"seed": str(seed), "victim.arch": "airbench"}).flat()
        return {**flat, "test_acc": 0.5, "poison_success": np.nan}

    append_rows(tmp_path, [{k: v for k, v in row(0).items() if k != "victim.tta"}])
    append_rows(tmp_path, [row(1)])
    s = summarize(read_results(tmp_path))
    assert s["seeds"].tolist() == [2] and s["victim.tta"].tolist() == [2]
