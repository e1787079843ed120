"""WaNet and the targeted clean-label poisons (gradient matching, Bullseye Polytope, Narcissus, Poison Frogs,
Convex Polytope) on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_ray.attacks import ATTACKS, TARGETED
from eclipse_ray.attacks.gradient_matching import brew
from eclipse_ray.attacks.narcissus import optimise_trigger
from eclipse_ray.attacks.targeted_base import logits, train_surrogate
from eclipse_ray.attacks.wanet import warp, warp_field
from eclipse_ray.data.cache import cached_attack
from eclipse_ray.trial import build_config, run_trial
from eclipse_ray.victim import metrics
from eclipse_ray.victim.train import VictimConfig, train_victim
from eclipse_ray.tensors import to_tensor

# Tiny crafting settings: a 1-epoch width-8 surrogate (trained once, then reused from memory) and a few steps.
TINY = {"surrogate_epochs": "1", "surrogate_width": "8"}
TINY_ATTACKS = {
    "gradient_matching": {**TINY, "iterations": "4", "restarts": "2", "targets": "3"},
    "bullseye": {**TINY, "iterations": "6", "targets": "3", "poisons": "4"},
    "narcissus": {**TINY, "rounds": "8", "poisons": "5"},
    "poison_frogs": {**TINY, "iterations": "6", "targets": "3", "poisons": "4"},
    "convex_polytope": {**TINY, "iterations": "6", "targets": "3", "poisons": "4"},
}


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.int32) - b.astype(np.int32)


@pytest.fixture(scope="module")
def crafted(digits):
    return {name: ATTACKS.build(name, ov).apply(digits) for name, ov in TINY_ATTACKS.items()}


def test_wanet_rate_labels_and_mask(digits):
    cfg = ATTACKS.build("wanet")
    p = cfg.apply(digits)
    again = cfg.apply(digits)
    tr, n = p.train, len(digits.train)
    n_bd = round(0.1 * n)
    assert np.array_equal(tr.images, again.train.images) and np.array_equal(tr.labels, again.train.labels)
    relabelled = tr.labels != digits.train.labels
    bd = tr.poisoned & (tr.labels == 0) & (digits.train.labels != 0)
    assert relabelled.sum() == bd.sum() == n_bd  # poisoned rows come from non-target classes, flipped to 0
    assert tr.poisoned.sum() == n_bd + round(2 * n_bd)  # plus the noise-mode rows (cross ratio 2), labels kept
    changed = np.any(diff(tr.images, digits.train.images) != 0, axis=(1, 2, 3))
    assert not changed[~tr.poisoned].any() and changed[tr.poisoned].mean() > 0.9
    # Poisoned rows carry exactly the fixed field; noise-mode rows differ from it.
    assert np.array_equal(tr.images[bd], cfg.trigger(digits.train.images[bd], train=True))
    cross = tr.poisoned & ~bd
    assert np.any(tr.images[cross] != cfg.trigger(digits.train.images[cross], train=True), axis=(1, 2, 3)).mean() > 0.9
    trig = p.splits["test_triggered"]
    assert (trig.labels != 0).all() and len(trig) == (digits.test.labels != 0).sum()
    assert p.test is digits.test


def test_wanet_field_is_smooth_and_small():
    grid = warp_field(32, 4, 0.5, 1.0, torch.Generator().manual_seed(0))
    line = torch.linspace(-1, 1, 32)
    yy, xx = torch.meshgrid(line, line, indexing="ij")
    shift = (grid[0] - torch.stack((xx, yy), 2)).abs() * 16  # in pixels
    assert 0.05 < shift.mean() < 1.0 and shift.max() < 3
    img = (np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))).astype(np.uint8)
    ident = torch.stack((xx, yy), 2)[None]
    assert np.abs(diff(warp(img, ident), img)).max() <= 1  # the identity grid changes nothing


@pytest.mark.slow
def test_wanet_is_learned_by_a_fast_victim(digits):
    # Digits are upscaled 8x8 images (smooth), so the default s = 0.5 is nearly invisible on them and a
    # 2-px translation is as large as the warp: a stronger field, no translation, so that 4 epochs suffice
    # (the CIFAR benchmark uses the defaults).
    p = ATTACKS.build("wanet", {"strength": "4"}).apply(digits)
    v = train_victim(VictimConfig(epochs=4, width=16, translate=0), p.train.images, p.train.labels, 10, 0,
                     progress=False)
    asr = metrics.attack_success_rate(v.predict(p.splits["test_triggered"].images), 0)
    acc = metrics.accuracy(v.predict(p.test.images), p.test.labels)
    assert acc > 0.8 and asr > 0.8, (acc, asr)


@pytest.mark.parametrize("name", list(TINY_ATTACKS))
def test_targeted_budget_labels_count_and_class(digits, crafted, name):
    cfg = ATTACKS.build(name, TINY_ATTACKS[name])
    assert cfg.kind == TARGETED and cfg.crafted
    p = crafted[name]
    tr = p.train
    assert np.array_equal(tr.labels, digits.train.labels) and np.array_equal(tr.index, digits.train.index)
    d = diff(tr.images, digits.train.images)
    assert np.abs(d).max() <= round(cfg.eps * 255)  # ℓ∞ budget in uint8 units
    assert not np.any(d[~tr.poisoned]), "only poisoned rows may change"
    assert np.any(d[tr.poisoned] != 0, axis=(1, 2, 3)).mean() > 0.5
    assert np.array_equal(p.splits["originals"].images, digits.train.images[tr.poisoned])
    if name == "narcissus":
        assert tr.poisoned.sum() == 5 and (tr.labels[tr.poisoned] == cfg.target).all()
        assert ATTACKS.build(name, {**TINY, "rounds": "1"}).apply(digits).train.poisoned.sum() == 1  # 0.05 %, ≥ 1
        trig = p.splits["test_triggered"]
        assert (trig.labels != cfg.target).all()
        t = diff(trig.images, digits.test.images[digits.test.labels != cfg.target])
        assert np.abs(t).max() <= round(3 * cfg.eps * 255) + 1  # magnified ×3 at test time
        return
    per = cfg.per_target(len(digits.train))
    assert tr.poisoned.sum() == cfg.targets * per
    adv = np.array(p.meta["adv_labels"])
    owner = np.array(tr.meta["poison_target"])
    assert len(adv) == cfg.targets == len(p.splits["targets"]) and np.bincount(owner).tolist() == [per] * 3
    assert (tr.labels[tr.poisoned] == adv[owner]).all(), "poisons come from their target's adversarial class"
    targets = p.splits["targets"]
    assert (targets.labels != adv).all()
    assert not np.isin(targets.index, p.test.index).any() and len(p.test) == len(digits.test) - 3


@pytest.mark.slow
def test_targeted_is_deterministic(digits, crafted):
    for name, overrides in TINY_ATTACKS.items():
        again = ATTACKS.build(name, overrides).apply(digits)
        assert np.array_equal(again.train.images, crafted[name].train.images), name
    other = ATTACKS.build("bullseye", {**TINY_ATTACKS["bullseye"], "seed": "3"}).apply(digits)
    assert not np.array_equal(other.train.images, crafted["bullseye"].train.images)


def test_gradient_matching_aligns_gradients(digits):
    sur = train_surrogate(digits.train, 1, 8, seed=0)
    bases = to_tensor(digits.train.images[digits.train.labels == 3][:8], sur.device)
    target = to_tensor(digits.test.images[digits.test.labels == 5][:1], sur.device)
    _, history = brew(sur, bases, target, 3, 16 / 255, 30, 1, 0.1, False, torch.Generator().manual_seed(0))
    losses = history[0]
    assert losses[-1] < losses[0] - 0.1, (losses[0], losses[-1])  # 1 - cosine falls: gradients align


def test_narcissus_trigger_points_to_target(digits):
    sur = train_surrogate(digits.train, 1, 8, seed=0)
    x = to_tensor(digits.train.images[digits.train.labels == 2], sur.device)
    # 30 rounds of one batch each (RAdam takes plain momentum steps for its first 5 updates)
    delta, history = optimise_trigger(sur, x, 2, 16 / 255, 30, 0.01, 350, torch.Generator().manual_seed(0))
    assert delta.abs().max() <= 16 / 255 + 1e-6 and history[-1] < history[0]
    others = to_tensor(digits.test.images[digits.test.labels != 2], sur.device)
    with torch.no_grad():
        before = logits(sur, others).softmax(1)[:, 2].mean()
        after = logits(sur, (others + 3 * delta).clamp(0, 1)).softmax(1)[:, 2].mean()
    assert after > 2 * before and after > before + 0.05, (float(before), float(after))  # measured 0.057 -> 0.154


@pytest.mark.slow
def test_targeted_trial_row_and_cache(digits, crafted, tmp_path):
    cfg = build_config("digits", "gradient_matching", "none", {
        **{f"attack.{k}": v for k, v in TINY_ATTACKS["gradient_matching"].items()},
        "victim.epochs": "1", "victim.width": "8"})
    first = cached_attack(cfg.attack, digits, "digits", tmp_path)  # crafted, written to the cache ...
    assert not first.meta["poison_cached"]
    again = cached_attack(cfg.attack, digits, "digits", tmp_path)  # ... and read back
    assert again.meta["poison_cached"] and again.meta["adv_labels"] == crafted["gradient_matching"].meta["adv_labels"]
    assert np.array_equal(again.splits["targets"].images, crafted["gradient_matching"].splits["targets"].images)
    row = run_trial(cfg, data=again, progress=False, reference=False)
    assert row["attack.kind"] == TARGETED and 0.0 <= row["target_success"] <= 1.0
    assert row["poison_success"] == row["target_success"] and row["n_test"] == len(digits.test) - 3
    assert row["craft_seconds"] > 0 and row["n_poisoned"] == 3 * 14
    pois = again.train.poisoned  # the share of its poisons the victim learnt, by hand
    victim_rows = (row["poisons_learnt"] * pois.sum())
    assert 0.0 <= row["poisons_learnt"] <= 1.0 and abs(victim_rows - round(victim_rows)) < 1e-9


@pytest.mark.parametrize("objective", ["each", "convex"])
def test_feature_collision_pulls_the_target_among_the_poisons(digits, objective):
    """Poison Frogs brings every poison's feature to the target's; Convex Polytope brings the target into
    the poisons' hull, its coefficients staying on the simplex (the loss falls by half in 40 steps)."""
    from eclipse_ray.attacks.feature_collision import collide

    sur = train_surrogate(digits.train, 1, 8, 0)
    bases = to_tensor(digits.train.images[digits.train.labels == 3][:4], sur.device)
    target = to_tensor(digits.test.images[digits.test.labels == 5][:1], sur.device)
    delta, c, losses = collide(sur, bases, target, 8 / 255, 40, 0.04, objective)
    assert losses[-1] < 0.5 * losses[0] and float(delta.abs().max()) <= 8 / 255 + 1e-6
    assert torch.all(c >= 0) and abs(float(c.sum()) - 1) < 1e-5


def test_htba_poisons_target_images_towards_patched_sources(digits):
    """HTBA: target-class poisons (labels kept, in budget) whose features move towards those of patched
    source images; the triggered test split is the source class with the patch."""
    from eclipse_ray.attacks.htba import paste_patches
    from eclipse_ray.attacks.surrogate import features

    cfg = ATTACKS.build("htba", {**TINY, "iterations": "30", "poisons": "6", "repair_every": "10"})
    p = cfg.apply(digits)
    tr, clean = p.train, digits.train
    assert cfg.kind == TARGETED and tr.poisoned.sum() == 6 and (tr.labels[tr.poisoned] == cfg.target).all()
    assert np.array_equal(tr.labels, clean.labels) and np.abs(diff(tr.images, clean.images)).max() <= 8
    trig = p.splits["test_triggered"]
    assert (trig.labels == cfg.source).all() and len(trig) == (digits.test.labels == cfg.source).sum()
    sur = train_surrogate(clean, 1, 8, cfg.seed)
    patched = paste_patches(clean.images[clean.labels == cfg.source][:50], cfg.trigger_patch(3),
                            np.random.default_rng(0))
    with torch.no_grad():
        goal = features(sur, to_tensor(patched, sur.device)).mean(0)
        before = (features(sur, to_tensor(clean.images[tr.poisoned], sur.device)) - goal).norm(dim=1).mean()
        after = (features(sur, to_tensor(tr.images[tr.poisoned], sur.device)) - goal).norm(dim=1).mean()
    assert after < before
    with pytest.raises(Exception, match="attack.source=0"):
        ATTACKS.build("htba", {"source": "0"}).apply(digits)


@pytest.mark.parametrize("name", ["gradient_matching", "poison_frogs", "htba", "sleeper_agent"])
def test_l2_variants_keep_every_poison_within_its_l2_budget(digits, name):
    """With ``norm=l2`` each poison's whole perturbation (uint8 steps, after rounding) has ℓ2 norm ≤ eps, and
    the attack uses a good part of that ball."""
    tiny = {"gradient_matching": TINY_ATTACKS["gradient_matching"], "poison_frogs": TINY_ATTACKS["poison_frogs"],
            "htba": {**TINY, "iterations": "20", "poisons": "4"},
            "sleeper_agent": {**TINY, "iterations": "6", "retrain": "0", "poisons": "4", "sources": "20"}}[name]
    eps = 1.0
    p = ATTACKS.build(name, {**tiny, "norm": "l2", "eps": str(eps), "lr": "0.5"} if name in ("poison_frogs", "htba")
                      else {**tiny, "norm": "l2", "eps": str(eps), "tau": "0.5"}).apply(digits)
    d = diff(p.train.images, digits.train.images)[p.train.poisoned].reshape(int(p.train.poisoned.sum()), -1) / 255
    norms = np.linalg.norm(d, axis=1)
    assert norms.max() <= eps + 1e-9 and np.median(norms) > 0.5 * eps, norms


def test_l2_projection_and_rounding_never_exceed_the_ball():
    from eclipse_ray.attacks.surrogate import ball_project, quantise_ball

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=gen)
    d = ball_project(x, 0.5, "l2")(torch.randn(6, 3, 8, 8, generator=gen))
    assert (d.flatten(1).norm(dim=1) <= 0.5 + 1e-6).all() and ((x + d) >= 0).all() and ((x + d) <= 1).all()
    images = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    q = quantise_ball(images, np.arange(6), d, 0.5, "l2")
    norms = np.linalg.norm(diff(q, images).reshape(6, -1) / 255, axis=1)
    assert (norms <= 0.5 + 1e-9).all() and (norms > 0.4).all(), norms  # inside, and most of δ kept


def test_the_norm_setting_keeps_earlier_hashes_and_cache_keys():
    """``attack.norm`` was added later: at its default (linf) the earlier hash of a targeted trial stays one of
    :meth:`TrialConfig.hashes` (pinned from the version before), and l2 gets a hash no earlier version had."""
    cfg = build_config("digits", "gradient_matching", "none", {"attack.eps": "0.0627451"})
    assert "0f410cab83de8327" in cfg.hashes() and cfg.attack.norm == "linf"
    l2 = build_config("digits", "gradient_matching", "none", {"attack.eps": "0.0627451", "attack.norm": "l2"})
    assert set(l2.hashes()).isdisjoint(cfg.hashes())
    assert len(l2.hashes()) == 4  # its own, and those before victim.transfer, the airbench settings, victim.precision
