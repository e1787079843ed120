"""airbench94's net and recipe (victim.arch=airbench): schedule, test-time augmentation, lookahead, parameter
groups, the net's initialisation, and that it learns grayscale images (where identity filters on dead stem
channels used to send it to chance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from eclipse_ray.trial import build_config
from eclipse_ray.victim.nets import AirbenchNet, build_net
from eclipse_ray.victim.train import Lookahead, VictimConfig, _lr_at, param_groups, train_victim, tta_logits


def test_the_recipe_fills_airbenchs_hyperparameters_and_scales_its_lr_with_the_batch():
    cfg = VictimConfig(arch="airbench").resolved()
    assert (cfg.width, cfg.batch_size, cfg.momentum, cfg.schedule, cfg.tta, cfg.lookahead) == (
        64, 1024, 0.85, "triangle", 2, True)
    assert cfg.lr == pytest.approx(1.5, rel=1e-12)
    assert cfg.lr * cfg.weight_decay == pytest.approx(0.0153 * 1024 / (1024 * (1 + 1 / 0.15)), rel=1e-12)
    assert VictimConfig(arch="airbench", batch_size=256).resolved().lr == pytest.approx(0.375)
    assert VictimConfig(arch="airbench", momentum=0.9).resolved().lr == pytest.approx(11.5 / 11)  # kilostep scale
    assert VictimConfig(arch="airbench", lr=0.5).resolved().lr == 0.5
    fast = VictimConfig().resolved()  # the other recipes leave the new settings unset (off)
    assert (fast.width, fast.batch_size, fast.momentum, fast.tta, fast.lookahead, fast.bias_lr_scale) == (
        32, 128, 0.9, None, None, None)


def test_settings_added_for_airbench_keep_the_hashes_and_addresses_of_earlier_trials():
    """The default victim and a bf16 one (a setting of the generation before) keep their hash of the
    version before as one of theirs (pinned), and an airbench trial has none of theirs."""
    from eclipse_ray.config import flatten
    from eclipse_ray.data.cache import address_settings

    base = build_config("digits", "lsp", "jpeg", {"victim.epochs": "2"})
    bf16 = build_config("digits", "lsp", "jpeg", {"victim.epochs": "2", "victim.precision": "bf16"})
    assert {"8f4c43481fc6b136", "c432326ca6f02d6f"} <= set(base.hashes())  # pinned: the version before
    assert "3357698bc88a67de" in bf16.hashes()
    earlier = {k: v for k, v in flatten(bf16.victim.resolved(), "victim.").items()
               if k not in {f"victim.{n}" for n in ("bias_lr_scale", "bias_decay", "lookahead", "tta",
                                                   "whiten_bias_epochs", "transfer", "pretrain_epochs",
                                                   "finetune_per_class")}}
    assert address_settings(bf16.victim.resolved(), "victim.") == earlier
    airbench = build_config("digits", "lsp", "jpeg", {"victim.arch": "airbench", "victim.tta": "0"})
    assert len(airbench.hashes()) == 2  # its own and the one before victim.transfer, none older
    assert flatten(airbench.victim.resolved(), "victim.")["victim.tta"] == 0


def test_the_triangle_schedule_rises_from_a_fifth_to_its_peak_at_23_percent_and_ends_at_7_percent():
    cfg = VictimConfig(arch="airbench").resolved()
    lr = [_lr_at(s, 100, cfg) / cfg.lr for s in (0, 23, 100)]
    assert lr == pytest.approx([0.2, 1.0, 0.07])
    assert _lr_at(11, 100, cfg) / cfg.lr == pytest.approx(0.2 + 0.8 * 11 / 23)


def test_test_time_augmentation_averages_mirrors_and_one_pixel_shifts():
    """Pinned on a 3x3 image with a model that reads the top-left pixel: level 1 averages it with the
    top-right one (the mirror's top-left); level 2 adds the reflect-padded shifts up-left and down-right."""
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    model = lambda z: z[:, :, 0, 0]  # noqa: E731
    assert tta_logits(model, x, 0).item() == 0.0
    assert tta_logits(model, x, 1).item() == 1.0
    assert tta_logits(model, x, 2).item() == 2.5
    const = torch.full((2, 3, 4, 4), 0.7)
    torch.testing.assert_close(tta_logits(lambda z: z.mean((2, 3)), const, 2), const.mean((2, 3)))


def test_lookahead_pulls_the_weights_toward_their_ema_every_fifth_step_and_ends_on_it():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    la = Lookahead(net, total=10)
    with torch.no_grad():
        net.weight.fill_(3.0)
    la.step(4)
    assert net.weight.item() == 3.0  # not a fifth step
    la.step(5)  # decay 0.95^5 · (5/10)^3
    decay = 0.95 ** 5 * 0.125
    assert net.weight.item() == pytest.approx(decay * 1.0 + (1 - decay) * 3.0)
    with torch.no_grad():
        net.weight.fill_(10.0)
    la.finish()
    assert net.weight.item() == pytest.approx(decay * 1.0 + (1 - decay) * 3.0)


def test_batchnorm_parameters_learn_64_times_faster_and_every_step_decays_alike():
    net = build_net("airbench", 10, 16)
    groups = param_groups(net, VictimConfig(arch="airbench").resolved())
    wd = 0.0153 / 11.5
    weights, norms, others = groups
    assert (weights["lr_scale"], weights["weight_decay"]) == (1.0, wd)
    assert (norms["lr_scale"], norms["weight_decay"]) == (64.0, wd / 64)
    assert others["params"] == [net.whiten.bias] and others["weight_decay"] == wd
    assert all(not m.weight.requires_grad for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    fast = param_groups(build_net("fast", 10, 16), VictimConfig().resolved())
    assert [(g["lr_scale"], g["weight_decay"]) for g in fast] == [(1.0, 5e-4), (1.0, 0.0), (1.0, 0.0)]


def test_the_first_layer_passes_live_stem_channels_through_and_gives_dead_ones_random_filters():
    torch.manual_seed(0)
    colour = torch.rand(64, 3, 8, 8)
    grey = colour.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    for x, dead in ((colour, 0), (grey, 16)):
        net = AirbenchNet(10, width=32)
        net.init_whitening(x)
        w = net.layers[0].conv1.weight
        dirac = torch.zeros_like(w[:24])
        nn.init.dirac_(dirac)
        identity = [bool((w[i] == dirac[i]).all()) for i in range(24)]
        assert identity.count(False) == dead  # 8 colour directions, each as ±: 16 dead stem channels
        assert all(identity[i] == bool(net.whiten.weight[i].abs().amax() > 0) for i in range(24))


@pytest.mark.slow
def test_airbench_learns_grayscale_digits_and_the_run_repeats_under_its_seed(digits):
    cfg = VictimConfig(arch="airbench", width=16, epochs=4, batch_size=128)
    victim = train_victim(cfg, digits.train.images, digits.train.labels, 10, 0, progress=False)
    pred = victim.predict(digits.test.images)
    assert (pred == digits.test.labels).mean() > 0.8 and victim.tta == 2
    again = train_victim(cfg, digits.train.images, digits.train.labels, 10, 0, progress=False)
    assert np.array_equal(again.predict(digits.test.images), pred)
