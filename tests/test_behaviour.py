"""End-to-end behaviour on digits with a small fast victim: poisons hurt, defenses help."""

from __future__ import annotations

import pytest

from eclipse_ray.trial import build_config, run_trial

from conftest import QUICK_VICTIM


def trial(attack: str, defense: str = "none", **extra: str) -> dict:
    cfg = build_config("digits", attack, defense, {**QUICK_VICTIM, **extra})
    return run_trial(cfg, progress=False, reference=False)


@pytest.fixture(scope="module")
def clean() -> dict:
    return trial("none")


def test_clean_victim_learns_digits(clean):
    assert clean["test_acc"] > 0.9


def test_lsp_lowers_accuracy_and_jpeg_wins_it_back(clean):
    poisoned = trial("lsp")
    defended = trial("lsp", "jpeg")
    assert poisoned["test_acc"] < clean["test_acc"] - 0.4
    assert defended["test_acc"] > poisoned["test_acc"] + 0.4
    assert defended["purify_psnr_poisoned"] > 20  # JPEG q10 keeps the digit


def test_badnets_reaches_high_asr_with_clean_accuracy_kept(clean):
    r = trial("badnets")
    assert r["asr"] > 0.85
    assert r["test_acc"] > clean["test_acc"] - 0.05
    assert r["poison_success"] == r["asr"]


def test_training_is_deterministic_under_a_seed():
    a, b = trial("urp", seed="3"), trial("urp", seed="3")
    assert a["test_acc"] == b["test_acc"]
