"""Cluster definitions parse and agree with the package (Ray version, entrypoints)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pinned_ray() -> str:
    m = re.search(r'"ray\[[a-z,]+\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert m, "pyproject.toml must pin ray"
    return m.group(1)


def test_cluster_files_parse_and_use_the_pinned_ray():
    version = pinned_ray()
    files = sorted((ROOT / "cluster").glob("*.yaml"))
    assert {f.name for f in files} >= {"aws.yaml", "gcp.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"}
    for f in files:
        doc = yaml.safe_load(f.read_text())
        text = f.read_text()
        images = re.findall(r"rayproject/ray:([0-9.]+)", text)
        assert images and set(images) == {version}, f"{f.name}: image tags {images} != {version}"
        if doc.get("kind") in ("RayCluster", "RayJob"):
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            assert spec["rayVersion"] == version
            gpu = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert gpu["nvidia.com/gpu"] == 1
        else:
            assert doc["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
            assert version in " ".join(doc.get("setup_commands", []))


def test_entrypoints_exist():
    job = yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text())
    script = job["spec"]["entrypoint"].split()[1]
    assert (ROOT / script).is_file()
    for name in ("noise_sweep.py", "steps_sweep.py", "poison_rate_sweep.py"):
        assert (ROOT / "sweeps" / name).is_file()
    readme = (ROOT / "cluster" / "README.md").read_text()
    assert "ray job submit" in readme and "RAY_AUTH_TOKEN" in readme
