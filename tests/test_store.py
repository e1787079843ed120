from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from eclipse_ray.attacks import ATTACKS
from eclipse_ray.config import ConfigError
from eclipse_ray.data import store
from eclipse_ray.data.imageset import ImageSet, check_same_samples


def test_round_trip_is_lossless(digits, tmp_path):
    data = ATTACKS.build("badnets").apply(digits)
    store.write_dataset(tmp_path / "ds", data.splits, data.meta, shard_rows=500)
    back, meta = store.read_dataset(tmp_path / "ds")
    assert set(back) == set(data.splits) == {"train", "test", "test_triggered", "originals"}
    for name, s in data.splits.items():
        b = back[name]
        assert np.array_equal(b.images, s.images) and b.images.dtype == np.uint8
        check_same_samples(s, b, "round trip")
        assert b.classes == s.classes
    assert meta["attack"]["attack.name"] == "badnets" and meta["target"] == 0
    assert len(list((tmp_path / "ds" / "train").glob("*.parquet"))) == 3  # 1,438 rows in shards of 500


def test_shards_are_plain_parquet(digits, tmp_path):
    store.write_dataset(tmp_path / "ds", {"train": digits.train, "test": digits.test})
    doc = json.loads((tmp_path / "ds" / "meta.json").read_text())
    df = pd.concat(pd.read_parquet(tmp_path / "ds" / s) for s in doc["splits"]["train"]["shards"])
    assert list(df.columns) == ["index", "label", "poisoned", "image"]
    assert len(df) == len(digits.train) and df["index"].tolist() == digits.train.index.tolist()
    img = np.frombuffer(df["image"].iloc[0], np.uint8).reshape(doc["image_shape"])
    assert np.array_equal(img, digits.train.images[0])


def test_refuses_to_overwrite_and_leaves_nothing_on_failure(digits, tmp_path):
    out = tmp_path / "ds"
    store.write_dataset(out, {"train": digits.train})
    with pytest.raises(ConfigError, match="already exists"):
        store.write_dataset(out, {"train": digits.test})
    assert store.read_split(out, "train").images.shape == digits.train.images.shape

    class Boom(Exception):
        pass

    orig = pq.write_table
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise Boom
        return orig(*a, **k)

    pq.write_table, target = flaky, tmp_path / "half"
    try:
        with pytest.raises(Boom):
            store.write_dataset(target, {"train": digits.train, "test": digits.test})
    finally:
        pq.write_table = orig
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp leftovers


def test_imageset_guards_its_invariants(digits):
    s = digits.train
    with pytest.raises(ConfigError, match="unique"):
        ImageSet(s.images[:2], s.labels[:2], np.array([5, 5]), s.poisoned[:2], s.classes)
    with pytest.raises(ConfigError, match="labels must lie in 0..9"):
        ImageSet(s.images[:2], np.array([0, 10]), s.index[:2], s.poisoned[:2], s.classes)
    with pytest.raises(ConfigError, match="empty"):
        ImageSet(s.images[:0], s.labels[:0], s.index[:0], s.poisoned[:0], s.classes)
    with pytest.raises(RuntimeError, match="lost, duplicated or reordered"):
        check_same_samples(s, s.subset(np.arange(len(s))[::-1]), "test")
    with pytest.raises(RuntimeError, match="went in"):
        check_same_samples(s, s.subset(np.arange(len(s) - 1)), "test")


def _tamper(ds, edit):
    doc = json.loads((ds / "meta.json").read_text())
    edit(doc)
    (ds / "meta.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["splits"]["train"]["shards"].__setitem__(0, "../outside/part-00000.parquet"), "inside the dataset"),
    (lambda d: d["splits"]["train"]["shards"].__setitem__(0, "/etc/part-00000.parquet"), "inside the dataset"),
    (lambda d: d["splits"].__setitem__("../../escape", d["splits"]["train"]), "bad split name"),
    (lambda d: d.pop("classes"), "'classes' missing"),
    (lambda d: d.__setitem__("image_shape", "32x32"), "'image_shape' missing"),
    (lambda d: d["splits"]["train"].__setitem__("rows", "many"), "needs 'rows'"),
    (lambda d: d.__setitem__("image_shape", [16, 64, 3]), "written as 32x32x3"),  # same byte count
    (lambda d: d.__setitem__("classes", d["classes"][:3]), "labels must lie in 0..2"),
])
def test_tampered_meta_json_is_refused_in_one_line(digits, tmp_path, edit, message):
    ds = tmp_path / "ds"
    store.write_dataset(ds, {"train": digits.train.subset(np.arange(40)), "test": digits.test.subset(np.arange(8))})
    _tamper(ds, edit)
    with pytest.raises(ConfigError, match=message) as e:
        store.read_dataset(ds)
    assert "\n" not in str(e.value)


def test_a_shard_symlinked_out_of_the_dataset_is_refused(digits, tmp_path):
    ds = tmp_path / "ds"
    store.write_dataset(ds, {"train": digits.train.subset(np.arange(40))})
    outside = tmp_path / "elsewhere.parquet"
    (ds / "train" / "part-00000.parquet").rename(outside)
    (ds / "train" / "part-00000.parquet").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the dataset"):
        store.read_split(ds, "train")


def test_read_rows_reads_shard_by_shard_and_stops_at_the_limit(tmp_path):
    """The report's image strips read only the rows they show: shards up to the last row wanted, each
    checked; a damaged shard after them is never read."""
    n = 40
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    poisoned = np.zeros(n, bool)
    poisoned[[3, 12, 13, 25]] = True
    s = ImageSet(images, np.arange(n) % 3, np.arange(100, 100 + n), poisoned, ("a", "b", "c"))
    store.write_dataset(tmp_path / "d", {"train": s}, shard_rows=10)
    shards = sorted((tmp_path / "d" / "train").glob("*.parquet"))
    shards[-1].write_bytes(b"damaged")  # rows 30..39: beyond every row asked for below
    got = store.read_rows(tmp_path / "d", "train", lambda t: t.column("poisoned").to_numpy(zero_copy_only=False), 3)
    assert got.index.tolist() == [103, 112, 113] and got.images[:, 0, 0, 0].tolist() == [3, 12, 13]
    want = np.array([125, 104])
    got = store.read_rows(tmp_path / "d", "train", lambda t: np.isin(t.column("index").to_numpy(), want), 2)
    assert sorted(got.index.tolist()) == [104, 125]
    with pytest.raises(Exception, match="checksum"):
        store.read_rows(tmp_path / "d", "train", lambda t: t.column("poisoned").to_numpy(zero_copy_only=False), 5)
