"""Fail before the work (writable outputs, claims that a killed run does not leave stuck) and
``eclipse-ray doctor``, which names what is corrupt, stale or duplicated."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eclipse_ray import storage
from eclipse_ray.cli import main
from eclipse_ray.data import store
from eclipse_ray.data import cache as C
from eclipse_ray.result_store import append_rows


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_claim(out: Path, pid: int) -> Path:
    f = out.parent / f".{out.name}.claim.json"
    f.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "time": 0, "command": "x"}))
    return f


@pytest.fixture
def dataset(digits, tmp_path):
    return Path(store.write_dataset(tmp_path / "d", {k: s.subset(np.arange(20)) for k, s in digits.splits.items()}))


def test_an_output_claimed_by_a_live_run_is_refused_before_any_work(dataset, tmp_path, capsys):
    out = tmp_path / "o"
    claim = write_claim(out, os.getppid())  # a live process
    rc = main(["purify", "--input", str(dataset), "--defense", "jpeg", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "is being written by another run" in err and len(err.splitlines()) == 1
    assert not out.exists() and claim.exists()


def test_a_claim_left_by_a_killed_run_is_taken_over_and_released(dataset, tmp_path):
    out = tmp_path / "o"
    claim = write_claim(out, dead_pid())
    assert main(["purify", "--input", str(dataset), "--defense", "jpeg", "--out", str(out), "--quiet"]) == 0
    assert store.is_dataset(out) and not claim.exists()


def test_two_claims_on_one_location_exclude_each_other(tmp_path):
    with storage.claim(tmp_path / "x", "--out"):
        with pytest.raises(Exception, match="being written by another run"):
            with storage.claim(tmp_path / "x", "--out"):
                pass
    with storage.claim(tmp_path / "x", "--out"):  # released on exit
        pass


def test_an_unwritable_results_location_fails_before_the_trial(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc = main(["run", "--dataset", "digits", "--attack", "urp", "--set", "victim.epochs=1",
               "--results", str(tmp_path / "file" / "res"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("eclipse-ray: error: --results") and "not writable" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_doctor_names_each_corrupt_stale_or_duplicated_thing(dataset, model_dir, tmp_path, capsys):
    import shutil

    root = tmp_path / "study"
    good = store.write_dataset(root / ".cache" / "poisons" / "good", store.read_dataset(dataset)[0])
    bad = Path(store.write_dataset(root / ".cache" / "purified" / "bad", store.read_dataset(dataset)[0]))
    shard = bad / "train" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-40] + bytes(40))
    m = root / ".cache" / "models" / "m1"
    shutil.copytree(model_dir, m)
    storage.write_manifest(m)
    (m / "scheduler_config.json").write_text("{}")
    C.write_acc_ref(str(root / ".cache"), "k1", 0.5)
    C.write_acc_ref(str(root / ".cache"), "k2", 0.5)
    f = root / ".cache" / "acc_ref" / "k2.json"
    f.write_text(f.read_text().replace("0.5", "0.9"))
    row = {"config_hash": "h", "seed": 0, "test_acc": 0.5}
    append_rows(root, [row], name="a")
    append_rows(root, [row], name="b")  # the same trial twice
    (root / "part-zz.parquet").write_bytes(b"PAR1 not really")
    (root / ".cache" / "models" / ".train-abc" / "checkpoint").mkdir(parents=True)
    (root / ".cache" / "models" / ".train-abc" / "checkpoint" / "state.json").write_text("{}")
    write_claim(root, dead_pid())
    stale = root / f".part-x.parquet.tmp-{storage.HOST}-{dead_pid()}-abcdef"
    stale.write_bytes(b"half")
    capsys.readouterr()
    assert main(["doctor", str(root)]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()

    def has(kind, where):
        return any(line.split()[0] == kind and str(where) in line for line in lines)

    assert has("corrupt", bad) and "train/part-00000.parquet does not match" in out
    assert has("corrupt", m) and "scheduler_config.json does not match" in out
    assert has("corrupt", f)
    assert has("duplicate-row", root) and has("corrupt-part", root / "part-zz.parquet")
    assert has("interrupted", root / ".cache" / "models" / ".train-abc")  # a rerun continues it
    assert has("stale-temporary", stale)
    assert has("stale-claim", tmp_path / ".study.claim.json")
    assert not any(str(good) in line for line in lines)
    assert "problem(s)" in lines[-1]
    assert main(["doctor", str(dataset)]) == 0 and "0 problem(s)" in capsys.readouterr().out
    assert main(["doctor", str(tmp_path / "nope")]) == 2
