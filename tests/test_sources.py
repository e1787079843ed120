from __future__ import annotations

import dataclasses
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from eclipse_ray.config import ConfigError
from eclipse_ray.data import sources
from eclipse_ray.data.sources import CIFAR10_CLASSES, DESCRIPTIONS, load_dataset
from eclipse_ray.presets import PRESETS


def test_digits_is_upscaled_rgb_with_a_fixed_split(digits):
    assert digits.train.images.shape == (1438, 32, 32, 3) and digits.test.images.shape == (359, 32, 32, 3)
    assert digits.train.images.dtype == np.uint8
    assert not set(digits.train.index) & set(digits.test.index)
    assert np.array_equal(load_dataset("digits").train.index, digits.train.index)


def write_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), y_train=np.arange(20) % 4,
                  x_test=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), y_test=np.arange(8) % 4)
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_loads(tmp_path):
    d = load_dataset(write_npz(tmp_path / "ok.npz"))
    assert len(d.train) == 20 and d.train.num_classes == 4 and len(d.test) == 8
    gray = load_dataset(write_npz(tmp_path / "g.npz", x_train=np.zeros((20, 8, 8), np.uint8),
                                  x_test=np.zeros((8, 8, 8), np.uint8)))
    assert gray.train.images.shape == (20, 8, 8, 3)


@pytest.mark.parametrize("overrides, message", [
    (dict(x_train=np.zeros((20, 8, 8, 3), np.float32)), "must be uint8"),
    (dict(x_train=np.full((20, 8, 8, 3), np.nan, np.float32)), "NaN"),
    (dict(x_train=np.zeros((20, 8, 8, 3, 1), np.uint8)), r"shape \(N, H, W, 3\)"),
    (dict(y_train=np.arange(19) % 4), "20 images but 19 labels"),
    (dict(y_test=np.array([0, 1, 2, 3, 4, 5, 6, 7])), "labels must lie in 0..3"),
    (dict(y_train=np.where(np.arange(20) == 3, 9, np.arange(20) % 4)), "no training image"),
    (dict(y_train=np.full(20, np.nan)), "NaN|not numeric|labels"),
    (dict(x_test=None), "missing array"),
    (dict(x_train=np.zeros((0, 8, 8, 3), np.uint8), y_train=np.zeros(0, np.int64)), "empty"),
    (dict(x_test=np.zeros((8, 4, 4, 3), np.uint8)), "differ in shape"),
])
def test_malformed_npz_is_rejected(tmp_path, overrides, message):
    spec = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ConfigError, match=message) as e:
        load_dataset(spec)
    assert "\n" not in str(e.value)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", x_train=np.array([object()], dtype=object), y_train=np.zeros(1),
             x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(ConfigError, match="pickled objects are refused"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")
    with pytest.raises(ConfigError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a valid"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png")
    d = load_dataset(f"folder:{tmp_path}")
    assert d.classes == ("cat", "dog") and len(d.train) == 10 and len(d.test) == 4
    assert d.train.labels.tolist() == [0] * 5 + [1] * 5
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "train" / "cat" / "odd.png")
    with pytest.raises(ConfigError, match="one image size"):
        load_dataset(f"folder:{tmp_path}")


def test_unknown_and_offline_sources(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="not an eclipse_ray dataset"):
        load_dataset(f"parquet:{tmp_path}")
    with pytest.raises(ConfigError, match="files not found"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


# ---- folder: archives (tar, tar.gz) and cifar10-jpeg ------------------------------------------------

def write_tree(root, splits=True, classes=("cat", "dog"), n=(5, 2), size=12, seed=0):
    """An ImageFolder tree of PNGs and JPEGs, plus files that are not images."""
    rng = np.random.default_rng(seed)
    for split, count in (zip(("train", "test"), n) if splits else [("", n[0] + n[1])]):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(count):
                px = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(px).save(d / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"))
            (d / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("a tree")
    return root


def write_tar(root, archive, wrapper=None, shuffle=False):
    """``root``'s tree as a tar archive; ``wrapper``: one top-level folder (``"."``: ``./``-names);
    ``shuffle``: members in a random order."""
    paths = sorted(root.rglob("*"))
    if shuffle:
        paths = [paths[i] for i in np.random.default_rng(1).permutation(len(paths))]
    mode = "w:gz" if str(archive).endswith(("gz", "tgz")) else "w"
    with tarfile.open(archive, mode) as tf:
        for p in paths:
            rel = p.relative_to(root).as_posix()
            tf.add(p, arcname=f"{wrapper}/{rel}" if wrapper else rel, recursive=False)
    return archive


def add_member(archive, name, data=b"", **info):
    with tarfile.open(archive, "w:gz") as tf:
        ti = tarfile.TarInfo(name)
        for k, v in info.items():
            setattr(ti, k, v)
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data) if data else None)
    return archive


def same_dataset(a, b):
    assert a.classes == b.classes
    for split in ("train", "test"):
        x, y = a.splits[split], b.splits[split]
        assert np.array_equal(x.images, y.images) and np.array_equal(x.labels, y.labels)
        assert np.array_equal(x.index, y.index)


@pytest.mark.parametrize("splits", [True, False])
@pytest.mark.parametrize("wrapper, name, shuffle", [(None, "t.tar.gz", False), ("cifar-imgs", "t.tgz", True),
                                                    (".", "t.tar", False)])
def test_folder_archive_matches_the_folder(tmp_path, splits, wrapper, name, shuffle):
    root = write_tree(tmp_path / "tree", splits=splits)
    archive = write_tar(root, tmp_path / name, wrapper, shuffle)
    folder = load_dataset(f"folder:{root}")
    packed = load_dataset(f"folder:{archive}", data_dir=tmp_path / "cache")
    same_dataset(folder, packed)
    assert packed.classes == ("cat", "dog") and len(packed.train) + len(packed.test) == 14
    assert packed.train.labels.tolist() == sorted(packed.train.labels.tolist())
    assert packed.name == f"folder:{archive}" and len(packed.meta["archive_sha256"]) == 64


@pytest.mark.parametrize("name, info, message", [
    ("train/cat/../../../x.png", {}, r"refusing archive member .*\.\."),
    ("/etc/x.png", {}, "absolute path"),
    ("train/cat/link.png", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "refusing link member"),
    ("train/cat/hard.png", {"type": tarfile.LNKTYPE, "linkname": "train/cat/000.jpg"}, "refusing link member"),
])
def test_unsafe_archive_members_are_refused(tmp_path, name, info, message):
    archive = add_member(tmp_path / "bad.tar.gz", name, b"x" if not info else b"", **info)
    with pytest.raises(ConfigError, match=message) as e:
        load_dataset(f"folder:{archive}", data_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)


def test_malformed_archives_are_refused(tmp_path):
    root = write_tree(tmp_path / "tree")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "train" / "cat" / "odd.png")
    with pytest.raises(ConfigError, match=r"odd\.png is 5x5, others are 12x12; resize the folder to one image size"):
        load_dataset(f"folder:{write_tar(root, tmp_path / 'mixed.tar.gz', 'w')}", data_dir=tmp_path / "cache")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ConfigError, match="not a readable tar archive"):
        load_dataset(f"folder:{tmp_path / 'junk.tar.gz'}", data_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="no such directory or archive"):
        load_dataset(f"folder:{tmp_path / 'missing.tgz'}")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match=r"cannot read image .*broken\.jpg"):
        load_dataset(f"folder:{write_tar(root, tmp_path / 'broken.tar', 'w')}", data_dir=tmp_path / "cache")


def test_decoded_archive_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "tree")
    archive = write_tar(root, tmp_path / "t.tar.gz")
    cache = tmp_path / "cache"
    scans = []
    real_scan = sources._scan_archive
    monkeypatch.setattr(sources, "_scan_archive", lambda *a: scans.append(a) or real_scan(*a))
    first = load_dataset(f"folder:{archive}", data_dir=cache)
    written = list((cache / "decoded").glob("*.npz"))
    assert len(scans) == 1 and len(written) == 1
    with np.load(written[0], allow_pickle=False) as f:
        assert f["classes"].tolist() == ["cat", "dog"]
    second = load_dataset(f"folder:{archive}", data_dir=cache)
    assert len(scans) == 1  # not read again
    same_dataset(first, second)
    assert second.meta == first.meta
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "train" / "dog" / "new.png")
    write_tar(root, archive)
    third = load_dataset(f"folder:{archive}", data_dir=cache)
    assert len(scans) == 2 and len(third.train) == len(first.train) + 1
    for f in (cache / "decoded").glob("*.npz"):
        f.write_bytes(b"damaged")  # decoded again (with a warning) and rewritten
    monkeypatch.setenv("ECLIPSE_RAY_DATA", str(cache))  # the default cache dir
    with pytest.warns(UserWarning, match="unreadable decoded cache"):
        fourth = load_dataset(f"folder:{archive}")
    assert len(scans) == 3
    same_dataset(third, fourth)
    same_dataset(third, load_dataset(f"folder:{archive}"))
    assert len(scans) == 3


def test_cifar10_jpeg_loads_the_archive_named_by_the_environment(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "tree", classes=CIFAR10_CLASSES, n=(2, 1), size=8)
    archive = write_tar(root, tmp_path / "cifar10_jpeg.tar.gz", "cifar10")
    monkeypatch.setenv("ECLIPSE_RAY_CIFAR10_JPEG", str(archive))
    monkeypatch.setitem(sources.SHIPPED_SHA256, "cifar10-jpeg", sources.sha256_file(archive))  # stands in for the published
    d = load_dataset("cifar10-jpeg", data_dir=tmp_path / "cache")
    assert d.name == "cifar10-jpeg" and d.classes == CIFAR10_CLASSES
    assert len(d.train) == 20 and len(d.test) == 10 and d.train.images.shape[1:] == (8, 8, 3)
    assert d.test.labels.tolist() == [k for k in range(10) for _ in range(1)]
    assert d.meta["jpeg_quality"] == 75 and d.meta["chroma_subsampling"] == "4:2:0" and "JPEG" in d.meta["note"]
    same_dataset(d, load_dataset(f"folder:{root}"))
    assert "cifar10-jpeg" in DESCRIPTIONS and PRESETS["full"].dataset == "cifar10-jpeg"
    full, subset = PRESETS["full"], PRESETS["subset"]
    assert dataclasses.replace(full.victim, precision="fp32") == subset.victim and full.models == subset.models
    assert full.victim.precision == "bf16" and full.purify_precision == "bf16"

    other = write_tar(write_tree(tmp_path / "other", classes=("cat", "dog")), tmp_path / "other.tar.gz")
    monkeypatch.setenv("ECLIPSE_RAY_CIFAR10_JPEG", str(other))
    with pytest.raises(ConfigError, match=r"cifar10-jpeg: .*other\.tar\.gz is not the published file \(sha256 "
                                          r".*\); read another file as folder:PATH") as e:
        load_dataset("cifar10-jpeg", data_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sources.SHIPPED_SHA256, "cifar10-jpeg", sources.sha256_file(other))
    with pytest.raises(ConfigError, match="expected CIFAR-10's airplane"):
        load_dataset("cifar10-jpeg", data_dir=tmp_path / "cache")
    monkeypatch.setenv("ECLIPSE_RAY_CIFAR10_JPEG", str(tmp_path / "missing.tar.gz"))
    with pytest.raises(ConfigError, match=r"no archive at .*missing\.tar\.gz; set \$ECLIPSE_RAY_CIFAR10_JPEG") as e:
        load_dataset("cifar10-jpeg", data_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)


def test_the_cifar10_subset_is_a_named_source_wherever_its_file_lies(tmp_path, monkeypatch, digits):
    """``cifar10-subset`` is the published 4,660-image file (checked by its sha256) found through
    $ECLIPSE_RAY_SUBSET or ../shared/data: rows and cached artifacts carry the name, never the machine's path,
    and those stored when it was read as ``npz:/work/shared/…`` (the published rows) are still its own."""
    from eclipse_ray.data import cache as C
    from eclipse_ray.distributed import artifacts as A
    from eclipse_ray.trial import build_config

    npz = tmp_path / "somewhere" / "cifar10_subset.npz"
    npz.parent.mkdir()
    np.savez(npz, x_train=digits.train.images[:50], y_train=digits.train.labels[:50],
             x_test=digits.test.images[:20], y_test=digits.test.labels[:20])
    monkeypatch.setenv("ECLIPSE_RAY_SUBSET", str(npz))
    with pytest.raises(ConfigError, match=r"cifar10-subset: .*cifar10_subset\.npz is not the published file "
                                          r"\(sha256 .*\); read another file as npz:PATH") as e:
        load_dataset("cifar10-subset")
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sources.SHIPPED_SHA256, "cifar10-subset", sources.sha256_file(npz))  # stands in for it
    d = load_dataset("cifar10-subset")
    assert d.name == "cifar10-subset" and len(d.train) == 50 and d.meta["fingerprint"] == sources.sha256_file(npz)
    assert sources.dataset_label("cifar10-subset", d.meta) == f"cifar10-subset@{sources.sha256_file(npz)[:8]}"
    other = tmp_path / "other.npz"
    np.savez(other, x_train=digits.train.images[:40], y_train=digits.train.labels[:40],
             x_test=digits.test.images[:20], y_test=digits.test.labels[:20])
    assert sources.npz_spec(npz) == "cifar10-subset" and sources.npz_spec(other) == f"npz:{other}"  # by content
    published = "npz:/work/shared/data/cifar10_subset.npz"
    assert sources.former_specs("cifar10-subset") == (published,) and sources.former_specs("digits") == ()
    cfg = build_config("cifar10-subset", "lsp", "jpeg", {"victim.epochs": "2"})
    before = build_config(published, "lsp", "jpeg", {"victim.epochs": "2"}, digest=sources.sha256_file(npz))
    assert before.hash() in cfg.hashes() and cfg.hash() != before.hash()  # its rows stored by path are found
    assert cfg.dataset_address == published  # and its caches, filed under that path before addresses were contents
    # the published file read by any path now is addressed by content, which is the named source's address
    assert C.poison_key(cfg.dataset_address, cfg.attack) == C.poison_key(before.dataset_address, before.attack)
    assert A.purification_key(cfg) == A.purification_key(before)
    moved = build_config(f"npz:{npz}", "lsp", "jpeg", {"victim.epochs": "2"})
    assert A.purification_key(moved) == A.purification_key(cfg)
    monkeypatch.setenv("ECLIPSE_RAY_SUBSET", str(tmp_path / "missing.npz"))
    with pytest.raises(ConfigError, match=r"cifar10-subset: no file at .*missing\.npz; set \$ECLIPSE_RAY_SUBSET"):
        load_dataset("cifar10-subset")


def test_a_files_digest_is_computed_again_when_the_file_changes_even_with_its_mtime_restored(tmp_path):
    """Digests are remembered per process; a rewrite of the same size whose mtime is put back (``cp -p``,
    ``rsync -a``) is still a new file."""
    import os

    from eclipse_ray.data.fingerprint import sha256_file

    f = tmp_path / "d.npz"
    f.write_bytes(b"a" * 64)
    first, st = sha256_file(f), os.stat(f)
    assert sha256_file(f) == first
    f.write_bytes(b"b" * 64)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sha256_file(f) != first


def test_a_study_refuses_rows_stored_from_another_file_behind_its_path(tmp_path, digits):
    """Rows carry the fingerprint of the file they were computed on; a study whose ``npz:`` path now holds
    another file says so in one line before any work, instead of taking those trials as done."""
    import pandas as pd

    from eclipse_ray.distributed.study import check_stored_sources, compile_plan, run_study
    from eclipse_ray.distributed.tune import spec
    from eclipse_ray.result_store import append_rows

    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=digits.train.images[:40], y_train=digits.train.labels[:40],
             x_test=digits.test.images[:20], y_test=digits.test.labels[:20])
    plan = compile_plan([spec(f"npz:{npz}", "urp", "jpeg", {})])
    now = sources.sha256_file(npz)[:8]
    rows = pd.DataFrame({"dataset": [f"npz:{npz}", "digits"], "dataset_label": [f"d.npz@{now}", "digits"]})
    check_stored_sources(plan, rows)  # the same file: its rows stand
    check_stored_sources(plan, rows.iloc[1:])  # no rows of it
    stale = rows.assign(dataset_label=["d.npz@0badf00d", "digits"])
    with pytest.raises(ConfigError, match=rf"npz:.*d\.npz: the study's stored rows were computed on another file "
                                          rf"\(fingerprint 0badf00d; now {now}\): write to a fresh --results$"):
        check_stored_sources(plan, stale)
    check_stored_sources(plan, stale.assign(dataset=f"npz:{tmp_path / 'gone.npz'}"))  # not this spec's rows
    append_rows(tmp_path / "study", stale.iloc[:1].assign(config_hash="0" * 16).to_dict("records"), name="old")
    with pytest.raises(ConfigError, match="stored rows were computed on another file"):
        run_study(tmp_path / "study", [spec(f"npz:{npz}", "urp", "jpeg", {})])  # before any work: no Ray started
