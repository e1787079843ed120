"""Storage anywhere: the same stores, caches and studies on a local path and on an S3-API server on localhost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from eclipse_ray import storage
from eclipse_ray.data import store
from eclipse_ray.result_store import append_rows, part_files, read_results


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    bucket = request.getfixturevalue("s3")
    return storage.join(bucket, request.node.name.replace("[", "-").replace("]", ""))


def test_files_are_written_whole_listed_and_removed(root):
    loc = storage.join(root, "a", "b.json")
    assert not storage.exists(loc) and storage.listdir(storage.join(root, "a")) == []
    storage.write_json(loc, {"x": 1})
    storage.write_json(loc, {"x": 2})  # replaced, never appended
    assert storage.read_json(loc) == {"x": 2} and storage.is_file(loc)
    storage.write_bytes(storage.join(root, "a", "c.bin"), b"abc")
    assert storage.listdir(storage.join(root, "a")) == ["b.json", "c.bin"]
    assert storage.glob(storage.join(root, "a"), "*.bin") == [storage.join(root, "a", "c.bin")]
    storage.remove(storage.join(root, "a"))
    assert not storage.exists(loc)


def test_dataset_round_trip_and_local_copy(root, digits, tmp_path, monkeypatch):
    small = {k: s.subset(np.arange(30)) for k, s in digits.splits.items()}
    loc = store.write_dataset(storage.join(root, "ds"), small, {"note": "x"}, shard_rows=8)
    splits, meta = store.read_dataset(loc)
    assert meta["note"] == "x" and np.array_equal(splits["train"].images, small["train"].images)
    assert np.array_equal(splits["test"].labels, small["test"].labels)
    from eclipse_ray.config import ConfigError

    with pytest.raises(ConfigError, match="already exists"):
        store.write_dataset(loc, small)
    monkeypatch.setenv("ECLIPSE_RAY_LOCAL", str(tmp_path / "local"))
    copy = storage.local_dir(loc, "meta.json")  # a node-local copy of a remote directory (itself when local)
    assert (copy / "meta.json").is_file() and np.array_equal(store.read_split(copy, "train").index,
                                                             small["train"].index)


def test_results_parts_once_per_name_and_corrupt_part_skipped(root, capsys):
    study = storage.join(root, "study")
    append_rows(study, [{"config_hash": "h1", "test_acc": 0.5}], name="h1")
    append_rows(study, [{"config_hash": "h1", "test_acc": 0.5}], name="h1")  # a retried trial: same part
    append_rows(study, [{"config_hash": "h2", "test_acc": 0.7, "asr": 0.1}])
    storage.write_bytes(storage.join(study, "part-broken.parquet"), b"not parquet")
    df = read_results(study)
    assert sorted(df["config_hash"]) == ["h1", "h2"] and len(part_files(study)) == 3
    assert "part-broken.parquet" in capsys.readouterr().err


def test_purify_from_and_to_object_storage(s3, digits, tmp_path):
    from eclipse_ray.defenses import DEFENSES
    from eclipse_ray.distributed.purify import purify_dataset

    small = {k: s.subset(np.arange(40)) for k, s in digits.splits.items()}
    src = store.write_dataset(storage.join(s3, "purify-in"), small, shard_rows=16)
    remote = purify_dataset(src, DEFENSES.build("jpeg"), storage.join(s3, "purify-out"), progress=False)
    local = purify_dataset(src, DEFENSES.build("jpeg"), tmp_path / "out", progress=False)
    assert remote["rows"] == local["rows"] == 40 and remote["key"] == local["key"]
    a, b = store.read_dataset(storage.join(s3, "purify-out"))[0], store.read_dataset(tmp_path / "out")[0]
    assert np.array_equal(a["train"].images, b["train"].images) and np.array_equal(a["test"].images,
                                                                                  small["test"].images)
    again = purify_dataset(src, DEFENSES.build("jpeg"), storage.join(s3, "purify-out"), progress=False)
    assert again["cached"]


@pytest.mark.heavy  # ≈ 110 s on a 2-core EPYC: Ray, Tune and four trials against the S3-API server
def test_study_rows_artifacts_and_resume_on_object_storage(s3, model_dir, monkeypatch):
    """A staged study on a bucket: each purification once, rows readable with plain pyarrow, a rerun adds nothing."""
    import ray
    from pyarrow import fs as pafs

    from eclipse_ray.distributed.study import run_study
    from eclipse_ray.distributed.tune import cache_counts, spec

    monkeypatch.delenv("ECLIPSE_RAY_CACHE", raising=False)  # the study's own cache: counts start at zero
    ray.shutdown()  # a fresh embedded Ray whose workers see the AWS_* variables
    study = storage.join(s3, "study")
    v = {"victim.width": "8", "victim.epochs": "1"}
    specs = [spec("digits", "urp", "jpeg", v),
             spec("digits", "urp", "jpeg", {**v, "victim.epochs": "2"})]  # same purified set, other victim
    specs += [spec("digits", "urp", "denoise", {**v, "defense.model": str(model_dir), "defense.sigma": sigma})
              for sigma in ("0.05", "0.2")]  # one model, two noise levels
    try:
        df = run_study(study, specs, cpus_per_trial=1, max_concurrent=2)
        assert len(df) == 4 and df["config_hash"].is_unique
        assert cache_counts(df) == (3, 1)  # 3 distinct purifications for 4 purifying trials
        assert df["poison_success"].notna().all()  # urp: relative loss against the clean reference
        den = df[df["defense.name"] == "denoise"].sort_values("defense.sigma")
        assert den["defense.t_star"].is_unique and (den["purify_seconds"] > 0).all()  # each row its own σ
        # read back with plain pyarrow / pandas from the bucket
        s3fs, path = pafs.FileSystem.from_uri(study)
        parts = [i.path for i in s3fs.get_file_info(pafs.FileSelector(path)) if i.base_name.startswith("part-")]
        rows = pd.concat([pq.read_table(p, filesystem=s3fs).to_pandas() for p in parts])
        assert len(parts) == 4 and set(rows["config_hash"]) == set(df["config_hash"])
        cache = storage.join(study, ".cache")
        assert len(storage.listdir(storage.join(cache, "purified"))) == 3
        assert len(storage.listdir(storage.join(cache, "poisons"))) == 2  # urp, and clean data for the references
        assert len(storage.listdir(storage.join(cache, "acc_ref"))) == 2  # victims of 1 and 2 epochs
        assert storage.listdir(storage.join(study, "_tune"))  # Tune's experiment state is in the bucket too
        # a rerun (e.g. after a kill) finds every row stored: nothing computed, nothing duplicated
        df2 = run_study(study, specs, cpus_per_trial=1, max_concurrent=2)
        assert len(df2) == 4 and len(part_files(study)) == 4
    finally:
        ray.shutdown()
