"""Shared fixtures: the offline digits dataset and a small, quick victim."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# No Ray Data usage poller: its daemon thread outlives every test, fails to reach Prometheus every
# 10 s and formats the traceback, and on CPython 3.11.7 that ast.parse races any parse in the main
# thread ("SystemError: AST constructor recursion depth mismatch"), which once failed a CI run at
# pytest's terminal summary after every test had passed.
os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")

from eclipse_ray.data.sources import Dataset, load_digits  # noqa: E402
from eclipse_ray.victim.train import VictimConfig  # noqa: E402

# Small enough for a 2-core CI machine; big enough that poisons and defenses show.
QUICK_VICTIM = {"victim.epochs": "5", "victim.width": "16"}


def pytest_collection_modifyitems(config, items):
    """A heavy test is also a slow one (``-m "not slow"`` leaves both out)."""
    for item in items:
        if item.get_closest_marker("heavy") is not None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="session")
def quick_victim() -> VictimConfig:
    return VictimConfig(epochs=5, width=16)


@pytest.fixture(scope="module")
def s3():
    """A bucket on an S3-API server on localhost; the AWS_* variables point at it for this module."""
    from s3server import make_bucket, s3_env, s3_server

    with s3_server() as url:
        mp = pytest.MonkeyPatch()
        for k, v in s3_env(url).items():
            mp.setenv(k, v)
        make_bucket("eclipse-test")
        try:
            yield "s3://eclipse-test"
        finally:
            mp.undo()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny diffusion UNet with random weights (linear T = 1,000): enough to run every purifier path."""
    import torch
    from diffusers import DDPMScheduler

    from eclipse_ray.diffusion.unet import build_unet, save_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("m")
    save_model(build_unet("tiny"), DDPMScheduler(num_train_timesteps=1000), out, {})
    return out
