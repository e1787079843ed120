"""A dataset read from a path files its artifacts under its content, taken where the work is planned."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from eclipse_ray.config import ConfigError
from eclipse_ray.data import cache as C
from eclipse_ray.data import store
from eclipse_ray.data.address import DIGEST_KEY, address_dataset, content_digest, path_kind, pin
from eclipse_ray.data.sources import load_dataset, tree_digest
from eclipse_ray.distributed import artifacts as A
from eclipse_ray.trial import build_config, reference_config


def write_npz(path, digits, start=0, n=40):
    np.savez(path, x_train=digits.train.images[start:start + n], y_train=digits.train.labels[start:start + n],
             x_test=digits.test.images[:20], y_test=digits.test.labels[:20])
    return f"npz:{path}"


def test_a_path_dataset_is_addressed_by_its_content_not_its_path(tmp_path, digits):
    spec = write_npz(tmp_path / "d.npz", digits)
    cfg = build_config(spec, "lsp", "jpeg", {"victim.epochs": "2"})
    keys = (C.poison_key(cfg.dataset_address, cfg.attack), A.purification_key(cfg),
            reference_config(cfg).cache_hashes()[0])
    assert cfg.dataset_address == f"npz@sha256:{content_digest(spec)}" and str(tmp_path) not in cfg.dataset_address

    shutil.copy(tmp_path / "d.npz", tmp_path / "moved.npz")  # the same file elsewhere: the same artifacts
    moved = build_config(f"npz:{tmp_path / 'moved.npz'}", "lsp", "jpeg", {"victim.epochs": "2"})
    assert (C.poison_key(moved.dataset_address, moved.attack), A.purification_key(moved),
            reference_config(moved).cache_hashes()[0]) == keys

    write_npz(tmp_path / "d.npz", digits, start=40)  # another file behind the path: artifacts of its own
    other = build_config(spec, "lsp", "jpeg", {"victim.epochs": "2"})
    again = (C.poison_key(other.dataset_address, other.attack), A.purification_key(other),
             reference_config(other).cache_hashes()[0])
    assert all(a != b for a, b in zip(again, keys))
    assert other.hash() == cfg.hash()  # rows are named by the spec (and refused by fingerprint: test_sources)


def test_named_sources_keep_their_addresses(digits):
    assert path_kind("digits") is None and content_digest("digits") is None
    assert address_dataset("digits") == "digits" and pin({"dataset": "digits"}) == {"dataset": "digits"}
    cfg = build_config("digits", "lsp", "jpeg", {"seed": "0"})
    assert cfg.dataset_digest is None and A.purification_key(cfg) == "5227bffab8c3f291"  # as before
    assert reference_config(cfg).cache_hashes() == reference_config(cfg).hashes()


def test_a_swapped_file_is_purified_again_not_served_from_the_cache(tmp_path, digits):
    """The artifact path that reads the data: the same spec over another file computes a new purified set
    from that file (filed by path, the first file's set came back as reused)."""
    spec = write_npz(tmp_path / "d.npz", digits)
    cache = str(tmp_path / "cache")
    first, reused = A.purified(build_config(spec, "none", "jpeg"), cache)
    assert not reused and np.array_equal(first.index, np.arange(40))
    write_npz(tmp_path / "d.npz", digits, start=40)
    second, reused = A.purified(build_config(spec, "none", "jpeg"), cache)
    assert not reused and not np.array_equal(second.images, first.images)
    want = build_config(spec, "none", "jpeg").defense.purify(load_dataset(spec).train, 0, progress=False)
    assert np.array_equal(second.images, want.images)


def test_workers_address_by_the_planned_digest_and_refuse_another_file(tmp_path, digits):
    spec = write_npz(tmp_path / "d.npz", digits)
    pinned = pin({"dataset": spec, "attack": "lsp", "defense": "jpeg", "set": {}})
    assert pinned[DIGEST_KEY] == content_digest(spec) and pin(pinned) is pinned  # taken once
    write_npz(tmp_path / "d.npz", digits, start=40)  # a node whose file behind the path is another one
    cfg = build_config(spec, "lsp", "jpeg", {}, pinned[DIGEST_KEY])
    assert cfg.dataset_address.endswith(pinned[DIGEST_KEY])  # the planned content, not this node's file
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"^npz:.*d\.npz: the data at this path here \(sha256 [0-9a-f]{12}…\) is "
                                          r"not the one the work was planned on \([0-9a-f]{12}…\); give every "
                                          r"node the same file$"):
        A.make_poison(cfg, str(cache), None)
    assert not (cache / "poisons").exists() or not any((cache / "poisons").iterdir())  # nothing written


def test_a_path_that_is_not_here_fails_before_any_work(tmp_path):
    from eclipse_ray.distributed.study import compile_plan
    from eclipse_ray.distributed.tune import spec

    with pytest.raises(ConfigError, match=r"^npz:.*gone\.npz: no such file on this machine \(a dataset read from "
                                          r"a path is addressed by its content, read where the work is planned\)$"):
        compile_plan([spec(f"npz:{tmp_path / 'gone.npz'}", "lsp", "jpeg")])
    with pytest.raises(ConfigError, match=r"^folder:.*gone: no such folder or archive on this machine"):
        build_config(f"folder:{tmp_path / 'gone'}")


def test_an_image_folder_is_fingerprinted_by_its_images(tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "test"):
        for k, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), 40 * k + i, np.uint8)).save(root / split / cls / f"{i}.png")
    spec = f"folder:{root}"
    digest = content_digest(spec)
    assert load_dataset(spec).meta["fingerprint"] == digest == tree_digest(root)  # rows and addresses agree
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    assert content_digest(spec) == digest  # what folder: does not read does not count
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / "train" / "cat" / "0.png")
    changed = content_digest(spec)
    assert changed != digest
    (root / "train" / "cat" / "0.png").rename(root / "train" / "dog" / "9.png")  # relabelled: another dataset
    renamed = content_digest(spec)
    assert renamed not in (digest, changed)
    (root / "train" / "ant").mkdir()  # an empty class folder shifts every label: another dataset too
    assert content_digest(spec) not in (digest, changed, renamed)


def test_a_dataset_directory_is_fingerprinted_by_its_meta(tmp_path, digits):
    loc = tmp_path / "ds"
    store.write_dataset(loc, {"train": digits.train.subset(np.arange(30)), "test": digits.test.subset(np.arange(10))},
                        {"source": "test"})
    for spec in (f"parquet:{loc}", str(loc)):
        assert path_kind(spec) == "parquet"
        assert content_digest(spec) == load_dataset(spec).meta["fingerprint"]
    assert address_dataset(str(loc)) == address_dataset(f"parquet:{loc}")
    # a worker without the directory: the bare path with the driver's digest is still that dataset
    digest = content_digest(str(loc))
    cfg = build_config(str(loc), "lsp", "jpeg", {}, digest)
    shutil.rmtree(loc)
    assert cfg.dataset_address == address_dataset(str(loc), digest) == f"parquet@sha256:{digest}"
    assert reference_config(cfg).cache_hashes()[0] != reference_config(cfg).hash()


def test_the_published_files_read_by_path_share_the_named_sources_artifacts(tmp_path, monkeypatch, digits):
    """By content, the published subset or JPEG archive read by any path is its named source: its
    poisons, purified sets and clean reference accuracy are found under the name's addresses."""
    from eclipse_ray.data import sources

    spec = write_npz(tmp_path / "somewhere.npz", digits)
    monkeypatch.setitem(sources.SHIPPED_SHA256, "cifar10-subset", content_digest(spec))  # stands in for it
    named, by_path = (build_config(ds, "urp", "jpeg", {"victim.epochs": "2"}) for ds in ("cifar10-subset", spec))
    assert by_path.dataset_address == named.dataset_address and A.purification_key(by_path) == A.purification_key(named)
    assert reference_config(by_path).cache_hashes() == reference_config(named).hashes()  # its acc_ref too
    archive = tmp_path / "c.tar"
    archive.write_bytes(b"not read")
    monkeypatch.setitem(sources.SHIPPED_SHA256, "cifar10-jpeg", content_digest(f"folder:{archive}"))
    assert address_dataset(f"folder:{archive}") == "cifar10-jpeg"


def test_a_plan_hashes_each_dataset_once(tmp_path, digits, monkeypatch):
    from eclipse_ray.data import address
    from eclipse_ray.distributed.study import compile_plan
    from eclipse_ray.distributed.tune import spec

    calls = []
    real = address.content_digest
    monkeypatch.setattr(address, "content_digest", lambda s: calls.append(s) or real(s))
    path = write_npz(tmp_path / "d.npz", digits)
    plan = compile_plan([spec(path, a, d) for a in ("none", "lsp") for d in ("none", "jpeg")])
    assert calls == [path] and {tr.spec[DIGEST_KEY] for tr in plan.trials} == {real(path)}


def test_tune_trials_carry_the_drivers_digest(tmp_path, digits):
    """People who drive Tune themselves get specs pinned where they build the tuner (the driver)."""
    from eclipse_ray.distributed.tune import spec, tuner_inputs

    path = write_npz(tmp_path / "d.npz", digits)
    _, space = tuner_inputs(str(tmp_path / "study"), [spec(path, "lsp", "jpeg"), spec("digits", "lsp", "jpeg")])
    trials = [t["spec"] for t in space["trial"]["grid_search"]]
    assert trials[0][DIGEST_KEY] == content_digest(path) and DIGEST_KEY not in trials[1]


@pytest.mark.heavy
def test_a_study_on_another_file_behind_the_path_recomputes_its_artifacts(tmp_path, digits, monkeypatch, capsys):
    """End to end on Ray: two studies sharing one cache, the second after the file behind the path was
    replaced, compute their own poisons, purified sets and reference; a third, on the first file moved
    elsewhere, reuses the first's."""
    import ray

    from eclipse_ray.distributed.study import run_study
    from eclipse_ray.distributed.tune import spec

    monkeypatch.setenv("ECLIPSE_RAY_CACHE", str(tmp_path / "cache"))
    v = {"victim.width": "8", "victim.epochs": "1"}

    def study(name, path):
        df = run_study(tmp_path / name, [spec(path, "lsp", "jpeg", v)], cpus_per_trial=1)
        lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("stage ")]
        return df, {ln.split(":")[0][6:]: ln.split(":")[1].split(",")[0].strip() for ln in lines}

    first_path = write_npz(tmp_path / "d.npz", digits)
    shutil.copy(tmp_path / "d.npz", tmp_path / "kept.npz")
    try:
        first, stages = study("a", first_path)
        assert stages["poisons"] == "1 computed" and stages["purify"] == "1 computed"
        assert stages["references"] == "1 computed"  # the clean victim (on the clean set, made there)
        write_npz(tmp_path / "d.npz", digits, start=40)
        second, stages = study("b", first_path)  # same spec, another file: nothing of the first's
        assert stages["poisons"] == "1 computed" and stages["purify"] == "1 computed"
        assert stages["references"] == "1 computed"
        assert first["dataset_label"].iloc[0] != second["dataset_label"].iloc[0]
        _, stages = study("c", f"npz:{tmp_path / 'kept.npz'}")  # the first file elsewhere: all reused
        assert stages["poisons"] == "0 computed" and stages["purify"] == "0 computed"
        assert stages["references"] == "0 computed"
    finally:
        ray.shutdown()
