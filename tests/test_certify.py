"""Certified diffusion denoising: Clopper–Pearson/radius maths, Cohen's CERTIFY, the run and its resume."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from eclipse_ray.certify import run as certify_run
from eclipse_ray.certify.run import CertifyConfig, build_job, run_certify
from eclipse_ray.certify.stats import (ABSTAIN, certified_accuracy, certify, clopper_pearson_lower, max_radius,
                                       poisons_covered, radius, vote_counts)
from eclipse_ray.config import ConfigError
from eclipse_ray.data import sources
from eclipse_ray.data.sources import Dataset


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Bin(n, p), summed exactly."""
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))


def cp_lower_by_bisection(k: int, n: int, alpha: float) -> float:
    """The Clopper–Pearson lower bound by its definition: the p with P(X ≥ k | p) = α."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binomial_upper_tail(k, n, mid) < alpha else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("n", [1, 10, 20, 100])
def test_all_votes_agree_gives_alpha_to_the_one_over_n(n):
    assert clopper_pearson_lower(n, n, 0.001) == pytest.approx(0.001 ** (1 / n), rel=1e-10)
    assert max_radius(n, 0.001, 0.25) == pytest.approx(
        0.25 * NormalDist().inv_cdf(0.001 ** (1 / n)) if 0.001 ** (1 / n) >= 0.5 else float("nan"), nan_ok=True)


@pytest.mark.parametrize("k, n, alpha", [(7, 10, 0.05), (15, 20, 0.001), (95, 100, 0.001), (1, 5, 0.1)])
def test_clopper_pearson_matches_the_binomial_tail_definition(k, n, alpha):
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(cp_lower_by_bisection(k, n, alpha), abs=1e-9)
    assert clopper_pearson_lower(0, n, alpha) == 0.0
    # a lower bound: below the point estimate, and larger with more agreeing votes
    assert clopper_pearson_lower(k, n, alpha) < k / n
    assert clopper_pearson_lower(k - 1, n, alpha) < clopper_pearson_lower(k, n, alpha) if k > 1 else True


def test_radius_and_abstention():
    p = np.array([0.3, 0.4999, 0.5, 0.8413447460685429, 0.99])
    r = radius(p, sigma=0.1)
    assert np.isnan(r[:2]).all()  # abstain below 0.5
    assert r[2] == pytest.approx(0.0, abs=1e-12)
    assert r[3] == pytest.approx(0.1, rel=1e-9)  # Φ⁻¹(0.8413…) = 1
    assert r[4] == pytest.approx(0.1 * NormalDist().inv_cdf(0.99), rel=1e-9)


def test_certify_follows_cohens_protocol():
    # 25 models, 5 inputs, labels 0..4; α = 0.001, σ = 0.5
    preds = np.zeros((25, 5), dtype=np.int64)
    preds[:, 0] = 0                      # unanimous → certified, largest radius
    preds[:, 1] = [1] * 23 + [2] * 2     # 18 of the 20 estimation votes
    preds[:, 2] = [2] * 13 + [3] * 12    # split vote → abstain
    preds[:, 3] = [4] * 5 + [3] * 20     # selection (first 5) picks 4, estimation disagrees → abstain
    preds[:, 4] = [0] * 25               # confident but wrong (label 4)
    cert = certify(preds, num_classes=5, sigma=0.5, alpha=0.001, selection_models=5)
    assert cert.n == 20
    assert list(cert.selected) == [0, 1, 2, 4, 0]
    assert list(cert.count) == [20, 18, 8, 0, 20]
    assert list(cert.prediction) == [0, 1, ABSTAIN, ABSTAIN, 0]
    assert cert.p_lower[0] == pytest.approx(0.001 ** (1 / 20))
    assert cert.radius[0] == pytest.approx(0.5 * NormalDist().inv_cdf(0.001 ** (1 / 20)))
    assert cert.p_lower[1] == pytest.approx(cp_lower_by_bisection(18, 20, 0.001), abs=1e-9)
    # without a split the same votes select and estimate
    shared = certify(preds, num_classes=5, sigma=0.5, alpha=0.001, selection_models=0)
    assert shared.n == 25 and shared.selected[3] == 3 and shared.count[3] == 20
    labels = np.arange(5)
    acc = certified_accuracy(labels, cert.prediction, cert.radius, [0.0, cert.radius[1], cert.radius[0], 10.0])
    assert list(acc) == [0.4, 0.4, 0.2, 0.0]


def test_certified_accuracy_never_rises_with_radius():
    rng = np.random.default_rng(0)
    preds = rng.choice(4, size=(60, 200), p=[0.7, 0.1, 0.1, 0.1])
    preds[:, ::3] = rng.integers(0, 4, size=preds[:, ::3].shape)
    labels = rng.choice(4, size=200, p=[0.8, 0.1, 0.05, 0.05])
    cert = certify(preds, 4, sigma=0.25, alpha=0.001, selection_models=6)
    at = np.linspace(0, 0.6, 61)
    acc = certified_accuracy(labels, cert.prediction, cert.radius, at)
    assert np.all(np.diff(acc) <= 0) and acc[0] > acc[-1]
    assert acc[0] == pytest.approx(((cert.prediction == labels) & (cert.prediction != ABSTAIN)).mean())


def test_votes_and_poison_counts():
    counts = vote_counts(np.array([[0, 2], [0, 1], [1, 1]]), 3)
    assert counts.tolist() == [[2, 1, 0], [0, 2, 1]]
    with pytest.raises(ValueError):
        vote_counts(np.array([[0, 3]]), 3)
    eps = 8 / 255 * math.sqrt(3072)
    assert poisons_covered(np.array([0.0, eps, 3 * eps, 2.99 * eps, np.nan]), eps).tolist() == [0, 1, 9, 8, 0]


def test_bad_settings_are_config_errors(tmp_path):
    from eclipse_ray.cli import main

    with pytest.raises(ConfigError, match="certify nothing"):
        CertifyConfig(models=5, selection_models=1)  # 4 votes at α=0.001 cannot reach p ≥ 0.5
    with pytest.raises(ConfigError, match="selection_models"):
        CertifyConfig(models=20, selection_models=20)
    with pytest.raises(ConfigError, match="certify.sigma"):
        build_job("digits", "none", {"defense.sigma": "0.2"})
    with pytest.raises(ConfigError, match="unknown setting"):
        build_job("digits", "none", {"seed": "1"})
    assert build_job("digits", "none", {"certify.sigma": "0.25"}).denoiser.sigma == 0.25
    out = tmp_path / "out"
    assert main(["certify", "--dataset", "digits", "--out", str(out), "--set", "certify.alpha=2"]) == 2
    assert not out.exists()


@pytest.fixture()
def small_digits(digits):
    """64 training and 40 test digits: enough to run the whole pipeline in seconds."""
    return Dataset("digits", {"train": digits.train.subset(np.arange(64)), "test": digits.test.subset(np.arange(40))},
                   dict(digits.meta))


TINY = {"certify.models": "3", "certify.selection_models": "0", "certify.alpha": "0.2", "victim.epochs": "1",
        "victim.width": "16", "defense.train.iterations": "1", "defense.train.batch_size": "2",
        "defense.train.clean_fraction": "0.5"}


@pytest.mark.slow
def test_tiny_certify_writes_outputs_and_resumes_without_retraining(small_digits, tmp_path, monkeypatch):
    import eclipse_ray.defenses.diffusion as diffusion_defense

    monkeypatch.setenv("ECLIPSE_RAY_CACHE", str(tmp_path / "cache"))
    trainings = []
    real_train = diffusion_defense.train_diffusion  # what the denoiser's auto model is trained with
    monkeypatch.setattr(diffusion_defense, "train_diffusion",
                        lambda *a, **k: trainings.append(1) or real_train(*a, **k))
    out = tmp_path / "certify"
    job = build_job("digits", "none", TINY)
    s = run_certify(job, out, data=small_digits, use_ray=False, progress=False)
    assert (s["models_trained"], s["models_reused"]) == (3, 0)
    for name in ("radii.parquet", "certified_accuracy.csv", "certified_accuracy.md", "certified_accuracy.png",
                 "certify.json"):
        assert (out / name).is_file(), name
    df = pd.read_parquet(out / "radii.parquet")
    assert len(df) == 40 and list(df["index"]) == list(small_digits.test.index)
    assert {"label", "prediction", "count", "p_lower", "radius"} <= set(df.columns)
    assert (df["count"] <= 3).all() and ((df["radius"].isna()) == (df["prediction"] == ABSTAIN)).all()
    table = pd.read_csv(out / "certified_accuracy.csv")
    assert np.all(np.diff(table["certified_accuracy"]) <= 0)
    # σ actually applied (first schedule step at or above the request) is what the radius uses
    assert s["certify.sigma_resolved"] >= 0.1 and s["defense.t_star"] > 0
    assert json.loads((out / "certify.json").read_text())["models_trained"] == 3
    assert len(trainings) == 1  # the auto denoiser: trained once, before the models, not once per model

    def no_training(*args, **kwargs):
        raise AssertionError("a finished model was retrained")

    monkeypatch.setattr(certify_run, "train_one", no_training)
    again = run_certify(job, out, data=small_digits, use_ray=False, progress=False)
    assert (again["models_trained"], again["models_reused"]) == (0, 3) and len(trainings) == 1
    assert pd.read_parquet(out / "radii.parquet").equals(df)

    # more models: only the new one is trained (with its own seed), the first three are reused
    asked = []

    def fake(m, seed, denoiser, victim, train, test_images):
        asked.append((m, certify_run.model_seeds(seed, m)))
        return {"pred": np.zeros(len(test_images), np.int16), "purify_seconds": 0.0, "train_seconds": 0.0}

    monkeypatch.setattr(certify_run, "train_one", fake)
    more = run_certify(build_job("digits", "none", {**TINY, "certify.models": "4"}), out, data=small_digits,
                       use_ray=False, progress=False)
    assert [m for m, _ in asked] == [3] and (more["models_trained"], more["models_reused"]) == (1, 3)
    assert len({certify_run.model_seeds(0, m) for m in range(4)}) == 4


@pytest.mark.slow
def test_certify_over_ray_matches_in_process(small_digits, tmp_path, monkeypatch):
    """The models as Ray tasks (the default) give the certificates the in-process run gives."""
    import ray

    monkeypatch.setenv("ECLIPSE_RAY_CACHE", str(tmp_path / "cache"))
    job = build_job("digits", "none", TINY)
    local = run_certify(job, tmp_path / "local", data=small_digits, use_ray=False, progress=False)
    ray.shutdown()
    try:
        remote = run_certify(job, tmp_path / "ray", data=small_digits, use_ray=True, progress=False)
    finally:
        ray.shutdown()
    assert (local["models_trained"], remote["models_trained"]) == (3, 3)
    a, b = (pd.read_parquet(tmp_path / d / "radii.parquet") for d in ("local", "ray"))
    assert len(a) == len(b) == 40 and a.equals(b)


def test_a_certification_models_key_survives_the_settings_and_names_added_since():
    """Each certified model is cached by what its predictions depend on; a victim setting added later
    (``victim.precision``, then the airbench settings; ``defense.rng``) leaves the key of a job that keeps its default as it was, and changes it otherwise;
    the named subset has the key it had when read by path."""
    import dataclasses

    from eclipse_ray.config import config_hash, flatten

    job = build_job("digits", "none", {"victim.epochs": "2"})
    before = {"format": certify_run.FORMAT, "dataset": "digits", **flatten(job.attack, "attack."),
              **{k: v for k, v in flatten(dataclasses.replace(job.denoiser, model="m"), "defense.").items()
                 if k not in {"defense.rng", "defense.compile_mode"}},
              **{k: v for k, v in flatten(job.victim.resolved(), "victim.").items()
                 if k not in {"victim.precision", "victim.bias_lr_scale", "victim.bias_decay", "victim.lookahead",
                              "victim.tta", "victim.whiten_bias_epochs", "victim.transfer", "victim.pretrain_epochs",
                              "victim.finetune_per_class"}},
              "certify.seed": job.certify.seed}
    for k in ("defense.batch_size", "defense.device", "defense.compile", "victim.device"):
        before.pop(k, None)
    assert certify_run.model_key(job, "m") == config_hash(before)
    bf16 = build_job("digits", "none", {"victim.epochs": "2", "victim.precision": "bf16"})
    assert certify_run.model_key(bf16, "m") != certify_run.model_key(job, "m")
    philox = build_job("digits", "none", {"victim.epochs": "2", "defense.rng": "philox"})
    assert certify_run.model_key(philox, "m") != certify_run.model_key(job, "m")  # other noise, other model
    named, by_path = (build_job(ds, "none", {"victim.epochs": "2"})
                      for ds in ("cifar10-subset", "npz:/work/shared/data/cifar10_subset.npz"))
    published = sources.SHIPPED_SHA256["cifar10-subset"]  # that path, pinned to the published file's content
    assert certify_run.model_key(named, "m") == certify_run.model_key(by_path, "m", published)
