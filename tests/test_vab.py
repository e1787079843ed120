"""V&B (training-time defense): AttentionMix on hand-made maps, the Victim's split, the trial row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eclipse_ray.attacks import ATTACKS
from eclipse_ray.config import ConfigError
from eclipse_ray.data.sources import Dataset
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.defenses.vab import (PseudoLabeller, VaB, bn_stats_frozen, flag, recalibrate_bn,
                                     smooth_and_normalise, split_quality, train_vab)
from eclipse_ray.trial import build_config, run_trial
from eclipse_ray.victim.attention_mix import attention_mix, feature_attention, mix_weights
from eclipse_ray.victim.metrics import any_class_asr, attack_success_rate
from eclipse_ray.victim.nets import build_net
from eclipse_ray.victim.train import VictimConfig


def _maps() -> torch.Tensor:
    """Two 1-channel 2x2 feature maps: A lights the top-left cell, B the top-left and bottom-right cells."""
    return torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]], [[[1.0, 0.0], [0.0, 1.0]]]])


def test_feature_attention_is_upsampled_min_max_of_squared_channel_sum():
    feats = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]])  # 2 channels
    att = feature_attention(feats, 4)
    assert att.shape == (1, 1, 4, 4)
    # channel sum of squares: [[2, 4], [0, 0]] -> min-max [[0.5, 1], [0, 0]], each cell a 2x2 block
    expected = torch.tensor([[0.5, 1.0], [0.0, 0.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.allclose(att[0, 0], expected)


def test_attention_mix_weights_images_and_labels_by_attention_mass():
    att = feature_attention(_maps(), 4)
    x = torch.stack([torch.full((3, 4, 4), 1.0), torch.full((3, 4, 4), 0.0)])
    y = torch.eye(2)
    perm = torch.tensor([1, 0])
    mask, own, partner = mix_weights(att, perm, 0.1)
    # A: all its attention lies in its mask (top-left block); B has half of its attention there.
    assert torch.allclose(own, torch.tensor([1.0, 1.0])) and torch.allclose(partner, torch.tensor([0.5, 1.0]))
    mixed, targets, region = attention_mix(x, att, y, perm, 0.1)
    # A keeps 1/(1+0.5) = 2/3 of its masked block, the rest is B; outside the mask it is untouched.
    assert torch.allclose(mixed[0, :, :2, :2], torch.full((3, 2, 2), 2 / 3))
    assert torch.equal(mixed[0, :, 2:, :], x[0, :, 2:, :]) and torch.equal(mixed[0, :, :2, 2:], x[0, :, :2, 2:])
    # B's mask (two blocks) is split half and half with A.
    assert torch.allclose(mixed[1, :, :2, :2], torch.full((3, 2, 2), 0.5))
    assert torch.allclose(mixed[1, :, 2:, 2:], torch.full((3, 2, 2), 0.5))
    assert torch.equal(mixed[1, :, :2, 2:], x[1, :, :2, 2:])
    # labels: partner gets w * w_p / (w + w_p): A -> 1/3 of B, B -> 1/2 of A.
    assert torch.allclose(targets, torch.tensor([[2 / 3, 1 / 3], [1 / 2, 1 / 2]]))
    assert torch.allclose(targets.sum(1), torch.ones(2))
    assert region == pytest.approx((4 + 8) / 2 / 16)


def test_attention_mix_keeps_label_mass_outside_the_mask_and_sums_to_one():
    gen = torch.Generator().manual_seed(0)
    feats = torch.rand(16, 8, 4, 4, generator=gen) ** 3  # peaked maps: part of the mass below the threshold
    att = feature_attention(feats, 8)
    y = F.one_hot(torch.arange(16) % 10, 10).float()
    perm = torch.randperm(16, generator=gen)
    mixed, targets, _ = attention_mix(torch.rand(16, 3, 8, 8, generator=gen), att, y, perm, 0.1)
    assert torch.allclose(targets.sum(1), torch.ones(16), atol=1e-6)
    mask, own, partner = mix_weights(att, perm, 0.1)
    assert (own < 1).any() and (own > 0).all()
    own_label = targets[torch.arange(16), torch.arange(16) % 10]
    same = (perm % 10) == (torch.arange(16) % 10)
    # the sample's own label never drops below the attention mass outside its mask
    assert (own_label[~same] >= 1 - own[~same] - 1e-6).all()
    assert torch.allclose(own_label[~same], 1 - own[~same] * partner[~same] / (own[~same] + partner[~same]))
    # threshold 1.01: empty masks, nothing is mixed
    same_x, same_t, region = attention_mix(torch.ones(16, 3, 8, 8), att, y, perm, 1.01)
    assert torch.equal(same_x, torch.ones(16, 3, 8, 8)) and torch.allclose(same_t, y) and region == 0


def test_nets_expose_last_stage_features():
    x = torch.rand(2, 3, 16, 16)
    for arch in ("fast", "resnet18"):
        net = build_net(arch, 10, 16).eval()
        f = net.features(x)
        assert f.ndim == 4 and f.shape[2] < 16
        assert torch.allclose(net.classify(f), net(x))


def test_entropy_smoothing_and_split_quality():
    score, carried = smooth_and_normalise(np.array([1.0, 3.0, 2.0]), np.array([3.0, 3.0, 3.0]), 0.75)
    assert np.allclose(carried, [1.5, 3.0, 2.25]) and np.allclose(score, [0.0, 1.0, 0.5])
    score = np.array([0.15, 0.05, 0.5, 0.1, 0.19])
    assert flag(score, 0.2).tolist() == [True, True, False, True, True]
    assert flag(score, 0.2, cap=2).tolist() == [False, True, False, True, False]  # the two lowest scores
    assert flag(score, 0.2, cap=9).tolist() == flag(score, 0.2).tolist()
    q = split_quality(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool), "x_")
    assert q == {"x_suspicious": 0.5, "x_precision": 0.5, "x_recall": 0.5}


def _bn_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.4))


def test_attention_pass_leaves_running_statistics_alone():
    net = _bn_net().train()
    bn = net[1]
    before = (bn.running_mean.clone(), bn.running_var.clone())
    with bn_stats_frozen(net):
        net(torch.rand(8, 3, 6, 6) * 5 + 3)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert bn.momentum == 0.4
    net(torch.rand(8, 3, 6, 6) * 5 + 3)  # outside the context the statistics move again
    assert not torch.equal(bn.running_mean, before[0])


def test_recalibrated_statistics_are_the_plain_average_over_the_data():
    torch.manual_seed(0)
    net = _bn_net().train()
    for _ in range(3):  # skew the running statistics with "mixed" batches of another scale
        net(torch.rand(16, 3, 6, 6) * 0.1)
    x = torch.randn(64, 3, 6, 6) * 2 + 1
    recalibrate_bn(net, x, batch=16)
    bn = net[1]
    feats = net[0](x).detach()
    batch_means = torch.stack([feats[i:i + 16].mean((0, 2, 3)) for i in range(0, 64, 16)])
    batch_vars = torch.stack([feats[i:i + 16].var((0, 2, 3), unbiased=True) for i in range(0, 64, 16)])
    assert torch.allclose(bn.running_mean, batch_means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, batch_vars.mean(0), atol=1e-4)
    assert bn.momentum == 0.4 and not net.training


def test_distribution_alignment_moves_pseudo_labels_off_an_over_predicted_class():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.1, 0.3]])
    views = torch.cat([p, p])  # two identical views of two samples
    assert PseudoLabeller()(views, 2).tolist() == [0, 0]
    # batch mean [0.6, 0.2, 0.2] against a uniform prior: class 0 is divided by 0.6, the others by 0.2
    aligned = PseudoLabeller(prior=torch.full((3,), 1 / 3), momentum=0.0)
    assert aligned(views, 2).tolist() == [1, 2]
    assert torch.allclose(aligned.running, torch.tensor([0.6, 0.2, 0.2]))


def test_any_class_asr_catches_a_rerouted_trigger():
    labels = np.array([1, 1, 2, 2, 3, 3])  # triggered non-target (0) test images
    rerouted = np.array([2, 2, 2, 2, 2, 3])  # the trigger now sends the others to class 2
    assert attack_success_rate(rerouted, 0) == 0.0
    assert any_class_asr(rerouted, labels) == (0.75, 2)  # 3 of the 4 images not of class 2
    assert any_class_asr(np.zeros(6, int), labels) == (1.0, 0)  # the plain backdoor: equals the ASR
    assert any_class_asr(labels, labels)[0] == 0.0  # a clean model's correct answers are no attack


def test_config_schedule_and_bad_input():
    cfg = DEFENSES.build("vab", {"epoch_scale": "0.05"})
    assert [cfg.scaled(n) for n in (200, 50, 100, 150, 5)] == [10, 3, 5, 8, 0]
    assert not cfg.purifies
    with pytest.raises(ConfigError, match="milestones"):
        DEFENSES.build("vab", {"milestones": "100,50"})
    with pytest.raises(ConfigError, match="epoch_scale"):
        DEFENSES.build("vab", {"epoch_scale": "0"})
    with pytest.raises(ConfigError, match="max_growth"):
        DEFENSES.build("vab", {"max_growth": "0.5"})
    with pytest.raises(ConfigError, match="lr_schedule"):
        DEFENSES.build("vab", {"lr_schedule": "cosine"})


@pytest.mark.slow
def test_victim_warm_up_flags_badnets_samples(digits):
    train = ATTACKS.build("badnets").apply(digits).train
    base_rate = train.poisoned.mean()
    out = train_vab(VaB(), VictimConfig(width=32), train.images, train.labels, train.num_classes, seed=0,
                    progress=False, stop_after_warmup=True)
    q = split_quality(out["suspicious_warmup"], train.poisoned, "")
    assert q["recall"] >= 0.8, q
    assert q["precision"] >= 4 * base_rate, q


def test_tiny_vab_trial_row_has_split_columns(digits):
    cfg = build_config("digits", "badnets", "vab", {"defense.epoch_scale": "0.01", "victim.width": "8"})
    full = ATTACKS.build("badnets").apply(digits)
    data = Dataset(full.name, {k: v.subset(np.arange(min(len(v), 300))) for k, v in full.splits.items()},
                   full.meta)
    row = run_trial(cfg, data=data, reference=False, progress=False)
    assert row["defense.name"] == "vab" and row["vab_epochs"] == 2
    for k in ("vab_precision", "vab_recall", "vab_suspicious", "vab_warmup_precision", "vab_warmup_recall"):
        assert 0.0 <= row[k] <= 1.0, (k, row[k])
    assert 0.0 <= row["test_acc"] <= 1.0 and "asr" in row and row["asr_any"] >= row["asr"]
    assert row["n_poisoned"] == int(data.train.poisoned.sum())


def test_vab_nets_keep_the_victims_stem_setting(monkeypatch):
    """``victim.whiten=false`` reaches V&B's Victim and Beneficiary: their fast nets train the 2x2 stem instead
    of freezing it to patch whitening (the setting LC needs to implant; it was silently dropped before)."""
    import eclipse_ray.defenses.vab as vab
    from eclipse_ray.victim.train import new_net

    seen = []

    def spy(cfg, *args, **kwargs):  # V&B builds its nets the way train_victim does, from the victim's config
        seen.append(cfg.whiten)
        return new_net(cfg, *args, **kwargs)

    monkeypatch.setattr(vab, "new_net", spy)
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    vab.train_vab(VaB(warmup=1), VictimConfig(width=8, whiten=False), images, np.arange(40) % 4, 4, 0,
                  progress=False, stop_after_warmup=True)
    assert seen == [False]

    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    frozen = new_net(VictimConfig(width=8), 10, x, torch.device("cpu"))
    trained = new_net(VictimConfig(width=8, whiten=False), 10, x, torch.device("cpu"))
    assert not frozen.whiten.weight.requires_grad and trained.whiten.weight.requires_grad
    assert not torch.equal(frozen.whiten.weight, trained.whiten.weight)  # whitened vs randomly initialised


def test_vab_trains_under_the_victims_precision():
    """``victim.precision=bf16`` reaches V&B: its nets run under bfloat16 autocast (weights and losses
    fp32), and the Beneficiary it returns predicts so too — the setting is not dropped."""
    images = np.random.default_rng(0).integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(48) % 4
    cfg = VaB(warmup=1, epochs=2, suppress_from=1, lambda_switch=1, refresh_every=1, milestones=(1,))
    out = {p: train_vab(cfg, VictimConfig(width=8, epochs=2, precision=p), images, labels, 4, 0, progress=False)
           for p in ("fp32", "bf16")}
    assert out["bf16"]["victim"].bf16 and not out["fp32"]["victim"].bf16
    assert all(q.dtype == torch.float32 for q in out["bf16"]["victim"].model.parameters())
    a, b = (out[p]["victim"].logits(images) for p in ("fp32", "bf16"))
    assert a.dtype == b.dtype == torch.float32 and not torch.equal(a, b)  # a different arithmetic ran


def test_vab_soft_cross_entropy_is_computed_in_fp32_from_bf16_logits():
    """Under bf16 autocast the Beneficiary's logits come as bfloat16; its soft-label loss takes the log-softmax
    in fp32 (bf16's 8-bit mantissa would put ~1e-2 of error into every log-probability)."""
    from eclipse_ray.defenses.vab import _soft_ce

    gen = torch.Generator().manual_seed(0)
    logits = (8 * torch.randn(16, 10, generator=gen)).bfloat16()
    targets = torch.softmax(torch.randn(16, 10, generator=gen), 1)
    torch.testing.assert_close(_soft_ce(logits, targets), _soft_ce(logits.float(), targets), rtol=0, atol=1e-6)
