from __future__ import annotations

import pytest

from eclipse_ray.attacks import ATTACKS
from eclipse_ray.config import ConfigError, config_hash, flatten, split_overrides
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.trial import build_config


def test_flatten_gives_dotted_result_columns():
    cfg = build_config("digits", "lsp", "jpeg", {"attack.eps": "0.03", "defense.quality": "20", "seed": "3"})
    flat = cfg.flat()
    assert flat["attack.name"] == "lsp" and flat["attack.eps"] == pytest.approx(0.03)
    assert flat["defense.name"] == "jpeg" and flat["defense.quality"] == 20
    assert flat["victim.arch"] == "fast" and flat["victim.lr"] == pytest.approx(0.2)  # recipe resolved
    assert flat["seed"] == 3 and flat["dataset"] == "digits"


def test_config_hash_is_stable_and_sensitive():
    a = build_config("digits", "lsp", "none", {"attack.eps": "0.03"})
    b = build_config("digits", "lsp", "none", {"attack.eps": "0.030"})
    c = build_config("digits", "lsp", "none", {"attack.eps": "0.031"})
    assert a.hash() == b.hash() != c.hash()
    assert config_hash({"x": 1, "y": 2.0}) == config_hash({"y": 2, "x": 1.0})
    # Explicitly setting a recipe default does not change the hash: it is the same experiment.
    assert build_config("digits", overrides={"victim.lr": "0.2"}).hash() == build_config("digits").hash()


@pytest.mark.parametrize("overrides, message", [
    ({"attack.eps": "-0.1"}, "attack.eps=-0.1: must be ≥ 0"),
    ({"attack.rate": "1.5"}, "attack.rate=1.5: must be ≤ 1"),
    ({"attack.eps": "abc"}, "cannot read 'abc'"),
    ({"attack.bogus": "1"}, "unknown setting 'attack.bogus'"),
    ({"victim.epochs": "2.5"}, "cannot read '2.5' as int"),
    ({"victim.arch": "vgg"}, "must be one of fast, airbench, resnet18"),
    ({"nonsense": "1"}, "unknown setting 'nonsense'"),
    ({"seed": "-1"}, "seed=-1"),
    ({"attack.name": "urp"}, "choose the attack with --attack"),
])
def test_bad_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        build_config("digits", "lsp", "none", overrides)
    assert "\n" not in str(e.value)


def test_unknown_names():
    with pytest.raises(ConfigError, match="unknown attack 'nope'"):
        build_config("digits", "nope")
    with pytest.raises(ConfigError, match="unknown defense 'nope'"):
        build_config("digits", "none", "nope")


def test_split_overrides_rejects_malformed():
    assert split_overrides(["a.b=1", "c=x=y"]) == {"a.b": "1", "c": "x=y"}
    with pytest.raises(ConfigError, match="key=value"):
        split_overrides(["novalue"])
    with pytest.raises(ConfigError, match="given twice"):
        split_overrides(["a=1", "a=2"])


def test_every_registered_config_has_help_and_validates_defaults():
    for reg in (ATTACKS, DEFENSES):
        for name in reg:
            cfg = reg.build(name)
            for fname, _, _, help_text in type(cfg).describe():
                assert help_text, f"{name}.{fname} has no help"
            assert flatten(cfg, f"{reg.section}.")[f"{reg.section}.name"] == name


def test_training_recipes_and_metrics_are_declared_once():
    from eclipse_ray.cli import parser
    from eclipse_ray.defenses.diffusion import Denoise, Eclipse, PureGenDDPM
    from eclipse_ray.diffusion.train import TRAIN_RECIPES, recipe_config
    from eclipse_ray.distributed.tune import METRIC_KEYS
    from eclipse_ray.result_store import HEADLINE, METRIC_NAMES
    from eclipse_ray.results.pareto import METRICS
    from eclipse_ray.trial import SUMMARY_KEYS

    sub = next(a for a in parser()._actions if a.dest == "command").choices["train-diffusion"]
    assert next(a for a in sub._actions if a.dest == "recipe").choices == tuple(TRAIN_RECIPES)
    assert Eclipse().train == Denoise().train == recipe_config("eclipse") and PureGenDDPM().train == recipe_config("puregen")
    pg = recipe_config("puregen", {"iterations": "7"})
    assert (pg.schedule, pg.num_steps, pg.t_max, pg.warmup, pg.lr_schedule, pg.iterations) == \
        ("linear", 1000, 250, 500, "cosine", 7)
    assert PureGenDDPM().train.t_max == 250 and Eclipse().train.schedule == "cosine"
    assert METRIC_KEYS == METRICS == METRIC_NAMES and set(HEADLINE) <= set(SUMMARY_KEYS)
    assert {"target_success", "asr_any", "clean_cost"} <= set(METRICS)  # summaries keep them


def test_model_training_settings_are_nested_and_older_names_still_work():
    """``defense.train.*`` is the model-training config itself (one declaration); the names before the
    nesting are aliases, and a config they can express keeps the hash and cache address it had."""
    from eclipse_ray.data.cache import poison_key
    from eclipse_ray.diffusion.train import DiffusionTrainConfig
    from eclipse_ray.ebm.train import EBMTrainConfig

    new = DEFENSES.build("eclipse", {"train.iterations": "600", "train.preset": "tiny"})
    assert new == DEFENSES.build("eclipse", {"train_iterations": "600", "train_preset": "tiny"})
    assert isinstance(new.train, DiffusionTrainConfig) and new.train.iterations == 600
    assert isinstance(DEFENSES.build("puregen-ebm", {"train_mcmc_steps": "3"}).train, EBMTrainConfig)
    flat = build_config("digits", "lsp", "eclipse", {"defense.train.iterations": "600"}).flat()
    assert flat["defense.train.iterations"] == 600 and flat["defense.train.schedule"] == "cosine"
    # pinned: the hash this trial had before the nesting (a stored row of it is found by the study)
    cfg = build_config("digits", "lsp", "eclipse", {"defense.train.iterations": "600", "seed": "0"})
    # (and before victim.precision existed); its own hash, then each section spelled now or as before: the
    # defense in 3 spellings (now, before defense.rng and compile_mode, before the nesting), the victim in 4
    # (now, before victim.transfer, before the airbench settings, before victim.precision)
    assert cfg.hashes()[-1] == "6e969607f1060560" and len(cfg.hashes()) == 12
    # a setting no earlier version had: no former hash of the defense section before the nesting to match
    lr = build_config("digits", "lsp", "eclipse", {"defense.train.lr": "0.001"})
    added = {"victim.precision", "victim.bias_lr_scale", "victim.bias_decay", "victim.lookahead", "victim.tta",
             "victim.whiten_bias_epochs", "victim.transfer", "victim.pretrain_epochs", "victim.finetune_per_class", "defense.rng",
             "defense.compile_mode"}
    assert len(lr.hashes()) == 8 and lr.hashes()[-1] == config_hash(
        {k: v for k, v in lr.flat().items() if k not in added})
    assert len(build_config("digits", "lsp", "jpeg").hashes()) == 4  # nothing nested: only the victim's
    assert len(build_config("digits", "lsp", "jpeg", {"victim.precision": "bf16"}).hashes()) == 3
    transfer = build_config("digits", "lsp", "jpeg", {"victim.transfer": "linear"})
    assert len(transfer.hashes()) == 1  # no version before could express it
    adaptive = ATTACKS.build("em-adaptive", {"train_iterations": "5"})
    assert adaptive.train.iterations == 5
    assert poison_key("digits", adaptive) == "ba210e84c44f6f44"  # crafted before: found again


def test_each_settings_generation_keeps_the_spellings_and_addresses_of_configs_made_before_it():
    """A config as generation 1 shipped it, and the same config after generation 2 added a setting: every
    config the old class could express keeps its old address (first spelling) and its old full spelling
    among the new one's; one that sets the new setting off its default has no earlier spelling."""
    from dataclasses import dataclass

    from eclipse_ray.config import Config, setting

    @dataclass(frozen=True)
    class Shipped(Config):
        a: int = setting(1, "original")
        b: str = setting("x", "added by generation 1", added=1)

    @dataclass(frozen=True)
    class Now(Config):
        a: int = setting(1, "original")
        b: str = setting("x", "added by generation 1", added=1)
        c: float = setting(0.5, "added by generation 2", added=2)

    for kw in ({}, {"a": 3}, {"b": "y"}, {"a": 3, "b": "y"}):
        old, new = Shipped(**kw), Now(**kw)
        assert new.spellings("s.")[0] == old.spellings("s.")[0]  # the address does not move
        assert flatten(old, "s.") in new.spellings("s.") and new.spellings("s.")[-1] == flatten(new, "s.")
    assert Now(b="y").spellings() == [{"a": 1, "b": "y"}, {"a": 1, "b": "y", "c": 0.5}]
    assert Now().spellings() == [{"a": 1}, {"a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 0.5}]
    assert Now(b="y", c=0.25).spellings() == [{"a": 1, "b": "y", "c": 0.25}]
    assert Now().spelling(1) == {"a": 1, "b": "x"} and Now(c=0.25).spelling(1) is None
