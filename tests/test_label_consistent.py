"""The label-consistent backdoor (lc): clean labels, hardened target-class images, the four-corner trigger."""

from __future__ import annotations

import numpy as np
import pytest

from eclipse_ray.attacks import ATTACKS, BACKDOOR
from eclipse_ray.attacks.label_consistent import corner_trigger

TINY = {"surrogate_epochs": "1", "surrogate_width": "8", "robust_steps": "1", "steps": "3"}


def test_the_trigger_is_a_checkerboard_in_each_corner():
    mask, pattern = corner_trigger((32, 32, 3), 3)
    assert mask.sum() == 4 * 9 and set(np.unique(pattern[mask > 0])) == {0.0, 1.0}
    for r, q in ((0, 0), (0, 29), (29, 0), (29, 29)):
        assert mask[r:r + 3, q:q + 3].all()
    assert not mask[3:29].any() and not mask[:, 3:29].any()


@pytest.mark.heavy  # about a minute of training: with the heavy tests, so the default run stays ≤ 10 min
def test_lc_poisons_only_the_target_class_keeps_labels_and_stays_in_budget(digits):
    cfg = ATTACKS.build("lc", TINY)
    assert cfg.kind == BACKDOOR and cfg.crafted
    p = cfg.apply(digits)
    tr, clean = p.train, digits.train
    assert np.array_equal(tr.labels, clean.labels)  # clean label
    assert tr.poisoned.sum() == (clean.labels == cfg.target).sum() and (tr.labels[tr.poisoned] == cfg.target).all()
    mask, pattern = corner_trigger(clean.image_shape, cfg.size)
    corners = np.broadcast_to(mask > 0, clean.image_shape)
    poisoned = tr.images[tr.poisoned].astype(int)
    assert (poisoned[:, corners] == np.round(np.broadcast_to(pattern, clean.image_shape)[corners] * 255)).all()
    d = poisoned - clean.images[tr.poisoned].astype(int)
    inner = d[:, ~corners]
    assert np.abs(inner).max() <= round(cfg.eps * 255) and (inner != 0).any()  # hardened, within the budget
    assert not (tr.images[~tr.poisoned] != clean.images[~tr.poisoned]).any()
    trig = p.splits["test_triggered"]
    assert (trig.labels != cfg.target).all() and (trig.images[:, corners] ==
                                                 np.round(np.broadcast_to(pattern, clean.image_shape)[corners]
                                                          * 255)).all()
    plain = ATTACKS.build("lc", {**TINY, "steps": "0"}).apply(digits).train
    assert not (plain.images[plain.poisoned][:, ~corners] != clean.images[plain.poisoned][:, ~corners]).any()


def test_an_linf_budget_above_one_is_refused_before_any_work():
    from eclipse_ray.config import ConfigError

    with pytest.raises(ConfigError, match="norm=l2"):
        ATTACKS.build("lc", {"eps": "1.176"})
    assert ATTACKS.build("lc", {"eps": "1.176", "norm": "l2"}).norm == "l2"


@pytest.mark.heavy  # about a minute of training
def test_lc_l2_poisons_stay_in_their_l2_ball(digits):
    cfg = ATTACKS.build("lc", {**TINY, "norm": "l2", "eps": "1.0"})
    tr, clean = cfg.apply(digits).train, digits.train
    corners = np.broadcast_to(corner_trigger(clean.image_shape, cfg.size)[0] > 0, clean.image_shape)
    d = (tr.images[tr.poisoned].astype(float) - clean.images[tr.poisoned])[:, ~corners]
    norms = np.linalg.norm(d.reshape(len(d), -1), axis=1)
    assert norms.max() <= cfg.eps * 255 + 1e-6 and norms.min() > 0.5 * cfg.eps * 255  # in the ball, and used
    assert np.abs(d).max() > round(16 / 255 * 255)  # ℓ2 concentrates where ℓ∞ 16/255 could not go
