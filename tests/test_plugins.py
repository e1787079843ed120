"""Plugins: a third-party attack, defense, victim network and dataset source, from a ``--plugin`` file or an
installed package (entry points), get the built-ins' validation, listing, rows, caching and Ray distribution;
a broken plugin is one line naming it, and the built-ins keep working.

Every command runs in a subprocess: plugins register into process-wide registries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eclipse_ray.data.store import read_dataset

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_defense"

PLUGIN = textwrap.dedent('''
    """Test plugin: an attack, a victim network and a dataset source."""
    from dataclasses import dataclass
    from typing import ClassVar

    import numpy as np
    import torch.nn as nn

    from eclipse_ray.attacks import ATTACKS
    from eclipse_ray.attacks.base import AVAILABILITY, AttackConfig, add_perturbation, mask_of, rate_rows, \\
        setting_rate, setting_seed
    from eclipse_ray.config import setting
    from eclipse_ray.data.sources import DATASETS, from_arrays
    from eclipse_ray.victim.nets import VICTIMS


    @ATTACKS.register
    @dataclass(frozen=True)
    class Stripes(AttackConfig):
        name: ClassVar[str] = "stripes"
        kind: ClassVar[str] = AVAILABILITY
        summary: ClassVar[str] = "one horizontal stripe per class"
        eps: float = setting(16 / 255, "stripe amplitude", ge=0.0, le=1.0)
        rate: float = setting_rate(1.0)
        seed: int = setting_seed()

        def poison_train(self, train, rng):
            h = train.image_shape[0]
            patterns = np.zeros((train.num_classes, *train.image_shape), np.float32)
            for k in range(train.num_classes):
                patterns[k, (3 * k) % h] = self.eps
            rows = rate_rows(len(train), self.rate, rng)
            return add_perturbation(train.images, rows, patterns[train.labels[rows]]), train.labels, \\
                mask_of(rows, len(train))


    def tiny(num_classes, width):
        """one conv layer and a linear head"""
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                             nn.Linear(128, num_classes))


    VICTIMS.register(tiny, "tiny")


    def blobs(arg, data_dir):
        """three classes of coloured noise, ARG images per class (default 30)"""
        n = int(arg or 30)
        rng = np.random.default_rng(0)
        y = np.repeat(np.arange(3), n)
        x = rng.integers(0, 80, (len(y), 32, 32, 3)).astype(np.uint8)
        for c in range(3):
            x[y == c, :, :, c] += 150
        half = np.arange(len(y)) % 2 == 0
        return from_arrays("blobs", x[half], y[half], x[~half], y[~half])


    DATASETS.register(blobs, "blobs")
''')


def _run(args, cwd, env=None, check=True):
    e = {**os.environ, **(env or {})}
    e.pop("ECLIPSE_RAY_PLUGINS", None)
    p = subprocess.run([sys.executable, "-m", "eclipse_ray.cli", *args], cwd=cwd, env=e, capture_output=True,
                       text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"rc={p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p


def _install_example(tmp_path) -> tuple[Path, dict[str, str]]:
    """pip-install examples/my_defense into a folder of its own: (its source copy, the env that sees it)."""
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True, timeout=300)
    return src, {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN)
    shutil.copy(EXAMPLE / "my_defense.py", tmp_path / "my_defense.py")
    return path


@pytest.mark.slow
def test_list_shows_plugin_entries_with_their_settings(plugin, tmp_path):
    out = _run(["list", "--plugin", plugin.name, "--plugin", "my_defense.py"], tmp_path).stdout
    assert "stripes" in out and "attack.eps=0.0627451" in out and "(plugin my_plugin.py)" in out
    assert "median" in out and "defense.size=3" in out and "(plugin my_defense.py)" in out
    assert "tiny " in out and "blobs[:ARG]" in out
    assert "jpeg" in out and "eclipse" in out  # built-ins still there, and not named as a plugin's
    assert [ln.split()[0] for ln in out.splitlines() if "(plugin " in ln] == ["blobs[:ARG]", "stripes", "median",
                                                                             "tiny"]
    # a plugin file given by a relative path keeps working after the process changes directory (Tune workers may)
    code = ("import os; from eclipse_ray.registry import use_plugins; from eclipse_ray.defenses import DEFENSES; "
            "use_plugins(['my_defense.py']); os.chdir('/'); print('jpeg' in DEFENSES, 'median' in DEFENSES)")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["True", "True"], p.stderr[-2000:]
    # --plugin is never abbreviated (it is read before the parser): --plug is refused, not ignored
    assert _run(["--plug", "my_defense.py", "list"], tmp_path, check=False).returncode == 2


@pytest.mark.slow
def test_a_trial_with_plugin_attack_defense_victim_and_dataset(plugin, tmp_path):
    """The example package installed (its defense by entry point), the rest from a --plugin file."""
    _, env = _install_example(tmp_path)
    assert "(plugin my_defense)" in _run(["list"], tmp_path, env).stdout
    # installed and given as a file too: the file wins (loaded first everywhere), the entry point is a warning
    both = _run(["--plugin", "my_defense.py", "list"], tmp_path, env)
    assert "(plugin my_defense.py)" in both.stdout and "registered twice" in both.stderr
    res = tmp_path / "res"
    p = _run(["--plugin", str(plugin), "run", "--dataset", "blobs:20", "--attack", "stripes", "--defense", "median",
              "--set", "victim.arch=tiny", "victim.epochs=2", "defense.size=5", "--results", str(res), "--quiet"],
             tmp_path, env)
    row = json.loads(p.stdout.strip().splitlines()[-1])
    assert row["attack.name"] == "stripes" and row["defense.name"] == "median"
    df = pd.concat(pd.read_parquet(f) for f in sorted(res.glob("part-*.parquet")))
    assert df["victim.arch"].tolist() == ["tiny"] and df["defense.size"].tolist() == [5]
    assert df["dataset"].tolist() == ["blobs:20"] and 0.0 <= df["test_acc"].iloc[0] <= 1.0
    assert df["purify_psnr_poisoned"].iloc[0] < 60  # the median filter changed pixels
    _run(["results", "report", str(res)], tmp_path)
    assert "median" in (res / "report.md").read_text()
    # the plugin's settings are validated like a built-in's: one line, nothing written
    bad = _run(["--plugin", str(tmp_path / "my_defense.py"), "run", "--dataset", "digits", "--defense", "median",
                "--set", "defense.size=4", "--results", str(tmp_path / "bad")], tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "eclipse-ray: error: defense.size=4: must be odd"
    assert not (tmp_path / "bad").exists()


@pytest.mark.heavy
def test_installed_package_purifies_on_ray_like_the_file_plugin(tmp_path):
    """The example package, pip-installed, registers by its entry point; Ray Data actors find it, and its
    output is the same bytes as the in-process purification with the single-file form."""
    src, env = _install_example(tmp_path)
    _run(["poison", "--dataset", "digits", "--attack", "lsp", "--out", "poisoned"], tmp_path)
    _run(["purify", "--input", "poisoned", "--defense", "median", "--out", "ray", "--actors", "1", "--quiet"],
         tmp_path, env)
    _run(["--plugin", str(src / "my_defense.py"), "purify", "--input", "poisoned", "--defense", "median",
          "--out", "local", "--quiet"], tmp_path)
    ray, local = (read_dataset(tmp_path / d)[0]["train"] for d in ("ray", "local"))
    poisoned = read_dataset(tmp_path / "poisoned")[0]["train"]
    assert len(ray) == len(local) == len(poisoned) and (ray.index == poisoned.index).all()
    assert np.array_equal(ray.images, local.images) and not np.array_equal(ray.images, poisoned.images)


@pytest.mark.slow
def test_broken_plugins(tmp_path):
    # a broken --plugin file: one line naming it, exit 2
    (tmp_path / "boom.py").write_text("raise RuntimeError('half-written plugin')\n")
    p = _run(["--plugin", "boom.py", "list"], tmp_path, check=False)
    assert p.returncode == 2 and p.stderr.strip() == \
        "eclipse-ray: error: --plugin boom.py: RuntimeError: half-written plugin"
    # a plugin taking a built-in's name
    (tmp_path / "clash.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from typing import ClassVar
        from eclipse_ray.defenses import DEFENSES, DefenseConfig

        @DEFENSES.register
        @dataclass(frozen=True)
        class Mine(DefenseConfig):
            name: ClassVar[str] = "jpeg"
    '''))
    p = _run(["--plugin", "clash.py", "list"], tmp_path, check=False)
    assert p.returncode == 2 and p.stderr.strip() == \
        "eclipse-ray: error: --plugin clash.py: defense 'jpeg' registered twice (by plugin clash.py)"
    (tmp_path / "npz.py").write_text("from eclipse_ray.data.sources import DATASETS\n"
                                     "DATASETS.register(lambda arg, data_dir: None, 'npz')\n")
    p = _run(["--plugin", "npz.py", "list"], tmp_path, check=False)
    assert p.returncode == 2 and "dataset 'npz' registered twice (by plugin npz.py): a built-in has that name" \
        in p.stderr
    # a broken installed plugin: a one-line warning, and the built-ins keep working
    site = tmp_path / "site"
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[eclipse_ray.defenses]\nbroken = broken_mod:Nope\n")
    (site / "broken_mod.py").write_text("import not_a_module_anywhere\n")
    p = _run(["list"], tmp_path, {"PYTHONPATH": str(site)})
    warnings = [ln for ln in p.stderr.splitlines() if "broken" in ln]
    assert warnings == ["eclipse-ray: warning: plugin 'broken' (eclipse_ray.defenses = broken_mod:Nope) not loaded: "
                        "ModuleNotFoundError: No module named 'not_a_module_anywhere'"]
    assert "jpeg" in p.stdout and "eclipse" in p.stdout


def test_sweep_takes_extra_defenses_for_every_grid_point():
    sys.path.insert(0, str(ROOT / "sweeps"))
    from _common import with_defenses

    from eclipse_ray.distributed.tune import spec
    from eclipse_ray.presets import PRESETS

    preset = PRESETS["smoke"]
    specs = [spec("digits", "badnets", d, {"seed": str(s), "attack.rate": r}) for s in (0, 1)
             for r in ("0.05", "0.2") for d in ("none", "eclipse")]
    out = with_defenses(specs, ["jpeg", "none"], preset, {"victim.epochs": "1"})
    added = out[len(specs):]
    assert [(s["defense"], s["set"]["seed"], s["set"]["attack.rate"]) for s in added] == [
        ("jpeg", "0", "0.05"), ("jpeg", "0", "0.2"), ("jpeg", "1", "0.05"), ("jpeg", "1", "0.2")]
    assert all(s["set"]["victim.epochs"] == "1" for s in added)


@pytest.mark.heavy
def test_smoke_sweep_with_a_plugin_defense(tmp_path):
    """The README's main job with a plugin defense added: its rows and the report carry it."""
    shutil.copy(EXAMPLE / "my_defense.py", tmp_path / "my_defense.py")
    env = {**os.environ, "ECLIPSE_RAY_CACHE": str(tmp_path / "cache")}
    env.pop("ECLIPSE_RAY_PLUGINS", None)
    p = subprocess.run([sys.executable, str(ROOT / "sweeps" / "poison_rate_sweep.py"), "--preset", "smoke",
                        "--plugin", "my_defense.py", "--defense", "median", "--results", "study"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    df = pd.concat(pd.read_parquet(f) for f in sorted((tmp_path / "study").glob("part-*.parquet")))
    median = df[df["defense.name"] == "median"]
    assert sorted(median["attack.rate"].tolist()) == [0.05, 0.2]
    assert "median" in (tmp_path / "study" / "report.md").read_text()
