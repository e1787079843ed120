"""Connecting to Ray: the cluster at ``RAY_ADDRESS`` (``ray job submit``), or an embedded one."""

from __future__ import annotations

import os


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Attach to ``address`` / ``RAY_ADDRESS`` (e.g. under ``ray job submit``), else start an embedded Ray
    (with at least ``num_cpus`` logical CPUs, so that an actor pool of that size fits on a small machine)."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, ignore_reinit_error=True)
    else:  # workers see the storage settings (AWS_*: object-store endpoint and keys; ECLIPSE_RAY_*)
        cpus = max(num_cpus or 0, os.cpu_count() or 1)
        env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "ECLIPSE_RAY_"))}
        ray.init(num_cpus=cpus, include_dashboard=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": env} if env else None)
