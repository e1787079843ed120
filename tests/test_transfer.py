"""The transfer-learning victim: clean pre-training once, then the head (linear) or every layer (finetune)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_ray.config import ConfigError
from eclipse_ray.trial import build_config
from eclipse_ray.victim import transfer as T
from eclipse_ray.victim.train import VictimConfig, train_victim


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_linear_transfer_victim_trains_its_head_on_frozen_pretrained_features(digits, monkeypatch):
    calls = []
    real = train_victim

    def counting(cfg, *a, **kw):
        calls.append(cfg.transfer)
        return real(cfg, *a, **kw)

    monkeypatch.setattr(T, "_PRETRAINED", {})
    x, y = digits.train.images, digits.train.labels
    poisoned = x.copy()
    poisoned[:100] = 255 - poisoned[:100]  # what the victim trains on differs from the clean pre-training set
    cfg = VictimConfig(width=8, epochs=2, transfer="linear", pretrain_epochs=3)
    victim = train_victim(cfg, poisoned, y, 10, 0, progress=False, clean=(x, y))
    pre = T.pretrained(cfg.resolved(), x, y, 10, 0, counting)
    assert calls == []  # the pre-trained net of this process, not trained again
    head = T.head_of(victim.model)
    got, want = _params(victim.model), _params(pre.model)
    head_keys = {k for k, v in victim.model.named_parameters() if any(v is p for p in head.parameters())}
    assert head_keys and all(torch.equal(got[k], want[k]) for k in got if k not in head_keys)  # BN stats too
    assert not any(torch.equal(got[k], want[k]) for k in head_keys)  # re-initialised and trained
    assert torch.equal(victim.mean, pre.mean) and torch.equal(victim.std, pre.std)
    assert (victim.predict(digits.test.images) == digits.test.labels).mean() > 0.8  # good features, new head
    head_params = {id(p) for p in head.parameters()}
    assert all(p.requires_grad == (id(p) in head_params) for p in victim.model.parameters())  # still frozen
    again = train_victim(cfg, poisoned, y, 10, 0, progress=False, clean=(x, y))
    assert np.array_equal(again.predict(digits.test.images), victim.predict(digits.test.images))


def test_finetuning_trains_every_layer_from_the_pretrained_net(digits):
    x, y = digits.train.images, digits.train.labels
    cfg = VictimConfig(width=8, epochs=1, transfer="finetune", pretrain_epochs=2, lr=1e-6)
    victim = train_victim(cfg, x, y, 10, 0, progress=False, clean=(x, y))
    pre = T.pretrained(cfg.resolved(), x, y, 10, 0, train_victim)
    got, want = _params(victim.model), _params(pre.model)
    assert torch.equal(got["whiten.weight"], want["whiten.weight"])  # the frozen whitening stem: kept
    conv = [k for k in got if k.startswith("layers.") and k.endswith(".weight") and got[k].ndim == 4]
    assert conv and all(not torch.equal(got[k], want[k]) for k in conv)  # every conv trained ...
    assert all(torch.allclose(got[k], want[k], atol=1e-4) for k in conv)  # ... from the pre-trained weights


def test_a_transfer_victim_needs_its_clean_set_and_a_plain_victim(digits):
    with pytest.raises(ValueError, match="clean training set"):
        train_victim(VictimConfig(width=8, epochs=1, transfer="linear"), digits.train.images, digits.train.labels,
                     10, 0, progress=False)
    with pytest.raises(ConfigError, match=r"^victim.transfer=linear: vab trains its own networks"):
        build_config("digits", "badnets", "vab", {"victim.transfer": "linear"})
    with pytest.raises(ConfigError, match=r"^victim.transfer='frozen': must be one of none, linear, finetune$"):
        build_config("digits", "none", "none", {"victim.transfer": "frozen"})
    for defense in ("advtrain", "jpeg+vab"):
        with pytest.raises(ConfigError, match=r"trains its own networks"):
            build_config("digits", "bullseye", defense, {"victim.transfer": "linear"})
    with pytest.raises(ConfigError, match=r"^victim.finetune_per_class: not with an availability poison"):
        build_config("digits", "lsp", "none", {"victim.transfer": "linear", "victim.finetune_per_class": "50"})
    with pytest.raises(ConfigError, match=r"^victim.pretrain_epochs: only for a transfer victim"):
        build_config("digits", "none", "none", {"victim.pretrain_epochs": "3"})
    cfg = build_config("digits", "bullseye", "jpeg", {"victim.transfer": "linear"})
    plain = build_config("digits", "bullseye", "jpeg")
    assert cfg.hash() != plain.hash() and plain.hash() in plain.hashes()


def test_certify_refuses_a_transfer_victim():
    from eclipse_ray.certify.run import build_job

    with pytest.raises(ConfigError, match=r"^victim.transfer=finetune: certify trains its smoothed victims "
                                          r"from scratch$"):
        build_job("digits", "none", {"victim.transfer": "finetune"})


@pytest.mark.slow
def test_a_transfer_trial_pretrains_on_the_clean_originals(digits, monkeypatch):
    """In a trial the pre-training set is the clean view (poisoned rows replaced by their originals), and the
    clean reference victim is a transfer victim too."""
    seen = []
    real = T.pretrained

    def spy(cfg, images, labels, *a, **kw):
        seen.append(images.copy())
        return real(cfg, images, labels, *a, **kw)

    monkeypatch.setattr("eclipse_ray.victim.train.pretrained", spy)
    from eclipse_ray.trial import run_trial

    cfg = build_config("digits", "lsp", "none", {"victim.transfer": "linear", "victim.width": "8",
                                                 "victim.epochs": "1", "victim.pretrain_epochs": "2"})
    row = run_trial(cfg, progress=False)
    assert row["victim.transfer"] == "linear" and 0 <= row["poison_success"] <= 1
    assert len(seen) == 2 and all(np.array_equal(s, digits.train.images) for s in seen)  # trial, reference


def test_the_finetuning_set_is_n_clean_rows_per_class_and_every_poison():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    poisoned = np.array([0, 0, 1, 0, 0, 0, 0, 1], bool)
    index = np.array([70, 60, 50, 40, 30, 20, 10, 0])  # rows stored in reverse index order
    assert T.finetune_rows(labels, poisoned, index, None).tolist() == list(range(8))
    assert T.finetune_rows(labels, poisoned, index, 1).tolist() == [2, 5, 6, 7]  # smallest indices: 10 and 20
    assert T.finetune_rows(labels, poisoned, index, 2).tolist() == [2, 3, 4, 5, 6, 7]
    with pytest.raises(ConfigError, match=r"^victim.finetune_per_class: only for a transfer victim"):
        build_config("digits", "none", "none", {"victim.finetune_per_class": "50"})


@pytest.mark.slow
def test_a_transfer_trial_finetunes_on_few_clean_rows_and_every_poison(digits):
    from eclipse_ray.trial import run_trial

    cfg = build_config("digits", "badnets", "none", {"victim.transfer": "linear", "victim.width": "8",
                                                     "victim.epochs": "1", "victim.pretrain_epochs": "2",
                                                     "victim.finetune_per_class": "20"})
    row = run_trial(cfg, progress=False)
    assert row["n_finetune"] == 200 + row["n_poisoned"] and row["n_train"] == len(digits.train)


def test_a_transfer_victim_needs_the_originals_of_the_poisoned_rows(digits):
    from eclipse_ray.data.imageset import ImageSet
    from eclipse_ray.trial import check_originals

    tr = digits.train
    poisoned = ImageSet(tr.images, tr.labels, tr.index, np.arange(len(tr)) < 3, tr.classes)
    check_originals(poisoned, tr.subset(np.arange(3)))  # every poisoned row has its original
    with pytest.raises(ConfigError, match=r"^victim.transfer: 2 poisoned rows have no clean original"):
        check_originals(poisoned, tr.subset(np.arange(1)))
    with pytest.raises(ConfigError, match=r"^victim.transfer: 3 poisoned rows"):
        check_originals(poisoned, None)
