"""Integrity: every artifact carries checksums written last; a corrupt one is named, moved aside and
recomputed (in the cache) or refused with one line (given by the user)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from eclipse_ray import storage
from eclipse_ray.attacks import ATTACKS
from eclipse_ray.data import store
from eclipse_ray.data import cache as C


def flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def small(digits):
    return {k: s.subset(np.arange(40)) for k, s in digits.splits.items()}


def test_a_corrupt_shard_is_named_on_read(small, tmp_path, capsys):
    from eclipse_ray.cli import main

    store.write_dataset(tmp_path / "d", small, shard_rows=16)
    assert store.verify_dataset(tmp_path / "d") == []
    flip(tmp_path / "d" / "train" / "part-00001.parquet")
    assert store.verify_dataset(tmp_path / "d") == ["train/part-00001.parquet does not match its checksum"]
    with pytest.raises(storage.CorruptArtifact, match="part-00001.parquet"):
        store.read_split(tmp_path / "d", "train")
    assert store.read_split(tmp_path / "d", "test").images.shape[0] == 40  # the rest still reads
    rc = main(["purify", "--input", str(tmp_path / "d"), "--defense", "jpeg", "--out", str(tmp_path / "o"),
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "part-00001.parquet: does not match" in err
    assert not (tmp_path / "o").exists()


def test_meta_checksums_must_name_shards(small, tmp_path):
    store.write_dataset(tmp_path / "d", small)
    doc = json.loads((tmp_path / "d" / "meta.json").read_text())
    doc["splits"]["train"]["sha256"] = {"../x.parquet": "0" * 64}
    (tmp_path / "d" / "meta.json").write_text(json.dumps(doc))
    with pytest.raises(Exception, match="'sha256' must map its shards"):
        store.read_meta(tmp_path / "d")


def test_a_corrupt_cached_poison_is_moved_aside_and_recomputed(digits, tmp_path, capsys):
    attack = ATTACKS.build("badnets")
    first = C.cached_attack(attack, digits, "digits", tmp_path)
    loc = Path(C.poisons_location(str(tmp_path), "digits", attack))
    flip(next((loc / "train").glob("part-*.parquet")))
    capsys.readouterr()
    again = C.cached_attack(attack, digits, "digits", tmp_path)
    err = capsys.readouterr().err
    assert "is corrupt" in err and str(loc) in err and "recomputing" in err
    assert not again.meta["poison_cached"]  # recomputed, not read
    assert np.array_equal(again.train.images, first.train.images)
    assert store.verify_dataset(loc) == []
    assert len(list((loc.parent / ".corrupt").iterdir())) == 1  # kept for inspection
    assert C.cached_attack(attack, digits, "digits", tmp_path).meta["poison_cached"]


@pytest.mark.parametrize("damage", ["empty", "edited", "garbage", "other-trial"])
def test_a_bad_reference_accuracy_is_recomputed_not_used(tmp_path, damage, capsys):
    C.write_acc_ref(str(tmp_path), "abc", 0.75)
    assert C.read_acc_ref(str(tmp_path), "abc") == 0.75
    f = Path(C.acc_ref_location(str(tmp_path), "abc"))
    doc = json.loads(f.read_text())
    f.write_text({"empty": "", "garbage": "{not json",
                  "edited": json.dumps({**doc, "test_acc": 0.95}),
                  "other-trial": json.dumps({**doc, "config_hash": "xyz"})}[damage])
    assert C.read_acc_ref(str(tmp_path), "abc") is None
    assert "is corrupt" in capsys.readouterr().err and not f.exists()


def test_a_corrupt_cached_model_is_retrained_to_the_same_weights(digits, tmp_path, monkeypatch, capsys):
    from eclipse_ray.diffusion.train import DiffusionTrainConfig, train_diffusion

    monkeypatch.setenv("ECLIPSE_RAY_CACHE", str(tmp_path))
    cfg = dataclasses.replace(DiffusionTrainConfig(), iterations=2, batch_size=4, num_steps=50, device="cpu",
                              clean_fraction=0.2)
    loc = Path(C.cached_model(b"", cfg, digits.train, train_diffusion, progress=False))
    weights = next(loc.glob("*.safetensors"))
    want = weights.read_bytes()
    weights.write_bytes(want[: len(want) // 2])  # truncated
    capsys.readouterr()
    assert Path(C.cached_model(b"", cfg, digits.train, train_diffusion, progress=False)) == loc
    assert "is corrupt" in capsys.readouterr().err
    assert weights.read_bytes() == want and storage.verify_manifest(loc) == []


def test_a_user_model_that_fails_its_manifest_is_refused(model_dir, tmp_path):
    import shutil

    from eclipse_ray.config import ConfigError
    from eclipse_ray.diffusion.unet import load_model

    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    storage.write_manifest(copy)
    load_model(copy)
    flip(next(copy.glob("*.safetensors")), 0.9)
    with pytest.raises(ConfigError, match="corrupt"):
        load_model(copy)
