"""Kill tests: ``purify`` and ``run`` killed (``os._exit``, as SIGKILL: no cleanup runs) at their file
operations — before one, or with the file torn half-written — then rerun: the same result as an
undisturbed run, and no temporary or claim left anywhere. Each kill is a fresh process (seconds
each), so these run with the heavy tests (``pytest -m heavy``, as CI does)."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eclipse_ray.data import store
from eclipse_ray.result_store import read_results

REPO = Path(__file__).resolve().parents[1]
LEFTOVERS = (".*.tmp-*", ".checkpoint.tmp", ".checkpoint.old", ".final", ".*.purify-*", ".*.claim.json",
             ".train-*", ".eclipse_ray-probe-*")


def cli(tmp_path: Path, at: int, mode: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ECLIPSE_RAY_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "tests" / "faults.py"), str(at), mode, "--", "eclipse-ray",
                           *argv], env=env, capture_output=True, text=True, timeout=300)


def count_ops(tmp_path: Path, *argv: str) -> int:
    r = cli(tmp_path, 0, "before", *argv)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.strip().splitlines()[-1].split("=")[1])


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if any(fnmatch.fnmatch(p.name, pat) for pat in LEFTOVERS)]


def points(n: int, every: int) -> list[tuple[int, str]]:
    return [(at, "torn" if k % 2 else "before") for k, at in enumerate(range(1, n + 1, every))]


@pytest.fixture(scope="module")
def dataset(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("in") / "d"
    store.write_dataset(out, {k: s.subset(np.arange(48)) for k, s in digits.splits.items()}, shard_rows=12)
    return out


def _purify_killed_everywhere(dataset, tmp_path, every):
    args = lambda out: ("purify", "--input", str(dataset), "--defense", "jpeg", "--out", str(out), "--quiet")
    n = count_ops(tmp_path, *args(tmp_path / "ref"))
    want = store.read_split(tmp_path / "ref", "train").images
    assert n >= 10
    for at, mode in points(n, every):
        out = tmp_path / f"k{at}"
        killed = cli(tmp_path, at, mode, *args(out))
        assert killed.returncode == 137, (at, killed.stderr)
        again = cli(tmp_path, -1, mode, *args(out))
        assert again.returncode == 0, (at, mode, again.stderr)
        assert np.array_equal(store.read_split(out, "train").images, want), (at, mode)
        assert store.verify_dataset(out) == []
    assert leftovers(tmp_path) == []


@pytest.mark.heavy
def test_purify_killed_at_a_spread_of_file_operations_resumes(dataset, tmp_path):
    _purify_killed_everywhere(dataset, tmp_path, 11)


@pytest.mark.heavy
def test_purify_killed_at_every_file_operation_resumes(dataset, tmp_path):
    _purify_killed_everywhere(dataset, tmp_path, 1)


def _run_killed_everywhere(tmp_path, every):
    args = lambda res: ("run", "--dataset", "digits", "--attack", "urp", "--defense", "gray", "--set",
                        "victim.epochs=1", "victim.width=8", "--results", str(res), "--quiet")
    n = count_ops(tmp_path, *args(tmp_path / "ref"))
    want = read_results(tmp_path / "ref")
    for at, mode in points(n, every):
        res = tmp_path / f"r{at}"
        for d in ("cache",):  # each kill starts from an empty cache, like the reference run
            import shutil

            shutil.rmtree(tmp_path / d, ignore_errors=True)
        killed = cli(tmp_path, at, mode, *args(res))
        assert killed.returncode == 137, (at, killed.stderr)
        again = cli(tmp_path, -1, mode, *args(res))
        assert again.returncode == 0, (at, mode, again.stderr)
        got = read_results(res)
        assert len(got) == 1 and got["config_hash"].iloc[0] == want["config_hash"].iloc[0]
        for col in ("test_acc", "poison_success", "acc_ref", "purify_psnr_poisoned"):
            assert got[col].iloc[0] == want[col].iloc[0], (at, mode, col)
        assert leftovers(tmp_path) == [], (at, mode)


@pytest.mark.heavy
def test_run_killed_at_a_spread_of_file_operations_resumes(tmp_path):
    _run_killed_everywhere(tmp_path, 31)


@pytest.mark.heavy
def test_run_killed_at_every_file_operation_resumes(tmp_path):
    _run_killed_everywhere(tmp_path, 1)
