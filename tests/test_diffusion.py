"""Diffusion purification: the noise unit, the samplers' exact behaviour, batch independence, Ray Data."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from interrupt import killed_at
from eclipse_ray.config import ConfigError
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.diffusion.samplers import SamplerPlan, ddim_timesteps, purify_batch
from eclipse_ray.diffusion.schedule import Schedule
from eclipse_ray.diffusion.unet import build_unet, load_model, save_model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny UNet + cosine T=4000 scheduler in diffusers layout."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_model")
    save_model(build_unet("tiny"), DDPMScheduler(num_train_timesteps=4000, beta_schedule="squaredcos_cap_v2"),
               out, {"t_max": 4000})
    return out


@pytest.mark.parametrize("kind, T", [("cosine", 4000), ("linear", 1000)])
def test_sigma_t_conversion_matches_the_formula(kind, T):
    s = Schedule.make(kind, T)
    ab = s.alphas_cumprod
    for t in (1, 10, 50, 100, 150, 250):
        want = math.sqrt((1 - float(ab[t])) / float(ab[t])) / 2
        assert s.sigma(t) == pytest.approx(want, rel=1e-9)
        assert s.t_for_sigma(s.sigma(t)) == t  # smallest t reaching its own σ
        assert s.sigma(s.t_for_sigma(want * 0.999)) >= want * 0.999 > s.sigma(s.t_for_sigma(want * 0.999) - 1)
    assert s.t_for_sigma(0.0) == 0 and s.sigma(0) == 0.0


def test_reference_points_of_design():
    cos = Schedule.make("cosine", 4000)
    assert float(cos.alphas_cumprod[100]) == pytest.approx(0.9975, abs=1e-4)
    assert cos.sigma(100) * 255 == pytest.approx(6.4, abs=0.1)  # ECLIPSE's t* = 100
    assert cos.sigma(50) * 255 == pytest.approx(3.75, abs=0.3)
    assert cos.sigma(150) * 255 == pytest.approx(8.9, abs=0.3)
    assert Schedule.make("linear", 1000).sigma(100) * 255 == pytest.approx(41, abs=3)  # DESIGN: "≈ 41/255"; exactly 43.2
    with pytest.raises(ConfigError, match="must be ≥ 0"):
        cos.t_for_sigma(-0.1)
    with pytest.raises(ConfigError, match="must lie in 0..4000"):
        cos.sigma(4001)
    with pytest.raises(ConfigError, match="beyond this"):
        Schedule.make("linear", 10).t_for_sigma(50.0)


def run(model_dir, images, index, plan, seed=0, rng="generator"):
    m = load_model(model_dir)
    return purify_batch(m.unet, m.schedule.coefficients("cpu"), images, index, plan, seed, rng=rng)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "oneshot"])
def test_chain_from_t_zero_is_the_identity(tiny_model_dir, digits, sampler):
    x = digits.train.images[:4]
    out = run(tiny_model_dir, x, digits.train.index[:4], SamplerPlan(sampler, 0, steps=5))
    assert np.array_equal(out, x)


def test_oneshot_at_tiny_sigma_returns_nearly_the_input(tiny_model_dir, digits):
    x = digits.train.images[:8]
    out = run(tiny_model_dir, x, digits.train.index[:8], SamplerPlan("oneshot", 1))  # σ ≈ 0.001
    err = np.abs(out.astype(int) - x)
    assert err.mean() < 0.3 and err.max() <= 3  # even an untrained ε-net barely moves x at t = 1


@pytest.mark.parametrize("rng", ["generator", "philox"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "oneshot"])
def test_output_does_not_depend_on_batching(tiny_model_dir, digits, sampler, rng):
    x, idx = digits.train.images[:6], digits.train.index[:6]
    plan = SamplerPlan(sampler, 6, steps=3)
    whole = run(tiny_model_dir, x, idx, plan, rng=rng)
    parts = {i: run(tiny_model_dir, x[i:i + 2], idx[i:i + 2], plan, rng=rng) for i in (4, 0, 2)}  # other order, size
    assert np.array_equal(whole, np.concatenate([parts[0], parts[2], parts[4]]))
    shuffled = run(tiny_model_dir, x[::-1], idx[::-1], plan, rng=rng)
    assert np.array_equal(whole, shuffled[::-1])
    assert not np.array_equal(whole, run(tiny_model_dir, x, idx, plan, seed=1, rng=rng))


def test_the_noise_rng_and_compile_mode_are_settings_that_keep_earlier_addresses(tiny_model_dir, digits, monkeypatch):
    """``defense.rng=philox`` draws other noise (on the model's device); the default keeps every purified set's
    address; the compile mode reaches torch.compile, and one without compiling is refused before any work."""
    from eclipse_ray.data.cache import address_settings

    x, idx = digits.train.images[:4], digits.train.index[:4]
    plan = SamplerPlan("ddpm", 6)
    assert not np.array_equal(run(tiny_model_dir, x, idx, plan), run(tiny_model_dir, x, idx, plan, rng="philox"))
    base, philox = (DEFENSES.build("eclipse", {"model": str(tiny_model_dir), "t_star": "6", "batch_size": "4", **extra})
                    for extra in ({}, {"rng": "philox"}))
    assert "defense.rng" not in address_settings(base, "defense.")
    assert address_settings(philox, "defense.")["defense.rng"] == "philox"
    out = philox.image_purifier(tiny_model_dir, 0)(x, idx)
    assert out.shape == x.shape and out.dtype == np.uint8 and not np.array_equal(
        out, base.image_purifier(tiny_model_dir, 0)(x, idx))
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    for mode in ("default", "reduce-overhead"):
        DEFENSES.build("eclipse", {"model": str(tiny_model_dir), "compile": "true", "compile_mode": mode}
                       ).image_purifier(tiny_model_dir, 0)
    assert [(c["dynamic"], c["options"].get("triton.cudagraphs", False)) for c in calls] == [(True, False),
                                                                                             (False, True)]
    if hasattr(torch._inductor.config, "deterministic"):  # torch ≥ 2.10
        assert all(c["options"]["deterministic"] for c in calls)  # no kernel chosen by timing: same bytes anywhere
    with pytest.raises(ConfigError, match="max-autotune"):
        DEFENSES.build("eclipse", {"compile": "true", "compile_mode": "max-autotune"})
    with pytest.raises(ConfigError, match="compile_mode=reduce-overhead needs defense.compile=true"):
        DEFENSES.build("eclipse", {"compile_mode": "reduce-overhead"})
    with pytest.raises(ConfigError, match="rng"):
        DEFENSES.build("eclipse", {"rng": "mt19937"})


def test_ddim_timesteps():
    assert ddim_timesteps(100, 4) == [100, 75, 50, 25]
    assert ddim_timesteps(3, 10) == [3, 2, 1]
    assert SamplerPlan("ddpm", 100).model_calls() == 100
    assert SamplerPlan("ddim", 100, steps=10, repeats=2).model_calls() == 20


def test_defense_resolves_sigma_and_t_star(tiny_model_dir, digits):
    m = load_model(tiny_model_dir)
    eclipse = DEFENSES.build("eclipse", {"model": str(tiny_model_dir)})
    r = eclipse.resolved(m)
    assert r["defense.t_star"] == 100 and r["defense.sigma"] * 255 == pytest.approx(6.4, abs=0.1)
    assert DEFENSES.build("denoise", {"t_star": "40"}).resolved(m)["defense.t_star"] == 40
    with pytest.raises(ConfigError, match="not both"):
        DEFENSES.build("denoise", {"t_star": "40", "sigma": "0.1"})
    with pytest.raises(ConfigError, match="must lie in 0..4000"):
        DEFENSES.build("denoise", {"t_star": "5000"}).plan(m)
    with pytest.raises(ConfigError, match="no diffusion model there"):
        DEFENSES.build("denoise", {"model": str(tiny_model_dir / "nope")}).purify(digits.train, 0)
    out = DEFENSES.build("eclipse", {"model": str(tiny_model_dir), "sampler": "ddim", "steps": "2"}).purify(
        digits.train.subset(np.arange(5)), 0, progress=False)
    assert out.meta["resolved"]["defense.model_calls"] == 2


def test_auto_model_uses_the_same_clean_set_whatever_the_attack(digits, tmp_path, monkeypatch):
    from eclipse_ray.attacks import ATTACKS
    from eclipse_ray.data.imageset import clean_view

    monkeypatch.setenv("ECLIPSE_RAY_CACHE", str(tmp_path))
    d = DEFENSES.build("denoise", {"train_iterations": "1", "train_batch_size": "2"})
    dirs = set()
    for attack in ("badnets", "lsp"):  # dirty labels must not change which images the defender holds
        data = ATTACKS.build(attack).apply(digits)
        dirs.add(d.model_path(data.train, clean_view(data.train, data.splits.get("originals")), progress=False))
    assert len(dirs) == 1
    import json

    idx = json.loads((Path(dirs.pop()) / "clean_index.json").read_text())
    assert abs(len(idx) - 0.04 * len(digits.train)) <= 10 and not set(idx) & set(digits.test.index.tolist())


@pytest.mark.slow
def test_ddpm_training_resumes_exactly_after_an_interruption(digits, tmp_path):
    from eclipse_ray.diffusion import train as ddpm_train

    clean = digits.train.subset(np.arange(16))
    cfg = ddpm_train.DiffusionTrainConfig(iterations=4, batch_size=4, checkpoint_every=2, duplicates=1)
    ddpm_train.train_diffusion(cfg, clean, tmp_path / "whole", progress=False)
    with killed_at(ddpm_train, "_lr", 3):
        ddpm_train.train_diffusion(cfg, clean, tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / "checkpoint" / "state.json").is_file()
    ddpm_train.train_diffusion(cfg, clean, tmp_path / "cut", progress=False)
    a, b = (load_model(tmp_path / d).unet.state_dict() for d in ("whole", "cut"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)  # same batches after the resume
    with pytest.raises(ConfigError, match="other settings"):
        other = tmp_path / "other"
        with killed_at(ddpm_train, "_lr", 3):
            ddpm_train.train_diffusion(cfg, clean, other, progress=False)
        ddpm_train.train_diffusion(dataclasses.replace(cfg, lr=cfg.lr * 2), clean, other, progress=False)
