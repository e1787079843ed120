"""PureGen-EBM: Langevin dynamics, contrastive-divergence training, the defense, CLI and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interrupt import killed_at
from eclipse_ray.config import ConfigError
from eclipse_ray.data.imageset import check_same_samples
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.data.sources import clean_reference_rows
from eclipse_ray.ebm import train as ebm_train
from eclipse_ray.ebm.langevin import langevin, purify_images
from eclipse_ray.ebm.net import build_energy, load_energy, save_energy
from eclipse_ray.ebm.train import EBMTrainConfig, train_ebm

QUICK = dict(preset="tiny", batch_size=4, mcmc_steps=2, iterations=4, device="cpu")


def to_pm1(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def trained_dir(digits, tmp_path_factory):
    """A tiny EBM briefly trained on the 4 % clean reference set of digits."""
    clean = digits.train.subset(clean_reference_rows(digits.train, 0.04, 0))
    cfg = EBMTrainConfig(preset="tiny", iterations=15, batch_size=8, mcmc_steps=5, lr=1e-2, device="cpu")
    return train_ebm(cfg, clean, tmp_path_factory.mktemp("ebm") / "m", progress=False)


def test_langevin_on_a_quadratic_matches_the_update_rule():
    k = 0.05  # E(x) = k/2 ‖x‖²  →  x ← (1 − (η²/2τ)·k)·x without noise
    energy = lambda x: 0.5 * k * x.flatten(1).pow(2).sum(1)  # noqa: E731
    x0 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    before = x0.clone()
    det = langevin(energy, x0, 20, 0.0, 1e-4, torch.Generator())
    assert torch.equal(det, x0)  # η = 0: no move at all (drift ∝ η²)
    step = (1.25e-2 ** 2 / 2 / 1e-4) * k
    noisy = langevin(energy, x0, 20, 1.25e-2, 1e-4, torch.Generator().manual_seed(1))
    expect = (1 - step) ** 20 * x0  # the mean of the chain; the noise adds η-sized scatter around it
    assert torch.equal(x0, before)  # pure: the input is untouched
    assert (noisy - expect).std().item() == pytest.approx(1.25e-2 * np.sqrt(sum((1 - step) ** (2 * i)
                                                                                for i in range(20))), rel=0.1)
    assert energy(noisy).mean() < 0.5 * energy(x0).mean()  # moved towards lower energy


def test_langevin_rejects_bad_settings():
    with pytest.raises(ConfigError, match="tau > 0"):
        langevin(lambda x: x.sum((1, 2, 3)), torch.zeros(1, 3, 4, 4), 3, 0.01, 0.0, torch.Generator())
    with pytest.raises(ConfigError, match="generators for a batch"):
        langevin(lambda x: x.sum((1, 2, 3)), torch.zeros(2, 3, 4, 4), 1, 0.01, 1e-4, [torch.Generator()])


def test_purification_is_deterministic_and_independent_of_batching(digits):
    torch.manual_seed(0)
    net = build_energy("tiny").requires_grad_(False)
    x, idx = digits.train.images[:6], digits.train.index[:6]
    run = lambda im, ix, seed=0: purify_images(net, im, ix, seed, steps=4)  # noqa: E731
    whole = run(x, idx)
    parts = {i: run(x[i:i + 2], idx[i:i + 2]) for i in (4, 0, 2)}  # other order, other size
    assert np.array_equal(whole, np.concatenate([parts[0], parts[2], parts[4]]))
    assert np.array_equal(whole, run(x[::-1], idx[::-1])[::-1])
    assert np.array_equal(whole, run(x, idx))
    assert not np.array_equal(whole, run(x, idx, seed=1))
    assert not np.array_equal(whole, x)
    assert np.array_equal(purify_images(net, x, idx, 0, steps=0), x)  # 0 steps: exact pixel round trip


def test_trained_ebm_prefers_clean_digits_to_noise(trained_dir, digits):
    net, info = load_energy(trained_dir)
    assert info["arch"] == "conv" and info["clean_images"] == len(json.loads((trained_dir / "clean_index.json")
                                                                             .read_text()))
    held_out = to_pm1(digits.test.images[:64])  # never seen in training
    uniform = torch.rand(held_out.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        e_clean, e_noise = net(held_out), net(uniform)
    ordered = (e_clean[:, None] < e_noise[None, :]).float().mean().item()  # AUC of "clean has lower energy"
    assert ordered > 0.8 and e_clean.mean() < e_noise.mean()
    untrained = build_energy("tiny")
    with torch.no_grad():  # the same check fails before training (the net's output is nearly constant)
        assert (untrained(held_out).mean() - untrained(uniform).mean()).abs() < (e_noise.mean() - e_clean.mean())


def test_langevin_on_the_trained_ebm_lowers_the_energy_of_noisy_digits(trained_dir, digits):
    net, _ = load_energy(trained_dir)
    x = to_pm1(digits.test.images[:8])
    noisy = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    out = langevin(net, noisy, 20, 1.25e-2, 1e-4, torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert net(out).mean() < net(noisy).mean()
    assert not torch.equal(out, noisy)


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    for preset in ("tiny", "paper"):
        net = build_energy(preset)
        save_energy(net, tmp_path / preset, {"arch": "conv" if preset == "tiny" else "resnet",
                                             "width": 8 if preset == "tiny" else 128, "image_shape": [32, 32, 3]})
        back, _ = load_energy(tmp_path / preset)
        a, b = net.state_dict(), back.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(net(x), back(x))
    with pytest.raises(ConfigError, match="no EBM there"):
        load_energy(tmp_path / "nope")


def test_training_resumes_exactly_after_an_interruption(digits, tmp_path):
    clean = digits.train.subset(np.arange(24))
    cfg = EBMTrainConfig(**QUICK, checkpoint_every=2)
    train_ebm(cfg, clean, tmp_path / "whole", progress=False)
    with killed_at(ebm_train, "learning_rate", 3):
        train_ebm(cfg, clean, tmp_path / "cut", progress=False)
    cut = tmp_path / "cut"
    assert (cut / "checkpoint" / "state.json").is_file() and not (cut / "config.json").exists()
    train_ebm(cfg, clean, tmp_path / "cut", progress=False)
    a, b = load_energy(tmp_path / "whole")[0].state_dict(), load_energy(tmp_path / "cut")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    fresh = build_energy("tiny").state_dict()
    assert not all(torch.allclose(a[k], fresh[k], rtol=1e-4, atol=1e-6) for k in a)
    assert train_ebm(cfg, clean, tmp_path / "cut", progress=False) == tmp_path / "cut"  # finished: a no-op
    with pytest.raises(ConfigError, match="other settings"):
        train_ebm(dataclasses.replace(cfg, lr=cfg.lr / 2), clean, tmp_path / "cut", progress=False)


def test_defense_keeps_samples_and_records_settings(trained_dir, digits):
    from eclipse_ray.attacks import ATTACKS

    data = ATTACKS.build("badnets").apply(digits)
    train = data.train.subset(np.arange(20))
    d = DEFENSES.build("puregen-ebm", {"model": str(trained_dir), "steps": "3", "batch_size": "7"})
    out = d.purify(train, seed=0, progress=False)
    check_same_samples(train, out, "puregen-ebm")
    assert np.array_equal(out.index, train.index) and np.array_equal(out.labels, train.labels)
    assert np.array_equal(out.poisoned, train.poisoned) and not np.array_equal(out.images, train.images)
    r = out.meta["resolved"]
    assert r["defense.model_calls"] == 3 and r["defense.ebm_arch"] == "conv"
    assert r["defense.langevin_sigma"] == pytest.approx(1.25e-2 / 2 * np.sqrt(3))
    assert np.array_equal(out.images, d.image_purifier(trained_dir, 0)(train.images, train.index))
    with pytest.raises(ConfigError, match="must be ≥ 0"):
        DEFENSES.build("puregen-ebm", {"steps": "-1"})


def test_auto_model_is_trained_once_and_reused(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("ECLIPSE_RAY_CACHE", str(tmp_path))
    d = DEFENSES.build("puregen-ebm", {"train_preset": "tiny", "train_iterations": "2", "train_batch_size": "4",
                                       "train_mcmc_steps": "2", "steps": "2", "device": "cpu"})
    train = digits.train
    first = Path(d.model_path(train, None, progress=False))
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(d.model_path(train, None, progress=False)) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # served from the cache
    idx = json.loads((first / "clean_index.json").read_text())
    assert abs(len(idx) - 0.04 * len(train)) <= 10 and not set(idx) & set(digits.test.index.tolist())


def test_purify_dataset_path_loads_the_ebm_once(trained_dir, digits, tmp_path, monkeypatch):
    from eclipse_ray.data import store
    from eclipse_ray.distributed import purify as dp
    from eclipse_ray.ebm import net as ebm_net

    small = {k: s.subset(np.arange(min(len(s), 24))) for k, s in digits.splits.items()}
    store.write_dataset(tmp_path / "ds", small, digits.meta, shard_rows=8)  # 3 train shards
    loads = []
    real = ebm_net.load_energy
    monkeypatch.setattr(ebm_net, "load_energy", lambda *a, **k: loads.append(a) or real(*a, **k))
    d = DEFENSES.build("puregen-ebm", {"model": str(trained_dir), "steps": "2"})
    r = dp.purify_dataset(tmp_path / "ds", d, tmp_path / "out", actors=0, batch_size=5, progress=False)
    assert r["units_computed"] == 3 and len(loads) == 1
    assert r["resolved"]["defense.model_calls"] == 2 and r["model_fingerprint"] != "none"
    out = store.read_split(tmp_path / "out", "train")
    assert np.array_equal(out.images, d.purify(small["train"], 0, progress=False).images)


def test_cli_train_ebm(tmp_path):
    from eclipse_ray.cli import main

    out = tmp_path / "m"
    args = ["train-ebm", "--dataset", "digits", "--out", str(out), "--quiet", "--set", "ebm.preset=tiny",
            "ebm.iterations=2", "ebm.batch_size=4", "ebm.mcmc_steps=2"]
    assert main(args) == 0
    assert load_energy(out)[1]["train"]["iterations"] == 2
    assert main(args) == 0  # finished already: a no-op
    assert main(args[:-1] + ["ebm.mcmc_steps=3"]) == 2  # a model made with other settings: refused
    assert main(["train-ebm", "--dataset", "digits", "--out", str(tmp_path / "x"), "--set", "train.lr=1"]) == 2
    assert main(["train-ebm", "--dataset", "digits", "--out", str(tmp_path / "y"),
                 "--set", "ebm.lr_milestones=0.5,2"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
