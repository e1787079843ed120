"""The input-aware dynamic backdoor (iad) and Sleeper Agent (sleeper_agent) on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_ray.attacks import ATTACKS, BACKDOOR, TARGETED
from eclipse_ray.config import ConfigError
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset
from eclipse_ray.victim import metrics
from victims import accuracy, clean_and_poisoned

TINY_IAD = {"mask_epochs": "1", "epochs": "1", "gen_width": "4", "width": "8", "batch_size": "64"}
TINY_SA = {"surrogate_epochs": "1", "surrogate_width": "8", "iterations": "4", "retrain": "1", "poisons": "6",
           "sources": "20"}


@pytest.fixture(scope="module")
def small(digits) -> Dataset:
    return Dataset("digits-400", {"train": digits.train.subset(np.arange(400)), "test": digits.test}, digits.meta)


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.int32) - b.astype(np.int32)


def test_iad_backdoor_and_cross_rows_and_input_aware_triggers(small):
    cfg = ATTACKS.build("iad", TINY_IAD)
    assert cfg.kind == BACKDOOR and cfg.crafted
    a, b = cfg.apply(small), cfg.apply(small)
    assert np.array_equal(a.train.images, b.train.images), "not deterministic under the seed"
    assert "_fitted" not in cfg.__dict__, "the trained generators must not stay on the config"
    tr, clean = a.train, small.train
    flipped = tr.labels != clean.labels
    assert flipped.sum() == round(0.1 * len(clean)) and (tr.labels[flipped] == cfg.target).all()
    assert (clean.labels[flipped] != cfg.target).all()
    cross = tr.poisoned & ~flipped
    assert cross.sum() == flipped.sum()  # cross_ratio 1, labels kept
    changed = np.any(diff(tr.images, clean.images) != 0, axis=(1, 2, 3))
    assert changed[tr.poisoned].mean() > 0.9 and not changed[~tr.poisoned].any()
    trig = a.splits["test_triggered"]
    assert (trig.labels != cfg.target).all() and len(trig) == (small.test.labels != cfg.target).sum()
    assert (diff(trig.images, small.test.images[small.test.labels != cfg.target]) != 0).any(axis=(1, 2, 3)).all()
    sub = clean.subset(np.arange(40))
    odd = ImageSet(np.ascontiguousarray(sub.images[:, :28, :28]), sub.labels, sub.index, sub.poisoned, sub.classes)
    with pytest.raises(ConfigError, match="multiple of 8"):
        cfg.check_dataset(odd)


def test_iad_generators_make_a_different_sparse_trigger_for_each_image(small):
    """Input-aware: after the mask training the masks stay near the target density, and two images get
    different masks and patterns (a fixed trigger would give the same m·G for every image)."""
    from eclipse_ray.attacks.iad import soft_threshold
    from eclipse_ray.attacks.surrogate import images_tensor

    cfg = ATTACKS.build("iad", {**TINY_IAD, "mask_epochs": "6"})
    x = images_tensor(small.train.images, torch.device("cpu"))
    y = torch.from_numpy(small.train.labels.astype(np.int64))
    net_g, net_m = cfg.train_generators(x, y, 10, torch.Generator().manual_seed(0))
    xn = (x[:32] - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    with torch.no_grad():
        m, g = soft_threshold(net_m(xn)), net_g(xn)
    assert m.mean() < 0.25, "the norm loss keeps the masks sparse"
    trig = (m * g).flatten(1)
    gaps = (trig[1:] - trig[:-1]).abs().mean(1)
    assert (gaps > 1e-3).all(), gaps


@pytest.mark.heavy  # about a minute and a half of attacker and victim training
def test_iad_implants_its_backdoor(digits):
    """Trained on the IAD poisons (backdoor rows only), a fast victim classifies ≥ 80 % of the non-target test
    digits carrying their own trigger as the target, and keeps its clean accuracy within 15 points.
    (Measured on digits: with the cross-trigger rows too, this 5-epoch victim collapses to the target class —
    ASR 100 %, accuracy 10 % — so this check leaves them out.)"""
    cfg = ATTACKS.build("iad", {"mask_epochs": "10", "epochs": "8", "gen_width": "8", "width": "16",
                                "cross_ratio": "0"})
    p = cfg.apply(digits)
    clean, victim = clean_and_poisoned(digits, p)
    asr = metrics.attack_success_rate(victim.predict(p.splits["test_triggered"].images), cfg.target)
    acc = [accuracy(v, digits) for v in (clean, victim)]
    assert asr >= 0.8 and acc[1] > acc[0] - 0.15, (asr, acc)


def test_sleeper_agent_poisons_are_clean_label_within_budget_and_chosen_by_gradient(small):
    from eclipse_ray.attacks.sleeper_agent import gradient_norms
    from eclipse_ray.tensors import to_tensor

    cfg = ATTACKS.build("sleeper_agent", TINY_SA)
    assert cfg.kind == TARGETED and cfg.crafted
    p = cfg.apply(small)
    tr, clean = p.train, small.train
    assert tr.poisoned.sum() == 6 and (clean.labels[tr.poisoned] == cfg.target).all()
    assert np.array_equal(tr.labels, clean.labels)
    assert np.abs(diff(tr.images, clean.images)).max() <= 16 and not (tr.images[~tr.poisoned]
                                                                     != clean.images[~tr.poisoned]).any()
    trig = p.splits["test_triggered"]
    assert (trig.labels == cfg.source).all() and len(trig) == (small.test.labels == cfg.source).sum()
    sur = cfg.surrogate(clean.images, clean.labels, 10, 0)
    cand = np.flatnonzero(clean.labels == cfg.target)
    norms = gradient_norms(sur, to_tensor(clean.images[cand], sur.device),
                           torch.from_numpy(clean.labels[cand].astype(np.int64)).to(sur.device))
    assert set(np.flatnonzero(tr.poisoned)) == set(cand[torch.argsort(norms, descending=True)[:6].numpy()])
    rnd = ATTACKS.build("sleeper_agent", {**TINY_SA, "select": "random"}).apply(small).train
    assert set(np.flatnonzero(rnd.poisoned)) != set(np.flatnonzero(tr.poisoned))
    with pytest.raises(ConfigError, match="attack.source=0"):
        ATTACKS.build("sleeper_agent", {"source": "0"}).apply(small)
    with pytest.raises(ConfigError, match="attack.retrain=4"):
        ATTACKS.build("sleeper_agent", {"retrain": "4", "iterations": "4"}).apply(small)
    with pytest.raises(ConfigError, match="attack.norm=l2"):  # the ℓ∞ default is no ℓ2 budget
        ATTACKS.build("sleeper_agent", {"norm": "l2"}).apply(small)


@pytest.mark.heavy  # about a minute of crafting (one retraining) and victim training
def test_sleeper_agent_implants_a_hidden_trigger(digits):
    """14 poisons (1 %) that never show the patch make a fast victim send most patched source digits to the
    target; a victim trained on the clean digits sends none (measured: 97 % vs 0 %)."""
    cfg = ATTACKS.build("sleeper_agent", {"poisons": "14", "iterations": "60", "retrain": "1",
                                          "surrogate_epochs": "5", "surrogate_width": "16"})
    p = cfg.apply(digits)
    trig = p.splits["test_triggered"]
    asr, base = (metrics.attack_success_rate(v.predict(trig.images), cfg.target)
                 for v in reversed(clean_and_poisoned(digits, p)))
    assert asr >= 0.5 and base <= 0.1, (asr, base)


def test_iad_schedule_scales_the_papers_decays_or_keeps_its_epochs():
    scaled, kept = ATTACKS.build("iad", {}), ATTACKS.build("iad", {"schedule": "truncated"})
    assert scaled.milestones((100, 200, 300, 400), 600, 600) == [100, 200, 300, 400]
    assert scaled.milestones((100, 200, 300, 400), 600, 10) == [1, 3, 5, 6]  # a short run decays early
    assert kept.milestones((100, 200, 300, 400), 600, 10) == []  # the paper run's first 10 epochs: no decay yet
    assert kept.milestones((10, 20), 25, 15) == [10]
