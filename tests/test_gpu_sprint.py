"""The GPU sprint's ``--tiny`` mode: the whole prepared command on a 300-image digits subset, on the CPU
(≈ 1.5 min on 2 cores, most of it Ray Data and Tune start-up; hence a slow test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_tiny_sprint_prints_its_plan_writes_the_table_and_continues(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_sprint.py"), "--tiny", "--results", str(tmp_path / "s")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    assert "gpu_sprint plan on CPU" in out and "estimated total" in out
    assert out.index("estimated total") < out.index("# GPU sprint")  # the plan comes before the work
    report = (tmp_path / "s" / "report.md").read_text()
    for name in ("em", "eclipse", "none"):
        assert name in report
    clean = [ln for ln in report.splitlines() if ln.startswith("| none |")][0]
    assert float(clean.split("|")[2]) > 20.0  # the undefended victim learns the clean digits (10 classes)
    assert "Purification throughput" in report and "oneshot" in report and "philox" in report
    assert "device checks on CPU" in report and "FAIL" not in report and report.count("ok  ") == 4
    summary = json.loads(out.strip().splitlines()[-1])
    again = subprocess.run(cmd + ["--no-throughput"], capture_output=True, text=True, env=env, timeout=900,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage purify:" not in again.stdout + again.stderr  # a second call continues: nothing redone
    assert "device checks of an earlier call on this machine" in again.stdout  # nor the device checks
    assert json.loads(again.stdout.strip().splitlines()[-1])["wall_seconds"] < summary["wall_seconds"] / 10
    assert (tmp_path / "s" / "report.md").read_text().split("Wall time")[0] == report.split("Wall time")[0]


def test_every_cell_of_the_full_sprint_is_a_valid_config_with_or_without_compiling():
    """The GPU run must not fail on a setting: every full-size cell builds (as the sprint checks before any
    work), its diffusion purifiers draw their noise on the device, and ``--no-compile`` drops only the
    compile settings."""
    import importlib.util

    from eclipse_ray.trial import build_config

    load = importlib.util.spec_from_file_location("gpu_sprint", REPO / "benchmarks" / "gpu_sprint.py")
    sprint = sys.modules["gpu_sprint"] = importlib.util.module_from_spec(load)  # (its dataclasses look it up)
    load.loader.exec_module(sprint)
    fast, eager = sprint.specs(sprint.FULL), sprint.specs(sprint.FULL, compile=False)
    assert len(fast) == len(eager) == 42
    for a, b in zip(fast, eager):
        cfg = build_config(a["dataset"], a["attack"], a["defense"], a["set"])
        build_config(b["dataset"], b["attack"], b["defense"], b["set"])
        assert {k: v for k, v in a["set"].items() if "compile" not in k} == b["set"]
        assert not any("compile" in k for k in b["set"])
        if a["defense"] in sprint.DIFFUSION:
            assert cfg.defense.rng == "philox"
        if a["defense"] in ("eclipse", "puregen-ddpm"):
            assert cfg.defense.compile and cfg.defense.compile_mode == "reduce-overhead"
    assert sprint.without_compile(("--preset", "paper", "--compile", "--batch", "512", "--compile-mode",
                                   "max-autotune", "--rng", "philox")) == ("--preset", "paper", "--batch", "512",
                                                                           "--rng", "philox")
