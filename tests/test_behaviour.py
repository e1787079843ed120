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


@pytest.mark.slow
def test_clean_victim_learns_digits(clean):
    assert clean["test_acc"] > 0.9


@pytest.mark.slow
def test_lsp_lowers_accuracy_and_jpeg_wins_it_back(clean):
    poisoned = trial("lsp")
    defended = trial("lsp", "jpeg")
    assert poisoned["test_acc"] < clean["test_acc"] - 0.4
    assert defended["test_acc"] > poisoned["test_acc"] + 0.4
    assert defended["purify_psnr_poisoned"] > 20  # JPEG q10 keeps the digit


@pytest.mark.slow
def test_badnets_reaches_high_asr_with_clean_accuracy_kept(clean):
    r = trial("badnets")
    assert r["asr"] > 0.85
    assert r["test_acc"] > clean["test_acc"] - 0.05
    assert r["poison_success"] == r["asr"]


@pytest.mark.slow
def test_training_is_deterministic_under_a_seed():
    a, b = trial("urp", seed="3"), trial("urp", seed="3")
    assert a["test_acc"] == b["test_acc"]


@pytest.mark.slow
def test_victim_trained_on_grayscale_reads_colour_test_images(digits):
    """ISS-G trains on grey images and tests on colour ones: the whitened stem must ignore the colour
    directions it never saw (it used to amplify them and the victim fell to chance)."""
    import numpy as np
    import torch

    from eclipse_ray.defenses import DEFENSES
    from eclipse_ray.victim.nets import FastNet
    from eclipse_ray.victim.train import VictimConfig, train_victim

    rng = np.random.default_rng(0)

    def tint(images: np.ndarray) -> np.ndarray:  # each digit drawn in a random colour
        colour = rng.uniform(0.3, 1.0, size=(len(images), 1, 1, 3))
        return np.round(images * colour).astype(np.uint8)

    train, test = digits.train.with_images(tint(digits.train.images)), tint(digits.test.images)
    grey = DEFENSES.build("gray").purify(train, 0, progress=False)
    victim = train_victim(VictimConfig(epochs=5, width=16), grey.images, grey.labels, grey.num_classes, 0,
                          progress=False)
    assert (victim.predict(test) == digits.test.labels).mean() > 0.8
    net = FastNet(10, width=16)
    x = torch.from_numpy(grey.images[:64]).permute(0, 3, 1, 2).float() / 255
    net.init_whitening(x)
    colour_only = torch.zeros(1, 3, 2, 2)
    colour_only[:, 0], colour_only[:, 1] = 1.0, -1.0  # red minus green: no grey component
    assert net.whiten(colour_only).abs().max() < 1e-3


@pytest.mark.parametrize("arch", ["fast", "resnet18"])
def test_channels_last_nets_compute_what_contiguous_ones_do(arch):
    """build_net hands out channels-last weights (faster on CPU); the layout must not change the function."""
    import copy

    import torch

    from eclipse_ray.victim.nets import build_net

    torch.manual_seed(0)
    net = build_net(arch, 10, 8).eval()
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-4)


def test_a_bf16_victim_trains_and_predicts_under_autocast(monkeypatch):
    """victim.precision=bf16: the forward passes (training and prediction) run under bfloat16 autocast, the
    weights stay fp32, and the victim learns digits as well as the fp32 one."""
    import torch

    from eclipse_ray.data.sources import load_dataset
    from eclipse_ray.victim.train import VictimConfig, train_victim

    seen = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        seen.append((dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    d = load_dataset("digits")
    accs = {}
    for precision in ("fp32", "bf16"):
        seen.clear()
        v = train_victim(VictimConfig(epochs=3, width=16, precision=precision), d.train.images, d.train.labels,
                         d.train.num_classes, 0, progress=False)
        logits = v.logits(d.test.images)
        assert logits.dtype == torch.float32 and all(p.dtype == torch.float32 for p in v.model.parameters())
        assert seen and {e for _, e in seen} == {precision == "bf16"} and {t for t, _ in seen} == {torch.bfloat16}
        accs[precision] = float((logits.argmax(1).numpy() == d.test.labels).mean())
    assert accs["bf16"] > 0.85 and abs(accs["bf16"] - accs["fp32"]) < 0.05


def test_adversarial_training_attacks_a_bf16_victim_under_its_autocast(monkeypatch):
    """The training-time adversary (adversarial training) sees the net as it trains: its forward passes
    under the victim's bfloat16 autocast, with fp32 logits."""
    import torch

    from eclipse_ray.data.sources import load_dataset
    from eclipse_ray.victim.train import VictimConfig, train_victim

    entered, calls = [], []
    real = torch.autocast

    def recording(device_type, dtype=None, enabled=True, **kw):
        entered.append((dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    def adversary(forward, x, y, gen):
        before = len(entered)
        calls.append((forward(x).dtype, entered[before:]))
        return x

    monkeypatch.setattr(torch, "autocast", recording)
    d = load_dataset("digits")
    train_victim(VictimConfig(epochs=1, width=16, batch_size=64, precision="bf16"), d.train.images[:128],
                 d.train.labels[:128], d.train.num_classes, 0, adversary=adversary, progress=False)
    assert calls == [(torch.float32, [(torch.bfloat16, True)])] * 2
