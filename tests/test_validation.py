"""Validate on the way in: bad labels, attacks that poison nobody, seeds, model/image sizes and setting ranges
are one-line ConfigErrors raised before any work (or allocation) starts."""

from __future__ import annotations

import dataclasses
import json
import time
import tracemalloc

import numpy as np
import pytest
import torch

from eclipse_ray import trial
from eclipse_ray.attacks import ATTACKS
from eclipse_ray.config import ConfigError, check_seed, is_seed
from eclipse_ray.data import store
from eclipse_ray.data.imageset import ImageSet, check_labels, classes_from_labels
from eclipse_ray.data.importers import import_poisons
from eclipse_ray.data.importers.common import as_label
from eclipse_ray.data.sources import Dataset
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.diffusion.unet import build_unet
from eclipse_ray.distributed import purify as dp
from eclipse_ray.ebm.net import build_energy


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def tiny_set(n: int, labels=None, size: int = 8, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2 if labels is None else np.asarray(labels)
    n_cls = int(labels.max()) + 1
    return ImageSet(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), labels, np.arange(n),
                    np.zeros(n, bool), tuple(str(c) for c in range(max(n_cls, 2))))


def tiny_data(n: int, labels=None, size: int = 8, meta: dict | None = None) -> Dataset:
    train = tiny_set(n, labels, size)
    test = tiny_set(4, np.array([0, 1, 0, 1]), size, seed=1)
    test = ImageSet(test.images, test.labels, test.index, test.poisoned, train.classes)
    return Dataset("tiny", {"train": train, "test": test}, dict(meta or {}))


def write_npz(path, y_train, n_test: int = 4, size: int = 4):
    rng = np.random.default_rng(0)
    n = len(y_train)
    np.savez(path, x_train=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y_train=y_train,
             x_test=rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8), y_test=np.zeros(n_test, np.int64))
    return path


# --- 1. labels ----------------------------------------------------------------------------------------------


def test_npz_import_with_a_huge_label_fails_before_allocating(tmp_path):
    """One stray label implies C = 10**7 classes: refused before anything per class is built."""
    y = np.arange(40) % 4
    y[7] = 10**7
    path = write_npz(tmp_path / "huge.npz", y)
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match="largest label 10000000 implies 10000001 classes for only 40") as e:
            import_poisons("npz", path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_line(e)
    assert time.perf_counter() - t < 5
    assert peak < 5 * 2**20, f"{peak / 2**20:.1f} MiB allocated before refusing"


def test_class_count_from_labels_is_bounded_by_the_data():
    assert classes_from_labels(np.array([0, 2, 1, 2]), 4, "y") == 3
    with pytest.raises(ConfigError, match="implies 1000000001 classes for only 1000000 images") as e:
        classes_from_labels(np.array([0, 10**9]), 10**6, "y")
    one_line(e)
    with pytest.raises(ConfigError, match="implies 20000 classes, above the limit of 10000"):
        classes_from_labels(np.arange(20_000), 20_000, "y")
    with pytest.raises(ConfigError, match="implies 5 classes for only 3 images"):
        classes_from_labels(np.array([0, 4, 1]), 3, "y")


def test_float_labels_must_be_exact_integers(tmp_path):
    y = (np.arange(100) % 4).astype(np.float64)
    ok = import_poisons("npz", write_npz(tmp_path / "ok.npz", y))
    assert ok.train.num_classes == 4 and ok.train.labels.dtype == np.int64
    y_big = y.copy()
    y_big[3] = 1e5
    with pytest.raises(ConfigError, match="100001 classes for only 100 images") as e:
        import_poisons("npz", write_npz(tmp_path / "big.npz", y_big))
    one_line(e)
    y_half = y.copy()
    y_half[5] = 1.5
    with pytest.raises(ConfigError, match="whole numbers, found 1.5"):
        import_poisons("npz", write_npz(tmp_path / "half.npz", y_half))


@pytest.mark.parametrize("labels, match", [
    (np.array([0, -1, 1]), "must be ≥ 0, found -1"),
    (np.array([0.0, np.inf, 1.0]), "inf"),
    (np.array([0.0, np.nan, 1.0]), "NaN"),
    (np.array([True, False, True]), "must be integers, got bool"),
    (np.array(["0", "1", "1"]), "must be integers"),
])
def test_bad_label_values_are_refused_everywhere(tmp_path, labels, match):
    with pytest.raises(ConfigError, match=match):
        check_labels(labels, "y")
    with pytest.raises(ConfigError, match=match):  # the ImageSet constructor: every split of every source
        ImageSet(np.zeros((3, 4, 4, 3), np.uint8), labels, np.arange(3), np.zeros(3, bool), ("a", "b"))
    with pytest.raises(ConfigError, match=match):
        import_poisons("npz", write_npz(tmp_path / "bad.npz", labels))


def test_importer_labels_accept_integral_floats_only():
    assert as_label(3.0, 10, "x") == 3 and as_label(np.float32(2), 10, "x") == 2 and as_label(np.array(1), 10, "x") == 1
    for bad, match in ((3.5, "integer, got 3.5"), (float("nan"), "integer"), (True, "integer, got bool"),
                       (-1, "outside 0..9"), (10.0, "outside 0..9")):
        with pytest.raises(ConfigError, match=match):
            as_label(bad, 10, "x")


# --- 2. attacks that would poison nobody; single-class data -------------------------------------------------


@pytest.mark.parametrize("name", ["badnets", "blend", "wanet", "urp", "ops"])
def test_an_attack_that_poisons_no_image_is_refused(name):
    data = tiny_data(3, [0, 1, 1])
    with pytest.raises(ConfigError, match="would poison no image of this 3-image training set") as e:
        ATTACKS.build(name, {"rate": "0.1"}).apply(data)
    assert f"attack.rate=0.1: {name}" in one_line(e)


def test_sig_counts_only_target_class_images():
    ok = ATTACKS.build("sig", {"rate": "0.1", "target": "1"}).apply(tiny_data(20))  # round(0.1 · 10) = 1
    assert ok.train.poisoned.sum() == 1
    with pytest.raises(ConfigError, match="would poison no image"):  # round(0.04 · 10) = 0
        ATTACKS.build("sig", {"rate": "0.04", "target": "1"}).apply(tiny_data(20))


def test_poison_counts_known_up_front():
    train = tiny_set(40)
    assert ATTACKS.build("urp", {"rate": "0.25"}).poison_count(train) == 10
    assert ATTACKS.build("sig", {"rate": "0.5", "target": "1"}).poison_count(train) == 10  # of the 20 of class 1
    assert ATTACKS.build("narcissus").poison_count(train) == 1  # max(1, round(rate·n)): never 0
    assert ATTACKS.build("gradient_matching", {"targets": "3"}).poison_count(train) == 3


@pytest.mark.parametrize("name", ["badnets", "urp", "sig", "gradient_matching"])
def test_a_single_class_training_set_is_refused(name):
    data = tiny_data(12, np.zeros(12, np.int64))
    with pytest.raises(ConfigError, match=r"holds a single class \(0\); .* need at least 2 classes") as e:
        ATTACKS.build(name).apply(data)
    one_line(e)


def test_trial_refuses_before_purifying_or_training(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(trial, "train_victim", boom)
    cfg = trial.build_config("digits", "none", "gray")
    monkeypatch.setattr(type(cfg.defense), "purify", boom)
    imported = tiny_data(12, np.zeros(12, np.int64), meta={"attack_kind": "availability"})
    with pytest.raises(ConfigError, match="single class"):
        trial.run_trial(cfg, data=imported, progress=False)
    cfg = trial.build_config("digits", "badnets", "gray", {"attack.rate": "0.1"})
    monkeypatch.setattr(trial, "load_dataset", lambda *a, **k: tiny_data(3, [0, 1, 1]))
    with pytest.raises(ConfigError, match="poison no image"):
        trial.run_trial(cfg, progress=False)


# --- 3. seeds -----------------------------------------------------------------------------------------------


def seed_configs():
    from eclipse_ray.certify.run import CertifyConfig
    from eclipse_ray.diffusion.train import DiffusionTrainConfig
    from eclipse_ray.ebm.train import EBMTrainConfig

    out = [type(ATTACKS.build(n)) for n in ATTACKS] + [type(DEFENSES.build(n)) for n in DEFENSES]
    return out + [DiffusionTrainConfig, EBMTrainConfig, CertifyConfig]


def test_every_seed_setting_is_bounded_by_int64():
    seen = 0
    for cls in seed_configs():
        for f in dataclasses.fields(cls):
            if not is_seed(f.name):
                continue
            seen += 1
            assert getattr(cls(**{f.name: 2**63 - 1}), f.name) == 2**63 - 1
            for bad in (2**63, -1):
                with pytest.raises(ConfigError, match=rf"{f.name}={bad}: must be (0 ≤ seed < 2\*\*63|≥ 0)") as e:
                    cls(**{f.name: bad})
                one_line(e)
    assert seen >= 15  # every attack's seed, blend's key_seed, wanet's field_seed, the trainers', certify's


def test_trial_seeds_and_other_ints_fit_int64():
    assert trial.build_config("digits", overrides={"seed": str(2**63 - 1)}).seed == 2**63 - 1
    for key in ("seed", "purify_seed"):
        with pytest.raises(ConfigError, match=rf"{key}=9223372036854775808: must be 0 ≤ seed < 2\*\*63"):
            trial.build_config("digits", overrides={key: str(2**63)})
    with pytest.raises(ConfigError, match="victim.epochs=9223372036854775808: must fit a 64-bit integer"):
        trial.build_config("digits", overrides={"victim.epochs": str(2**63)})
    assert check_seed(0, "s") == 0


def test_cli_purify_refuses_a_seed_parquet_cannot_hold(tmp_path, capsys):
    from eclipse_ray.cli import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["purify", "--input", str(tmp_path / "in"), "--defense", "jpeg", "--out", str(out),
              "--seed", str(2**63)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--seed" in err and "must be 0 ≤ seed < 2**63" in err
    assert not out.exists()


def test_cli_purify_refuses_a_reuse_directory_that_is_no_dataset(tmp_path, capsys):
    from eclipse_ray.cli import main

    out = tmp_path / "out"
    assert main(["purify", "--input", str(tmp_path / "in"), "--defense", "jpeg", "--out", str(out),
                 "--reuse", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--reuse" in err and "not a dataset directory" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_purify_dataset_checks_the_seed_before_any_unit(tmp_path, monkeypatch):
    data = tiny_data(6)
    store.write_dataset(tmp_path / "in", data.splits)
    monkeypatch.setattr(dp, "purify_unit", lambda *a: pytest.fail("a unit was computed"))
    with pytest.raises(ConfigError, match="seed=9223372036854775808"):
        dp.purify_dataset(tmp_path / "in", DEFENSES.build("jpeg"), tmp_path / "out", seed=2**63, progress=False)
    assert not (tmp_path / "out").exists()


# --- 4. model and image sizes -------------------------------------------------------------------------------


def fake_unet_dir(path, sample_size, blocks=3):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"sample_size": sample_size,
                                                  "down_block_types": ["DownBlock2D"] * blocks}))
    return path


@pytest.mark.parametrize("size, match", [(64, "trained on 32x32 images, these are 64x64"),
                                         (30, "trained on 32x32 images, these are 30x30")])
def test_purify_dataset_refuses_a_model_of_another_size(tmp_path, model_dir, monkeypatch, size, match):
    store.write_dataset(tmp_path / "in", tiny_data(6, size=size).splits)
    monkeypatch.setattr(dp, "purify_unit", lambda *a: pytest.fail("a unit was computed"))
    d = DEFENSES.build("denoise", {"model": str(model_dir), "t_star": "20"})
    with pytest.raises(ConfigError, match=match) as e:
        dp.purify_dataset(tmp_path / "in", d, tmp_path / "out", progress=False)
    assert one_line(e).startswith(f"defense.model={model_dir}")
    assert not (tmp_path / "out").exists()


def test_in_process_purify_checks_the_model_before_purifying(tmp_path, model_dir, monkeypatch):
    d = DEFENSES.build("eclipse", {"model": str(model_dir)})
    monkeypatch.setattr(type(d), "image_purifier", lambda *a: pytest.fail("the purifier was built"))
    with pytest.raises(ConfigError, match="trained on 32x32 images, these are 64x64"):
        d.purify(tiny_set(4, size=64), seed=0, progress=False)
    odd = fake_unet_dir(tmp_path / "odd", 30)  # trained at 30 px (a foreign checkpoint): cannot be halved twice
    with pytest.raises(ConfigError, match="30x30 images do not fit this UNet; .* multiple of 4"):
        DEFENSES.build("eclipse", {"model": str(odd)}).purify(tiny_set(4, size=30), seed=0, progress=False)


def test_auto_model_refuses_an_image_size_before_training(monkeypatch):
    import eclipse_ray.data.cache as cache

    monkeypatch.setattr(cache, "cached_model", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ConfigError, match=r"defense.train.preset=paper: 36x36 images .* multiple of 8"):
        DEFENSES.build("eclipse", {"train_preset": "paper"}).purify(tiny_set(4, size=36), seed=0, progress=False)
    with pytest.raises(ConfigError, match="too small for the conv energy network"):
        DEFENSES.build("puregen-ebm", {"train_preset": "tiny"}).purify(tiny_set(4, size=16), seed=0, progress=False)


def test_training_refuses_sizes_the_unet_cannot_halve(tmp_path):
    from eclipse_ray.diffusion.train import DiffusionTrainConfig, train_diffusion

    with pytest.raises(ConfigError, match="UNet preset tiny: 30x30 images do not fit"):
        build_unet("tiny", 30)
    with pytest.raises(ConfigError, match="UNet preset paper: 32x36 images"):
        build_unet("paper", (32, 36))
    assert build_unet("tiny", 16).config.sample_size == 16
    cfg = DiffusionTrainConfig(iterations=1, batch_size=2, device="cpu")
    with pytest.raises(ConfigError, match="30x30 images do not fit"):
        train_diffusion(cfg, tiny_set(4, size=30), tmp_path / "out", progress=False)


def test_ebm_sizes(tmp_path):
    with pytest.raises(ConfigError, match="16x16 images are too small for the conv energy network"):
        build_energy("tiny")(torch.zeros(1, 3, 16, 16))
    assert build_energy("paper")(torch.zeros(1, 3, 8, 8)).shape == (1,)
    model = tmp_path / "ebm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"kind": "ebm", "arch": "conv", "width": 8,
                                                   "image_shape": [32, 32, 3]}))
    d = DEFENSES.build("puregen-ebm", {"model": str(model)})
    d.check_model(model, (32, 32, 3))
    with pytest.raises(ConfigError, match="the EBM was trained on 32x32 images, these are 64x64"):
        d.check_model(model, (64, 64, 3))
    with pytest.raises(ConfigError, match="the EBM was trained on 32x32 images"):
        d.purify(tiny_set(4, size=64), seed=0, progress=False)


# --- 5. ranges of settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, key, value, match", [
    ("eclipse", "sigma", "1.5", "defense.sigma=1.5: must be ≤ 1"),
    ("denoise", "sigma", "-0.1", "defense.sigma=-0.1: must be ≥ 0"),
    ("puregen-ebm", "eta", "-1", "defense.eta=-1.0: must be ≥ 0"),
])
def test_defense_ranges(name, key, value, match):
    with pytest.raises(ConfigError, match=match):
        DEFENSES.build(name, {key: value})


def test_unit_interval_settings_declare_their_range():
    """Rates, budgets, probabilities and σ on [0,1] are bounded on both sides; budgets and steps from below."""
    unit = {"rate", "budget", "gray_p", "denoise_sigma", "alpha", "alpha_test", "delta", "stop_acc",
            "clean_fraction"}  # defense.sigma: test_defense_ranges (blur's sigma is in pixels)
    lower = unit | {"sigma", "eps", "adv_eps", "noise_sigma", "step", "adv_step", "lr", "eta", "tau", "strength"}
    checked = 0
    def all_fields(cls):  # nested configs (defense.train.…) included
        for f in dataclasses.fields(cls):
            if f.metadata.get("nested"):
                yield from all_fields(type(f.default_factory()))
            else:
                yield f

    for reg in (ATTACKS, DEFENSES):
        for n in reg:
            for f in all_fields(reg[n]):
                meta = f.metadata
                low = meta.get("ge") if meta.get("ge") is not None else meta.get("gt")
                if f.name in lower:
                    checked += 1
                    assert low is not None and low >= 0, f"{n}.{f.name} has no lower bound"
                if f.name in unit:
                    assert meta.get("le") == 1.0, f"{n}.{f.name} is not bounded by 1"
    assert checked > 30
    with pytest.raises(ConfigError, match="attack.denoise_sigma=2.0: must be ≤ 1"):
        ATTACKS.build("em-adaptive", {"denoise_sigma": "2"})
