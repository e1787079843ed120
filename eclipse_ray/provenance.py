"""Where a result came from: code version, package versions, device, time."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

PACKAGES = ("eclipse_ray", "torch", "torchvision", "diffusers", "ray", "numpy")


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The commit of the eclipse_ray checkout (with ``-dirty`` if modified), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[f"version.{name}"] = "absent"
    return out


def device_name(device: Any) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return f"cpu:{platform.processor() or platform.machine()}"


def provenance(device: Any) -> dict[str, Any]:
    return {"git_sha": git_sha(), **package_versions(), "device": device_name(device),
            "host": platform.node(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
