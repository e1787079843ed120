"""The command line: a trial appends a row, poison/show write files, bad input writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from eclipse_ray.cli import main
from eclipse_ray.data.store import read_dataset
from eclipse_ray.result_store import read_results

QUICK = ["victim.epochs=2", "victim.width=8"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_run_appends_one_row_and_prints_json(tmp_path, capsys):
    res = tmp_path / "res"
    rc, out, _ = run_cli(capsys, "run", "--dataset", "digits", "--attack", "urp", "--defense", "gray",
                         "--set", *QUICK, "seed=1", "--results", str(res), "--quiet")
    assert rc == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["attack.name"] == "urp" and summary["defense.name"] == "gray" and summary["seed"] == 1
    df = read_results(res)
    assert len(df) == 1
    row = df.iloc[0]
    for col in ("attack.eps", "attack.rate", "victim.epochs", "test_acc", "poison_success", "acc_ref",
                "purify_psnr_poisoned", "purify_l2_clean", "config_hash", "git_sha", "version.torch", "device",
                "purify_seconds", "train_seconds"):
        assert col in df.columns, col
    assert row["config_hash"] == summary["config_hash"] and row["victim.epochs"] == 2
    assert 0 <= row["poison_success"] <= 1
    # The clean reference is cached: a second trial with the same victim reuses it.
    assert len(list((res / ".cache" / "acc_ref").glob("*.json"))) == 1
    rc, _, _ = run_cli(capsys, "run", "--dataset", "digits", "--attack", "urp", "--set", *QUICK, "seed=1",
                       "--results", str(res), "--quiet")
    assert rc == 0 and len(read_results(res)) == 2
    assert len(list((res / ".cache" / "acc_ref").glob("*.json"))) == 1


@pytest.mark.slow
def test_poison_then_run_on_the_written_dataset(tmp_path, capsys):
    out_dir = tmp_path / "bad"
    rc, out, _ = run_cli(capsys, "poison", "--dataset", "digits", "--attack", "badnets",
                         "--set", "attack.rate=0.1", "--out", str(out_dir))
    assert rc == 0 and json.loads(out)["poisoned"] == 144
    splits, meta = read_dataset(out_dir)
    assert set(splits) == {"train", "test", "test_triggered", "originals"} and meta["attack_kind"] == "backdoor"
    rc, out, _ = run_cli(capsys, "run", "--dataset", f"parquet:{out_dir}", "--set", *QUICK,
                         "--results", str(tmp_path / "res"), "--quiet")
    assert rc == 0
    row = read_results(tmp_path / "res").iloc[0]
    assert row["attack.kind"] == "backdoor" and not np.isnan(row["asr"]) and row["n_poisoned"] == 144
    rc, _, err = run_cli(capsys, "run", "--dataset", f"parquet:{out_dir}", "--attack", "lsp", "--quiet")
    assert rc == 2 and "already poisoned" in err


def test_show_writes_a_png(tmp_path, capsys):
    run_cli(capsys, "poison", "--dataset", "digits", "--attack", "blend", "--out", str(tmp_path / "ds"))
    rc, _, _ = run_cli(capsys, "show", str(tmp_path / "ds"), "--out", str(tmp_path / "grid.png"), "-n", "20")
    assert rc == 0 and (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_list_names_every_registered_entry_and_setting(capsys):
    from eclipse_ray.attacks import ATTACKS
    from eclipse_ray.data.sources import descriptions
    from eclipse_ray.defenses import DEFENSES
    from eclipse_ray.victim.nets import VICTIMS

    rc, out, _ = run_cli(capsys, "list")
    assert rc == 0
    lines = out.splitlines()
    for reg in (ATTACKS, DEFENSES):
        assert len(list(reg)) >= 11
        for name in reg:
            assert any(ln.startswith(f"  {name} ") for ln in lines), name
            for field, *_ in reg[name].describe():
                assert any(ln.strip().startswith(f"{reg.section}.{field}=") for ln in lines), (name, field)
    for name in [*descriptions(), *VICTIMS]:
        assert any(ln.startswith(f"  {name} ") for ln in lines), name
    assert "attack.eps=0.0313725" in out  # URP's 8/255


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"eclipse-ray {version('eclipse_ray')}"


BAD = [
    (["run", "--dataset", "digits", "--attack", "nope"], "unknown attack 'nope'"),
    (["run", "--dataset", "digits", "--defense", "nope"], "unknown defense 'nope'"),
    (["run", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["run", "--dataset", "digits", "--set", "attack.eps=0.1"], "unknown setting 'attack.eps'"),
    (["run", "--dataset", "digits", "--attack", "urp", "--set", "attack.eps=-0.1"], "must be ≥ 0"),
    (["run", "--dataset", "digits", "--attack", "urp", "--set", "attack.rate=2"], "must be ≤ 1"),
    (["run", "--dataset", "digits", "--attack", "urp", "--set", "attack.eps=big"], "cannot read 'big'"),
    (["run", "--dataset", "digits", "--attack", "badnets", "--set", "attack.target=10"], "only 10 classes"),
    (["run", "--dataset", "digits", "--set", "victim.epochs=0"], "victim.epochs=0: must be ≥ 1"),
    (["run", "--dataset", "digits", "--set", "oops"], "key=value"),
    (["poison", "--dataset", "digits", "--attack", "lsp", "--set", "attack.rate=-0.5"], "must be ≥ 0"),
    (["poison", "--dataset", "digits", "--attack", "sig", "--set", "attack.target=99"], "only 10 classes"),
]


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_input_one_line_error_nothing_written(tmp_path, capsys, argv, message):
    out_flag = ["--out", str(tmp_path / "out")] if argv[0] == "poison" else ["--results", str(tmp_path / "out")]
    rc, out, err = run_cli(capsys, *argv, *out_flag)
    assert rc == 2
    assert message in err and err.count("\n") == 1 and err.startswith("eclipse-ray: error:")
    assert list(tmp_path.iterdir()) == []


def test_malformed_npz_through_the_cli(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((4, 8, 8, 3), np.float32), y_train=np.zeros(4, int),
             x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.zeros(2, int))
    rc, _, err = run_cli(capsys, "run", "--dataset", f"npz:{tmp_path / 'bad.npz'}", "--results",
                         str(tmp_path / "res"))
    assert rc == 2 and "must be uint8" in err and not (tmp_path / "res").exists()


def test_poison_refuses_an_existing_output(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    rc, _, err = run_cli(capsys, "poison", "--dataset", "digits", "--attack", "urp", "--out", str(tmp_path / "out"))
    assert rc == 2 and "already exists" in err and (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "eclipse_ray.cli", "run", "--dataset", "digits", "--attack", "x"],
                       capture_output=True, text=True)
    from eclipse_ray.attacks import ATTACKS

    assert r.returncode == 2
    assert r.stderr.strip() == f"eclipse-ray: error: unknown attack 'x' (known: {', '.join(ATTACKS)})"
    assert "lsp" in r.stderr and "em-adaptive" in r.stderr


@pytest.mark.slow
def test_results_store_readable_without_eclipse_ray(tmp_path, capsys):
    run_cli(capsys, "run", "--dataset", "digits", "--set", *QUICK, "--results", str(tmp_path / "r"), "--quiet")
    code = ("import glob, pandas as pd, duckdb, sys; d=sys.argv[1]; "
            "df=pd.concat(pd.read_parquet(f) for f in glob.glob(d+'/part-*.parquet')); "
            "n=duckdb.sql(f\"select count(*) from read_parquet('{d}/part-*.parquet', union_by_name=true)\").fetchall()[0][0]; "
            "assert 'eclipse_ray' not in sys.modules; print(len(df), n, df['test_acc'].iloc[0])")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], capture_output=True, text=True, check=True)
    n_pd, n_db, acc = r.stdout.split()
    assert n_pd == n_db == "1" and 0 < float(acc) <= 1
    assert len(pd.read_parquet(tmp_path / "r")) == 1


def test_any_error_is_one_line_with_exit_2_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import eclipse_ray.cli as cli

    def boom(args):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(cli, "COMMANDS", [(n, h, a, boom if n == "list" else f) for n, h, a, f in cli.COMMANDS])
    rc, _, err = run_cli(capsys, "list")
    assert rc == 2 and err.strip() == "eclipse-ray: error: RuntimeError: disk on fire second line " \
                                      "(--debug shows the traceback)"
    rc, _, err = run_cli(capsys, "list", "--debug")  # anywhere on the line
    assert rc == 2 and "Traceback" in err and err.strip().endswith("(--debug shows the traceback)")


def test_an_error_inside_a_ray_task_is_reported_by_its_cause():
    from eclipse_ray.boundary import one_line
    from eclipse_ray.config import ConfigError

    class Wrapper(Exception):  # how Ray wraps a task's exception
        def __init__(self, cause):
            super().__init__("ray.exceptions.RayTaskError: long traceback text")
            self.cause = cause

    assert one_line(Wrapper(ConfigError("attack.rate=2: must be ≤ 1"))) == "attack.rate=2: must be ≤ 1"
