"""Composed defenses (``jpeg+vab``, ``denoise+jpeg`` …) and adversarial training."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from eclipse_ray.config import ConfigError, flatten
from eclipse_ray.data import store
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.defenses.baselines import jpeg
from eclipse_ray.distributed import artifacts as A
from eclipse_ray.distributed.study import compile_plan
from eclipse_ray.distributed.tune import spec
from eclipse_ray.presets import PRESETS, trial_settings
from eclipse_ray.trial import build_config


@pytest.mark.parametrize("name, match", [
    ("vab+jpeg", "vab does not purify; only the last part may be a training-time defense"),
    ("jpeg+jpeg", "a part is given twice"),
    ("eclipse+denoise", "at most one part may use a model"),
    ("jpeg+none", "none neither purifies nor trains"),
    ("jpeg+nope", "unknown defense 'nope'"),
])
def test_composites_follow_the_rules(name, match):
    with pytest.raises(ConfigError, match=match) as e:
        DEFENSES.build(name)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="per-epoch transform .* cannot reach vab"):
        DEFENSES.build("eclipse+vab", {"eclipse.mode": "epoch"})


def test_a_composite_is_one_defense_with_each_part_addressed():
    d = DEFENSES.build("jpeg+vab", {"jpeg.quality": "20", "vab.lambda2": "0.2"})
    assert d.name == "jpeg+vab" and d.purifies and d.jpeg.quality == 20 and d.vab.lambda2 == 0.2
    flat = flatten(d, "defense.")
    assert flat["defense.name"] == "jpeg+vab" and flat["defense.jpeg.quality"] == 20
    with pytest.raises(ConfigError, match="unknown setting 'defense.quality'"):
        DEFENSES.build("jpeg+vab", {"quality": "20"})
    a, b = (build_config("digits", "badnets", "jpeg+vab", {"defense.vab.lambda2": v}) for v in ("0.1", "0.2"))
    assert a.hash() != b.hash() and set(a.hashes()).isdisjoint(b.hashes())
    assert len(a.hashes()) == 4  # its own, and those before victim.transfer, the airbench settings, victim.precision
    # the purified set is jpeg's: a training-time part does not change it
    assert A.purification_key(a) == A.purification_key(b) == A.purification_key(build_config("digits", "badnets",
                                                                                              "jpeg"))
    assert "jpeg+vab" in DEFENSES and "vab+jpeg" not in DEFENSES
    # a worker that unpickles one makes the same class (another process, nothing made there before)
    blob = pickle.dumps(d)
    code = ("import pickle, sys; d = pickle.loads(sys.stdin.buffer.read()); "
            "print(d.name, d.vab.lambda2, type(d).__qualname__)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True).stdout
    assert out.decode().split() == ["jpeg+vab", "0.2", type(d).__qualname__]


def test_purifiers_apply_in_order_and_presets_reach_each_part(digits):
    train = digits.train.subset(np.arange(20))
    both = DEFENSES.build("gray+jpeg", {"jpeg.quality": "30"}).purify(train, 0, progress=False)
    gray = DEFENSES.build("gray").purify(train, 0, progress=False)
    assert np.array_equal(both.images, jpeg(gray.images, 30))
    s = trial_settings(PRESETS["smoke"], "eclipse+vab", {}, 0)
    assert s["defense.eclipse.train.iterations"] == "40" and not any(k.startswith("defense.vab.train") for k in s)


def test_a_study_shares_the_first_part_of_a_chain():
    settings = trial_settings(PRESETS["smoke"], "denoise+jpeg", {}, 0)
    specs = [spec("digits", "badnets", d, trial_settings(PRESETS["smoke"], d, {}, 0))
             for d in ("denoise", "denoise+jpeg", "jpeg+vab", "jpeg")]
    plan = compile_plan(specs)
    key = {t.cfg.defense.name: t.purification_key for t in plan.trials}
    assert plan.sources == {key["denoise+jpeg"]: key["denoise"]}  # the chain starts from denoise's own set
    assert key["jpeg+vab"] == key["jpeg"] and len(plan.purifications) == 3  # denoise, denoise+jpeg, jpeg
    assert A.purification_key(A.first_part(build_config("digits", "badnets", "denoise+jpeg", settings))) == \
        key["denoise"]


@pytest.mark.slow
def test_a_chain_from_the_cache_gives_the_bytes_of_the_composite_in_memory(digits, tmp_path):
    """``denoise+jpeg`` computed from ``denoise``'s cached set (the storage path) and in one pass in memory
    (the in-memory path) are the same images; the first part's set is the one ``denoise`` alone reads."""
    from eclipse_ray.data import cache as C
    from eclipse_ray.data.imageset import clean_view

    small = store.write_dataset(tmp_path / "src", {"train": digits.train.subset(np.arange(96)), "test": digits.test})
    settings = {"defense.denoise.train.iterations": "20", "defense.denoise.train.batch_size": "16",
                "defense.denoise.train.clean_fraction": "0.25", "defense.jpeg.quality": "40"}
    cfg = build_config(f"parquet:{small}", "lsp", "denoise+jpeg", settings)
    cache = str(tmp_path / "cache")
    chain, reused = A.purified(cfg, cache)
    first = A.first_part(cfg)
    assert not reused and C.intact(C.purified_location(cache, A.purification_key(first)))
    assert A.purified(cfg, cache)[1]  # now from the cache
    data = C.read_poisoned(C.poisons_location(cache, cfg.dataset_address, cfg.attack), cfg.dataset)
    import os

    os.environ["ECLIPSE_RAY_CACHE"] = cache  # the same auto model
    try:
        whole = cfg.defense.purify(data.train, cfg.defense_seed, progress=False,
                                   clean=clean_view(data.train, data.splits.get("originals")))
    finally:
        os.environ.pop("ECLIPSE_RAY_CACHE")
    assert np.array_equal(chain.sorted_by_index().images, whole.sorted_by_index().images)
    alone = A.purified(first, cache)
    assert alone[1] and np.array_equal(jpeg(alone[0].images, 40), chain.images)


@pytest.mark.heavy  # about a minute of training: with the heavy tests, so the default run stays ≤ 10 min
def test_adversarial_training_makes_the_victim_robust_within_its_budget(digits, quick_victim):
    """Under PGD at ε = 8/255 the plainly trained victim falls to chance; the adversarially trained one
    keeps most of its accuracy (measured: 6 % against 74 % with 5 epochs and 10 steps)."""
    from eclipse_ray.attacks.surrogate import pgd_adversary
    from eclipse_ray.victim.train import VictimConfig, train_victim

    cfg = VictimConfig(epochs=3, width=16)
    train, test = digits.train, digits.test
    plain = train_victim(cfg, train.images, train.labels, train.num_classes, 0, progress=False)
    robust, extra = DEFENSES.build("advtrain", {"steps": "3", "step": str(3 / 255)}).train_victim(cfg, train, 0, False)
    x = torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(test.labels.astype(np.int64))

    def under_attack(v):
        v.model.eval()
        adv = pgd_adversary(8 / 255, 2 / 255, 10)(lambda z: v.model((z - v.mean) / v.std), x, y,
                                                  torch.Generator().manual_seed(1))
        with torch.no_grad():
            return (v.model((adv - v.mean) / v.std).argmax(1) == y).float().mean().item()

    assert under_attack(robust) > under_attack(plain) + 0.3
    assert (robust.predict(test.images) == test.labels).mean() > 0.8 and extra == {}


@pytest.mark.parametrize("whiten", [False, True])
def test_adversarial_training_trains_the_fast_nets_stem_unless_told_to_keep_it_frozen(digits, monkeypatch, whiten):
    """The frozen patch-whitening stem amplifies ℓ∞ perturbations (CIFAR subset: 14.3 % clean accuracy under
    advtrain with it, 47.3 % without), so advtrain trains the victim without it unless ``whiten`` keeps it."""
    import eclipse_ray.defenses.advtrain as advtrain
    from eclipse_ray.victim.train import VictimConfig

    seen = []
    monkeypatch.setattr(advtrain, "train_victim", lambda cfg, *a, **k: seen.append(cfg) or "victim")
    victim, _ = DEFENSES.build("advtrain", {"whiten": str(whiten)}).train_victim(VictimConfig(), digits.train, 0,
                                                                                  False)
    assert victim == "victim" and seen[0].whiten is whiten and seen[0].epochs == VictimConfig().epochs
