from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_ray.attacks import ATTACKS
from eclipse_ray.config import ConfigError
from eclipse_ray.data.imageset import check_same_samples
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.defenses.baselines import bit_depth, gaussian_blur
from eclipse_ray.defenses.compensation import compensate


@pytest.mark.parametrize("name", ["none", "jpeg", "gray", "bitdepth", "blur", "compensation"])
def test_defenses_keep_every_sample(digits, name):
    train = ATTACKS.build("urp", {"rate": "0.5"}).apply(digits).train
    out = DEFENSES.build(name).purify(train, seed=0, progress=False)
    check_same_samples(train, out, name)
    assert out.images.dtype == np.uint8
    assert DEFENSES.build(name).purifies == (name != "none")
    if name != "none":
        assert not np.array_equal(out.images, train.images)


def test_gray_and_bitdepth_do_what_they_say(digits):
    train = ATTACKS.build("urp").apply(digits).train
    g = DEFENSES.build("gray").purify(train, 0).images
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    b = DEFENSES.build("bitdepth", {"bits": "2"}).purify(train, 0).images
    assert len(np.unique(b)) <= 4
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(gaussian_blur(torch.full((1, 3, 8, 8), 0.3), 3, 1.0), torch.full((1, 3, 8, 8), 0.3))
    x8 = torch.randint(0, 256, (2, 3, 8, 8)).float() / 255
    assert torch.equal(bit_depth(x8, 8), x8)  # 8 bits keep 8-bit images exactly
    for bits in (1, 2, 3):  # b bits: only the 2^b levels, each pixel moved to its nearest one
        levels = 2**bits - 1
        y = bit_depth(x, bits) * levels
        assert torch.allclose(y, y.round(), atol=1e-5) and y.min() >= 0 and y.max() <= levels
        assert (y / levels - x).abs().max() <= 0.5 / levels + 1e-6


def test_jpeg_quality_controls_distortion(digits):
    train = digits.train.subset(np.arange(64))
    err = {}
    for q in (10, 90):
        out = DEFENSES.build("jpeg", {"quality": str(q)}).purify(train, 0).images
        err[q] = np.abs(out.astype(int) - train.images).mean()
    assert err[10] > err[90] > 0


def test_compensation_once_and_per_epoch():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4000, 3, 4, 4)
    y = compensate(x, gray_p=0.4, sigma=0.05, gen=gen)
    gray = (y[:, 0] - y[:, 1]).abs().amax((1, 2)) < 0.25  # grey images differ only by the noise
    assert 0.33 < gray.float().mean() < 0.47
    noise = (y - x)[~gray].std()
    assert 0.04 < noise < 0.06
    once = DEFENSES.build("compensation")
    assert once.train_transform() is None
    epoch = DEFENSES.build("compensation", {"mode": "epoch"})
    assert epoch.train_transform() is not None
    with pytest.raises(ConfigError, match="must be one of"):
        DEFENSES.build("compensation", {"mode": "sometimes"})
    with pytest.raises(ConfigError, match="must be odd"):
        DEFENSES.build("blur", {"kernel": "4"})


def test_a_defense_purifies_through_its_image_purifier_only():
    """One purification path: a class that overrides ``purify`` is refused when it is defined."""
    from dataclasses import dataclass

    from eclipse_ray.defenses import DefenseConfig

    with pytest.raises(TypeError, match="implement image_purifier"):
        @dataclass(frozen=True)
        class Sideways(DefenseConfig):
            def purify(self, train, seed, progress=True, clean=None):
                return train
    assert not DEFENSES.build("none").purifies and not DEFENSES.build("vab").purifies
    assert DEFENSES.build("jpeg").purifies and DEFENSES.build("compensation").purifies
