"""A worker node lost in the middle of a purification or a study: the job finishes and loses nothing.

A Ray cluster on this machine (``ray.cluster_utils.Cluster``): a head and two
worker nodes of one CPU each. The node removed is one that runs the work at
that moment (a purification actor, a Tune trial).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import ray

from eclipse_ray import storage
from eclipse_ray.data import store
from eclipse_ray.defenses import DEFENSES

pytestmark = pytest.mark.heavy  # a Ray cluster of three nodes per test: run with `pytest -m heavy` (CI does)


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address)
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


def _node_running(workers, class_part: str, timeout: float = 120.0):
    """The worker node (not the head) that hosts a live actor whose class name contains ``class_part``."""
    from ray.util.state import list_actors

    ids = {w.node_id: w for w in workers}
    t = time.time()
    while time.time() - t < timeout:
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
            if class_part in (a.class_name or "") and a.node_id in ids:
                return ids[a.node_id]
        time.sleep(0.2)
    raise TimeoutError(f"no {class_part} actor on a worker node within {timeout} s")


def _in_thread(fn, *args, **kwargs):
    out = {}

    def run():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001  (re-raised in the test)
            out["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out


def test_purify_survives_losing_a_worker_node(cluster, digits, model_dir, tmp_path):
    from eclipse_ray.distributed.purify import purify_dataset

    c, workers = cluster
    src = store.write_dataset(tmp_path / "in", {"train": digits.train.subset(np.arange(768)), "test": digits.test},
                              shard_rows=200)  # 4 shards of 200, 200, 200, 168 rows
    defense = DEFENSES.build("denoise", {"model": str(model_dir), "t_star": "20", "batch_size": "16"})
    ref = purify_dataset(src, defense, tmp_path / "ref", actors=0, chunk_rows=32, progress=False)

    th, out = _in_thread(purify_dataset, src, defense, tmp_path / "out", actors=2, chunk_rows=32, progress=False)
    victim = _node_running(workers, "ShardPurifier")
    work = storage.join(tmp_path, f".out.purify-{ref['key']}", "train")
    t = time.time()
    while len(storage.listdir(work)) < 3 and time.time() - t < 120:
        time.sleep(0.1)
    assert len(storage.listdir(work)) < 26, "the job finished before the node could be removed"
    c.remove_node(victim)
    th.join(timeout=400)
    assert not th.is_alive(), "purification stuck after a node was lost"
    if "error" in out:
        raise out["error"]
    a, b = store.read_dataset(tmp_path / "ref")[0], store.read_dataset(tmp_path / "out")[0]
    assert out["value"]["rows"] == 768 and len(b["train"]) == 768
    assert np.array_equal(a["train"].index, b["train"].index)  # every row once, in order
    assert np.array_equal(a["train"].images, b["train"].images)  # identical output


def test_study_survives_losing_a_worker_node(cluster, tmp_path, monkeypatch):
    from eclipse_ray.distributed.study import run_study
    from eclipse_ray.distributed.tune import spec
    from eclipse_ray.result_store import part_files

    monkeypatch.delenv("ECLIPSE_RAY_CACHE", raising=False)
    c, workers = cluster
    v = {"victim.width": "8", "victim.epochs": "3"}
    specs = [spec("digits", "urp", d, {**v, "seed": str(s)}) for d in ("none", "jpeg") for s in (0, 1)]
    study = tmp_path / "study"
    th, out = _in_thread(run_study, study, specs, cpus_per_trial=1, max_failures=3)
    victim = _node_running(workers, "ImplicitFunc", timeout=300)
    c.remove_node(victim)
    th.join(timeout=500)
    assert not th.is_alive(), "study stuck after a node was lost"
    if "error" in out:
        raise out["error"]
    df = out["value"]
    assert len(df) == 4 and df["config_hash"].is_unique and len(part_files(study)) == 4
