"""Ray Data purification: same result as in-process, no row lost, resumes after an interruption."""

from __future__ import annotations

import numpy as np
import pytest

from eclipse_ray.config import ConfigError
from eclipse_ray.data import store
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.distributed import purify as dp
from eclipse_ray.attacks import ATTACKS


@pytest.fixture(scope="module")
def poisoned_dir(digits, tmp_path_factory):
    data = ATTACKS.build("badnets").apply(digits)
    small = {k: s.subset(np.arange(min(len(s), 48))) for k, s in data.splits.items()}
    out = tmp_path_factory.mktemp("p") / "ds"
    store.write_dataset(out, small, data.meta, shard_rows=12)  # 4 train shards
    return out


def defense(model_dir):
    return DEFENSES.build("denoise", {"model": str(model_dir), "t_star": "20", "batch_size": "8"})


def test_ray_actors_match_in_process_and_lose_no_row(poisoned_dir, model_dir, tmp_path):
    local = dp.purify_dataset(poisoned_dir, defense(model_dir), tmp_path / "local", actors=0, progress=False)
    remote = dp.purify_dataset(poisoned_dir, defense(model_dir), tmp_path / "ray", actors=2, progress=False)
    assert local["units_computed"] == remote["units_computed"] == 4
    a, b = store.read_dataset(tmp_path / "local")[0], store.read_dataset(tmp_path / "ray")[0]
    src = store.read_dataset(poisoned_dir)[0]
    assert set(a) == set(b) == set(src)
    assert np.array_equal(a["train"].images, b["train"].images)
    for s in (a, b):
        assert np.array_equal(s["train"].index, src["train"].index)
        assert np.array_equal(s["train"].labels, src["train"].labels)
        assert np.array_equal(s["train"].poisoned, src["train"].poisoned)
        assert not np.array_equal(s["train"].images, src["train"].images)
        assert np.array_equal(s["test"].images, src["test"].images)  # only train is purified
    meta = store.read_meta(tmp_path / "ray")["meta"]["purify"]
    assert meta["resolved"]["defense.t_star"] == 20 and meta["key"] == local["key"]


def test_interrupted_purify_resumes_and_then_serves_the_cache(poisoned_dir, model_dir, tmp_path, monkeypatch):
    real = dp.purify_unit
    written = []

    def crash_after_two(*args):
        if len(written) == 2:
            raise KeyboardInterrupt("killed")
        written.append(args[1])
        return real(*args)

    monkeypatch.setattr(dp, "purify_unit", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        dp.purify_dataset(poisoned_dir, defense(model_dir), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing that looks complete
    monkeypatch.setattr(dp, "purify_unit", real)
    again = dp.purify_dataset(poisoned_dir, defense(model_dir), tmp_path / "out", progress=False)
    assert again["units_computed"] == 2 and not again["cached"]
    dp.purify_dataset(poisoned_dir, defense(model_dir), tmp_path / "fresh", progress=False)
    assert np.array_equal(store.read_split(tmp_path / "out", "train").images,
                          store.read_split(tmp_path / "fresh", "train").images)
    cached = dp.purify_dataset(poisoned_dir, defense(model_dir), tmp_path / "out", progress=False)
    assert cached["cached"]
    other = DEFENSES.build("denoise", {"model": str(model_dir), "t_star": "30"})
    with pytest.raises(ConfigError, match="another dataset"):
        dp.purify_dataset(poisoned_dir, other, tmp_path / "out", progress=False)


def test_baseline_defenses_run_through_the_same_path(poisoned_dir, tmp_path):
    r = dp.purify_dataset(poisoned_dir, DEFENSES.build("jpeg"), tmp_path / "j", progress=False)
    out = store.read_split(tmp_path / "j", "train")
    direct = DEFENSES.build("jpeg").purify(store.read_split(poisoned_dir, "train"), 0)
    assert r["rows"] == 48 and np.array_equal(out.images, direct.images)
