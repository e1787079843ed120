"""Ray Data purification: same result as in-process, no row lost, resumes after an interruption."""

from __future__ import annotations

import numpy as np
import torch
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


@pytest.mark.slow
def test_same_bytes_whatever_the_layout_and_no_row_lost(poisoned_dir, model_dir, tmp_path):
    """0, 1 or 2 actors, any unit size, a model batch (5) that divides no shard (12 rows): identical bytes."""
    d = DEFENSES.build("denoise", {"model": str(model_dir), "t_star": "20", "batch_size": "5"})
    local = dp.purify_dataset(poisoned_dir, d, tmp_path / "local", actors=0, progress=False)
    one = dp.purify_dataset(poisoned_dir, d, tmp_path / "one", actors=1, chunk_rows=7, progress=False)
    remote = dp.purify_dataset(poisoned_dir, d, tmp_path / "ray", actors=2, batch_size=4, chunk_rows=4,
                               progress=False)
    assert local["units_computed"] == 4 and remote["units_computed"] == 12 and one["units"] == 8
    a, b, c = (store.read_dataset(tmp_path / n)[0] for n in ("local", "ray", "one"))
    src = store.read_dataset(poisoned_dir)[0]
    whole = d.purify(src["train"], 0, progress=False)  # the in-process loop over the whole set
    assert set(a) == set(b) == set(src)
    assert np.array_equal(a["train"].images, b["train"].images)
    assert np.array_equal(a["train"].images, c["train"].images)
    assert np.array_equal(a["train"].images, whole.images)
    for s in (a, b):
        assert np.array_equal(s["train"].index, src["train"].index)
        assert np.array_equal(s["train"].labels, src["train"].labels)
        assert np.array_equal(s["train"].poisoned, src["train"].poisoned)
        assert not np.array_equal(s["train"].images, src["train"].images)
        assert np.array_equal(s["test"].images, src["test"].images)  # only train is purified
    meta = store.read_meta(tmp_path / "ray")["meta"]["purify"]
    assert meta["resolved"]["defense.t_star"] == 20 and meta["key"] == local["key"]


def test_a_model_call_always_has_the_batch_shape(model_dir):
    """The purifier pads the tail: a sample's output is the same alone or inside a full batch."""
    d = DEFENSES.build("denoise", {"model": str(model_dir), "t_star": "50", "batch_size": "6"})
    run = d.image_purifier(model_dir, seed=3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 8, 8, 3), dtype=np.uint8)
    index = np.arange(100, 111)
    full = run(images, index)
    assert full.shape == images.shape
    for i in (0, 5, 10):
        assert np.array_equal(run(images[i:i + 1], index[i:i + 1])[0], full[i])


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_lone_training_task_gets_every_cpu_of_the_node():
    import ray

    from eclipse_ray.distributed import study
    from eclipse_ray.distributed.connect import init_ray

    init_ray(None, num_cpus=2)
    cpus = int(ray.cluster_resources()["CPU"])
    assert study._cpu_share(1) == {"num_cpus": cpus} and study._cpu_share(4 * cpus) == {"num_cpus": 1}
    assert study._run_tasks(torch.get_num_threads, [()], study._cpu_share(1)) == [cpus]  # torch uses them
    assert study._run_tasks(torch.get_num_threads, [(), ()], study._cpu_share(cpus)) == [1, 1]


@pytest.mark.heavy  # three purifications (≈ 15 s): with the heavy tests, so the default run stays ≤ 10 min
def test_a_set_sharing_rows_with_a_purified_one_copies_them_and_gets_the_same_bytes(digits, model_dir, tmp_path):
    n = 48
    bad = ATTACKS.build("badnets").apply(digits)
    for name, data in (("clean", digits), ("bad", bad)):
        store.write_dataset(tmp_path / name, {k: s.subset(np.arange(min(len(s), n))) for k, s in data.splits.items()},
                            data.meta, shard_rows=12)
    d = defense(model_dir)
    dp.purify_dataset(tmp_path / "clean", d, tmp_path / "clean_p", chunk_rows=8, progress=False)
    full = dp.purify_dataset(tmp_path / "bad", d, tmp_path / "bad_full", chunk_rows=8, progress=False)
    got = dp.purify_dataset(tmp_path / "bad", d, tmp_path / "bad_reuse", chunk_rows=8, progress=False,
                            reuse=[tmp_path / "clean_p", tmp_path / "bad"])  # a non-purified candidate is skipped
    poisoned = store.read_dataset(tmp_path / "bad")[0]["train"].poisoned
    assert full["rows_reused"] == 0 and got["rows_reused"] == (~poisoned).sum() and 0 < poisoned.sum() < n
    assert got["donor"] == str(tmp_path / "clean_p")
    a, b = (store.read_dataset(tmp_path / m)[0]["train"] for m in ("bad_full", "bad_reuse"))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.index, b.index)  # the same bytes
    other = DEFENSES.build("denoise", {"model": str(model_dir), "t_star": "30", "batch_size": "8"})
    again = dp.purify_dataset(tmp_path / "bad", other, tmp_path / "bad_other", chunk_rows=8, progress=False,
                              reuse=[tmp_path / "clean_p"])  # another noise level: nothing to copy
    assert again["rows_reused"] == 0 and "donor" not in again


def test_a_study_purifies_clean_sets_first_where_a_backdoor_set_can_copy_their_rows():
    from types import SimpleNamespace as NS

    from eclipse_ray.distributed.study import _donor_order

    def req(name):
        return NS(defense=DEFENSES.build(name, {"model": "m"} if name != "jpeg" else {}), seed=0, model_dir="m",
                  resolved={})

    cfgs = {k: NS(attack=ATTACKS.build(a)) for k, a in (("c", "none"), ("b", "badnets"), ("u", "urp"),
                                                          ("cj", "none"), ("bj", "badnets"))}
    reqs = {"c": req("denoise"), "b": req("denoise"), "u": req("denoise"), "cj": req("jpeg"), "bj": req("jpeg")}
    first, rest = _donor_order(reqs, cfgs)
    assert first == [reqs["c"]] and rest == [reqs[k] for k in ("b", "u", "cj", "bj")]  # jpeg is not row-wise
    only_availability = {k: reqs[k] for k in ("c", "u")}
    assert _donor_order(only_availability, cfgs) == [[reqs["c"], reqs["u"]]]  # nothing to copy: one job
