"""Settings are never dropped: repeated ``--set`` flags accumulate in every command and sweep, and a key
given twice (in one flag or across flags) is a one-line error naming it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from eclipse_ray.cli import main, parser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweeps"))
from _common import parser as sweep_parser  # noqa: E402

COMMANDS = {
    "poison": ["poison", "--dataset", "digits", "--attack", "urp", "--out", "o"],
    "run": ["run", "--dataset", "digits"],
    "train-diffusion": ["train-diffusion", "--dataset", "digits", "--out", "o"],
    "train-ebm": ["train-ebm", "--dataset", "digits", "--out", "o"],
    "purify": ["purify", "--input", "i", "--defense", "jpeg", "--out", "o"],
    "certify": ["certify", "--dataset", "digits", "--out", "o"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_repeated_set_flags_accumulate(command):
    args = parser().parse_args([*COMMANDS[command], "--set", "a.x=1", "b.y=2", "--set", "c.z=3"])
    assert args.set == ["a.x=1", "b.y=2", "c.z=3"]


def test_repeated_set_flags_accumulate_in_the_sweeps():
    args = sweep_parser("x").parse_args(["--set", "victim.epochs=1", "--set", "victim.width=8"])
    assert args.set == ["victim.epochs=1", "victim.width=8"]


@pytest.mark.slow
def test_a_second_set_flag_takes_effect_in_a_trial(tmp_path, capsys):
    import json

    rc = main(["run", "--dataset", "digits", "--attack", "urp", "--set", "victim.epochs=1", "--set",
               "victim.width=8", "seed=3", "--results", str(tmp_path / "r"), "--quiet", "--no-reference"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and row["seed"] == 3
    from eclipse_ray.result_store import read_results

    stored = read_results(tmp_path / "r").iloc[0]
    assert stored["victim.width"] == 8 and stored["victim.epochs"] == 1


@pytest.mark.parametrize("flags", [["--set", "victim.epochs=1", "victim.epochs=2"],
                                   ["--set", "victim.epochs=1", "--set", "victim.epochs=2"]])
def test_a_key_given_twice_is_a_one_line_error(flags, tmp_path, capsys):
    rc = main(["run", "--dataset", "digits", *flags, "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "eclipse-ray: error: --set victim.epochs given twice"
    assert not (tmp_path / "r").exists()
