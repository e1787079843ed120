from __future__ import annotations

import numpy as np
import pytest

from eclipse_ray.attacks import ATTACKS
from eclipse_ray.attacks.ops import ops_search
from eclipse_ray.config import ConfigError


def diff(a, b):
    return a.astype(np.int32) - b.astype(np.int32)


@pytest.mark.parametrize("name", ["urp", "lsp", pytest.param("ar", marks=pytest.mark.slow), "ops", "badnets",
                                  "blend", "sig"])
def test_attacks_are_deterministic_and_keep_samples(digits, name):
    a = ATTACKS.build(name).apply(digits)
    b = ATTACKS.build(name).apply(digits)
    c = ATTACKS.build(name, {"seed": "7"}).apply(digits)
    assert np.array_equal(a.train.images, b.train.images)
    assert np.array_equal(a.train.index, digits.train.index)
    assert a.test is digits.test  # the clean test set is never touched
    changed = np.any(diff(a.train.images, digits.train.images) != 0, axis=(1, 2, 3))
    assert not changed[~a.train.poisoned].any(), "only rows marked poisoned may change"
    assert changed[a.train.poisoned].mean() > 0.95
    if name not in ("ops", "sig"):  # data-derived pattern / fixed signal; at rate 1 the seed picks nothing
        assert not np.array_equal(a.train.images, c.train.images)
    originals = a.splits["originals"]
    assert np.array_equal(originals.index, a.train.index[a.train.poisoned])
    assert np.array_equal(originals.images, digits.train.images[a.train.poisoned])


@pytest.mark.parametrize("name, rate", [("urp", 0.3), ("lsp", 1.0), ("ar", 0.5), ("ops", 0.25)])
def test_availability_budget_rate_and_labels(digits, name, rate):
    cfg = ATTACKS.build(name, {"rate": str(rate)})
    p = cfg.apply(digits).train
    assert p.poisoned.sum() == round(rate * len(digits.train))
    assert np.array_equal(p.labels, digits.train.labels)
    d = diff(p.images, digits.train.images)[p.poisoned] / 255.0
    if name == "urp":
        assert np.abs(d).max() <= cfg.eps + 0.5 / 255
    elif name in ("lsp", "ar"):
        target = cfg.eps * np.sqrt(32 * 32 * 3) if name == "lsp" else cfg.eps
        norms = np.linalg.norm(d.reshape(len(d), -1), axis=1)
        assert norms.max() <= target * 1.02  # clipping at 0/1 can only shrink the perturbation
    else:
        assert (np.abs(d).sum(-1) > 0).reshape(len(d), -1).sum(1).max() == 1  # one pixel


def test_urp_and_lsp_are_class_wise(digits):
    p = ATTACKS.build("urp", {"eps": "0.1"}).apply(digits).train
    d = diff(p.images, digits.train.images)
    mid = (digits.train.images > 40) & (digits.train.images < 200)  # unclipped pixels
    for c in range(3):
        rows = np.flatnonzero(p.labels == c)[:2]
        both = mid[rows[0]] & mid[rows[1]]
        assert np.abs(d[rows[0]][both] - d[rows[1]][both]).max() <= 1


def test_ops_picks_one_pixel_per_class(digits):
    picks = ops_search(digits.train.images, digits.train.labels, 10)
    assert len(set(picks)) == 10
    assert all(0 <= i < 32 and 0 <= j < 32 and 0 <= v < 8 for i, j, v in picks)


@pytest.mark.parametrize("name", ["badnets", "blend"])
def test_dirty_label_backdoor(digits, name):
    p = ATTACKS.build(name, {"rate": "0.1", "target": "3"}).apply(digits)
    tr = p.train
    assert tr.poisoned.sum() == round(0.1 * len(tr))
    assert (tr.labels[tr.poisoned] == 3).all()
    assert (digits.train.labels[tr.poisoned] != 3).all()
    assert np.array_equal(tr.labels[~tr.poisoned], digits.train.labels[~tr.poisoned])
    trig = p.splits["test_triggered"]
    assert (trig.labels != 3).all() and len(trig) == (digits.test.labels != 3).sum()
    if name == "badnets":
        corner = trig.images[:, -3:, -3:]
        assert (corner[:, ::2, ::2] == 255).all() and (corner[:, 1, 0] == 0).all()
        assert np.array_equal(tr.images[tr.poisoned][:, -3:, -3:], corner[: tr.poisoned.sum()])
        white = ATTACKS.build(name, {"pattern": "white"}).apply(digits).splits["test_triggered"]
        assert (white.images[:, -3:, -3:] == 255).all()


def test_sig_is_clean_label_on_target_class(digits):
    p = ATTACKS.build("sig", {"rate": "0.5", "target": "2"}).apply(digits).train
    target_rows = digits.train.labels == 2
    assert p.poisoned.sum() == round(0.5 * target_rows.sum())
    assert (p.labels[p.poisoned] == 2).all() and np.array_equal(p.labels, digits.train.labels)
    assert np.abs(diff(p.images, digits.train.images)).max() <= round(40)


def test_dataset_dependent_checks(digits):
    with pytest.raises(ConfigError, match="only 10 classes"):
        ATTACKS.build("badnets", {"target": "10"}).apply(digits)
    with pytest.raises(ConfigError, match="must divide"):
        ATTACKS.build("lsp", {"patch": "7"}).apply(digits)
    poisoned = ATTACKS.build("urp").apply(digits)
    with pytest.raises(ConfigError, match="already poisoned"):
        ATTACKS.build("lsp").apply(poisoned)
