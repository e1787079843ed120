"""A Ray Tune sweep writes the rows it should, purifies each config once, and resumes without duplicates."""

from __future__ import annotations

import pytest

from eclipse_ray.distributed.tune import cache_counts, run_sweep, spec

V = {"victim.width": "8"}


@pytest.fixture(scope="module")
def specs():
    return [
        spec("digits", "urp", "none", {**V, "victim.epochs": "1"}),
        spec("digits", "urp", "jpeg", {**V, "victim.epochs": "1"}),
        spec("digits", "urp", "jpeg", {**V, "victim.epochs": "2"}),  # same purified set, other victim
        spec("digits", "urp", "bitdepth", {**V, "victim.epochs": "1"}),
    ]


def test_sweep_rows_cache_and_resume(tmp_path, specs, monkeypatch):
    monkeypatch.delenv("ECLIPSE_RAY_CACHE", raising=False)  # the study's own cache: counts start at zero
    study = tmp_path / "study"
    df = run_sweep(study, specs, cpus_per_trial=1, max_concurrent=2)
    assert len(df) == 4 and df["config_hash"].is_unique
    assert set(df["defense.name"]) == {"none", "jpeg", "bitdepth"}
    computed, reused = cache_counts(df)
    assert (computed, reused) == (2, 1)  # K = 2 distinct purifier configs for 3 purifying trials
    assert df["poison_success"].notna().all()  # availability: relative loss against the cached clean reference
    parts = sorted(study.glob("part-*.parquet"))
    # Rerun the same sweep: nothing is recomputed and no row is written twice.
    df2 = run_sweep(study, specs, cpus_per_trial=1, max_concurrent=2)
    assert len(df2) == 4 and sorted(study.glob("part-*.parquet")) == parts
