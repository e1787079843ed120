"""The reference study's pieces: Table 1 arithmetic, shared purification across victim seeds, its grid."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eclipse_ray.config import ConfigError
from eclipse_ray.distributed.artifacts import purification_key
from eclipse_ray.distributed.tune import run_spec, spec
from eclipse_ray.presets import PRESETS, trial_settings
from eclipse_ray.results.table import best_backdoor, clean_cost, defense_table, scale_change, won_back
from eclipse_ray.trial import build_config


def _rows() -> pd.DataFrame:
    rows = []
    acc = {("none", "none"): (0.70, 0.72), ("none", "eclipse"): (0.66, 0.66), ("lsp", "none"): (0.20, 0.22),
           ("lsp", "eclipse"): (0.60, 0.62), ("lsp", "jpeg"): (0.50, 0.50), ("urp", "none"): (0.68, 0.68),
           ("urp", "eclipse"): (0.66, 0.66), ("badnets", "none"): (0.70, 0.70), ("badnets", "eclipse"): (0.64, 0.66)}
    asr = {("badnets", "none"): (1.0, 1.0), ("badnets", "eclipse"): (0.05, 0.15)}
    for (a, d), accs in acc.items():
        for seed, v in enumerate(accs):
            rows.append({"attack.name": a, "defense.name": d, "seed": seed, "test_acc": v,
                         "asr": asr[(a, d)][seed] if (a, d) in asr else np.nan})
    return pd.DataFrame(rows)


def test_table_cells_clean_cost_and_won_back():
    df = _rows()
    t = defense_table(df, ["none", "lsp", "badnets"], ["none", "eclipse"])
    assert t.loc["lsp", "eclipse"] == "61.0 ± 1.4"
    assert t.loc["badnets", "eclipse"] == "65.0 ± 1.4 / 10.0 ± 7.1"
    assert clean_cost(df, ["eclipse"])["eclipse"] == pytest.approx(5.0)
    wb = won_back(df, ["lsp", "urp"]).set_index("attack")
    # LSP removes 71 − 21 = 50 points; eclipse (best, 61) wins back 40 of them.
    assert wb.loc["lsp", "best_defense"] == "eclipse"
    assert wb.loc["lsp", "won_back"] == pytest.approx(0.8)
    assert bool(wb.loc["lsp", "counted"]) and not bool(wb.loc["urp", "counted"])  # URP removes only 3 points
    bd = best_backdoor(df, ["badnets"]).iloc[0]
    assert bd["best_defense"] == "eclipse" and bd["best_asr"] == pytest.approx(0.10)


def test_scale_change_puts_two_studies_side_by_side():
    small = _rows()
    large = small[small["seed"] == 0].assign(test_acc=lambda d: d["test_acc"] + 0.1)
    large = large[~((large["attack.name"] == "lsp") & (large["defense.name"] == "jpeg"))]
    t = scale_change(small, large, ["none", "lsp", "badnets"], ["none", "eclipse", "jpeg"])
    assert t.loc["none", "none"] == "71.0 → 80.0"
    assert t.loc["badnets", "eclipse"] == "65.0 / 10.0 → 74.0 / 5.0"
    assert t.loc["lsp", "jpeg"] == "50.0 → –"  # measured in one study only
    assert t.loc["clean cost", "eclipse"] == "+5.0 → +4.0"
    assert t.loc["clean cost", "jpeg"] == "– → –"


def test_purify_seed_shares_one_purification_across_victim_seeds():
    a = build_config("digits", "lsp", "jpeg", {"seed": "0"})
    assert "purify_seed" not in a.flat()  # configs without it keep their old hash
    b = build_config("digits", "lsp", "jpeg", {"seed": "1", "purify_seed": "0"})
    c = build_config("digits", "lsp", "jpeg", {"seed": "2", "purify_seed": "0"})
    assert b.hash() != c.hash() and b.defense_seed == c.defense_seed == a.defense_seed == 0
    keys = {purification_key(x) for x in (a, b, c)}
    assert len(keys) == 1


def test_purification_keys_of_earlier_versions_still_address_their_sets(tmp_path):
    """A cached purified set keeps its address across versions (pinned keys of an ``auto`` model's sets);
    a model named by path enters by its content, so new weights at the same path are a new set."""
    assert purification_key(build_config("digits", "lsp", "jpeg", {"seed": "0"})) == "5227bffab8c3f291"
    x = build_config("digits", "badnets", "eclipse", {"seed": "0", "defense.train.iterations": "40"})
    assert purification_key(x) == "8508cb2335f2d8aa"
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    named = build_config("digits", "badnets", "eclipse", {"seed": "0", "defense.model": str(model)})
    before = purification_key(named)
    (model / "model.safetensors").write_bytes(b"new weights")
    assert purification_key(named) != before
    with pytest.raises(ConfigError, match="purify_seed"):
        build_config("digits", "lsp", "jpeg", {"purify_seed": "-1"})


@pytest.mark.slow
def test_second_victim_seed_reuses_the_purified_set(tmp_path):
    common = {"victim.epochs": "1", "victim.width": "8", "purify_seed": "0"}
    rows = [run_spec(spec("digits", "urp", "jpeg", {**common, "seed": str(s)}), str(tmp_path / "study"),
                     str(tmp_path / "cache")) for s in (0, 1)]
    assert [r["purify_reused"] for r in rows] == [False, True]
    assert rows[0]["config_hash"] != rows[1]["config_hash"]


def test_trial_settings_precedence():
    from eclipse_ray.presets import ModelTraining, Preset
    from eclipse_ray.victim.train import VictimConfig

    preset = Preset("t", "test", "digits", VictimConfig(epochs=6), ModelTraining(iterations=600))
    assert trial_settings(preset, "eclipse", {}, 0)["defense.train.iterations"] == "600"
    s = trial_settings(preset, "eclipse", {"defense.train.iterations": "10", "defense.sigma": "0.1"}, 3,
                       {"victim.epochs": "2", "defense.quality": "5"})
    assert s["defense.train.iterations"] == "10"  # the grid point's own setting beats the preset's
    assert s["victim.epochs"] == "2" and s["seed"] == "3"  # the user's --set beats both
    assert "defense.quality" not in s  # a defense.* key this defense does not have is dropped
    assert trial_settings(preset, "eclipse", {}, 0, {"defense.train_iterations": "7"})["defense.train_iterations"] == "7"
    assert "defense.train.iterations" not in trial_settings(preset, "jpeg", {}, 0)


@pytest.mark.slow
def test_reference_grid_is_complete_and_valid():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import defense_quality as dq

    specs = dq.build_specs("subset", [0, 1], dataset="digits")
    cfgs = [build_config(s["dataset"], s["attack"], s["defense"], s["set"]) for s in specs]
    assert len({c.hash() for c in cfgs}) == len(specs) == 2 * (18 * 7 + 8 * 3)
    cells = {(c.attack.name, c.defense.name) for c in cfgs}
    assert {("em", d) for d in dq.PURIFIERS} <= cells and ("lsp", "vab") not in cells and ("wanet", "vab") in cells
    assert {("sep", "none"), ("entf", "eclipse"), ("lc", "vab"), ("iad", "jpeg+vab"), ("sig", "eclipse+vab")} <= cells
    lc, iad = (next(c for c in cfgs if c.attack.name == a) for a in ("lc", "iad"))
    assert lc.attack.steps == 20 and not lc.victim.whiten and iad.attack.epochs == 30 and iad.victim.whiten
    composite = next(c for c in cfgs if c.defense.name == "eclipse+vab")
    assert composite.defense.eclipse.sigma == 0.05 and composite.defense.vab.epoch_scale == 0.05  # each part its own
    seeds = [c.seed for c in cfgs]
    assert seeds == sorted(seeds)  # seed-major: seed 1 finds every purification cached
    assert {c.purify_seed for c in cfgs} == {0}
    assert PRESETS["subset"].victim.width == 16


def test_report_of_a_study_in_parts_sums_the_parts_and_shows_only_its_attacks(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import defense_quality as dq

    dq.log_part(tmp_path, ["none", "lsp"], 4, 600.0)
    dq.log_part(tmp_path, ["urp"], 2, 300.0)
    parts = dq.read_parts_log(tmp_path)
    assert [p["attacks"] for p in parts] == [["none", "lsp"], ["urp"]]
    df = _rows().assign(dataset="digits")
    lower = _rows().assign(test_acc=lambda d: d["test_acc"] - 0.01)
    text = dq.write_reference(df, tmp_path, sum(p["seconds"] for p in parts),
                              [("the size: small", _rows()), ("the precision: fp32", lower)], parts).read_text()
    assert "15.0 min (0.25 h) in 2 parts: none lsp — 4 trials, 10.0 min; urp — 2 trials, 5.0 min" in text
    assert "| em |" not in text and "| lsp | 21.0" in text  # rows only for the attacks this study ran
    small, fp32 = text.split("## What changes with the size: small → this study")[1].split(
        "## What changes with the precision: fp32 → this study")  # one section per compared study, in order
    assert "| lsp | 21.0 → 21.0" in small and "| lsp | 20.0 → 21.0" in fp32


@pytest.mark.parametrize("name, pinned", [
    ("smoke", ("7597e19e84015bc9", "1faeeedd1167d3dd", "a0972cfe57c46fcf")),
    ("cifar10", ("a51ebc6e09faea97", "f11d0b91411394e7", "0bac9b1bcbdca776")),
])
def test_typed_presets_give_the_trials_the_string_presets_gave(name, pinned):
    """The presets are typed and checked when declared; their trials are the ones the string-dict presets of
    earlier versions gave (pinned: those versions' hashes of an lsp trial under none, eclipse, puregen-ebm)."""
    p = PRESETS[name]
    got = [build_config(p.dataset, "lsp", d, trial_settings(p, d, {}, 0)) for d in ("none", "eclipse", "puregen-ebm")]
    assert tuple(c.hashes()[-1] for c in got) == pinned
    assert trial_settings(p, "jpeg", {}, 0).keys() == {"seed", *p.victim_settings()}  # no defense.train.* for jpeg


def test_a_preset_with_a_bad_value_fails_when_declared():
    from eclipse_ray.presets import ModelTraining

    with pytest.raises(ConfigError, match="train.iterations=0: must be ≥ 1"):
        ModelTraining("tiny", 0)
    with pytest.raises(ConfigError, match="must be one of"):
        ModelTraining("huge", 10)


def test_composed_study_gives_each_part_the_reference_studys_settings_and_compares_single_defenses_only():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import composed_quality as cq

    cfgs = [build_config(s["dataset"], s["attack"], s["defense"], s["set"]) for s in cq.build_specs([0], "digits")]
    eclipse_vab = next(c for c in cfgs if c.defense.name == "eclipse+vab")
    assert eclipse_vab.defense.eclipse.sigma == 0.05 and eclipse_vab.defense.vab.epoch_scale == 0.05
    ref = pd.DataFrame([{"dataset": "d", "attack.name": "sig", "defense.name": d, "seed": 0, "asr": asr,
                         "config_hash": d} for d, asr in (("none", 0.99), ("vab", 0.86), ("jpeg+vab", 0.5))])
    assert cq.best_single(ref, "sig", "asr", lowest=True) == ("vab", 0.86)  # the composite is not a single defense


def test_a_reference_accuracy_cached_before_a_victim_setting_existed_is_found(tmp_path):
    """acc_ref files are keyed by the clean reference trial's hash; one written before victim.precision
    existed (its former hash) still serves, so a study does not retrain its clean victims."""
    from eclipse_ray.data.cache import write_acc_ref
    from eclipse_ray.trial import reference_accuracy, reference_config, stored_reference

    cfg = build_config("digits", "lsp", "jpeg", {"victim.epochs": "2"})
    ref = reference_config(cfg)
    former = ref.hashes()[-1]
    assert former != ref.hash()
    assert stored_reference(str(tmp_path), ref) is None
    write_acc_ref(str(tmp_path), former, 0.625)
    assert stored_reference(str(tmp_path), ref) == 0.625
    assert reference_accuracy(cfg, None, str(tmp_path)) == 0.625  # read, not trained (no data given)
    bf16 = reference_config(build_config("digits", "lsp", "jpeg", {"victim.epochs": "2", "victim.precision": "bf16"}))
    assert stored_reference(str(tmp_path), bf16) is None  # another victim: no former hash to share


def test_a_studys_clean_reference_trial_is_the_reference_the_others_read(tmp_path):
    """A study that fixes ``purify_seed`` (the subset and full presets) holds the clean, undefended trial
    itself: its accuracy is every other trial's ``acc_ref``. The plan trains no second clean victim for it, and
    the reference trial stores its accuracy under the key the others look up."""
    from eclipse_ray.distributed.study import compile_plan, references_to_train, trial_groups
    from eclipse_ray.distributed.tune import spec
    from eclipse_ray.trial import reference_accuracy, run_trial

    shared = {"purify_seed": "0", "victim.epochs": "1", "victim.width": "8"}
    cells = (("urp", "jpeg"), ("none", "gray"), ("none", "none"))
    plan = compile_plan([spec("digits", a, d, shared) for a, d in cells])
    assert len(plan.references) == 1 and references_to_train(plan, str(tmp_path)) == []  # its own trial trains it
    without = compile_plan([spec("digits", a, d, shared) for a, d in cells[:2]])
    assert references_to_train(without, str(tmp_path)) == list(without.references.values())  # stage 4 trains it
    groups = trial_groups(plan.trials)
    assert [[t.cfg.defense.name for t in g] for g in groups] == [["none"], ["jpeg", "gray"]]  # reference first
    reference, urp = plan.trials[2].cfg, plan.trials[0].cfg
    row = run_trial(reference, cache_dir=str(tmp_path), progress=False)
    assert row["acc_ref"] == row["test_acc"]
    assert reference_accuracy(urp, None, str(tmp_path)) == row["test_acc"]  # read, not trained (no data given)
