from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from eclipse_ray.config import ConfigError
from eclipse_ray.data.sources import load_dataset


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
