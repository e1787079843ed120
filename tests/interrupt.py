"""A training killed at a chosen iteration, for the resume tests."""

from __future__ import annotations

import contextlib

import pytest


@contextlib.contextmanager
def killed_at(module, name: str, iteration: int):
    """Within the block, ``module.name(cfg, it)`` (a per-iteration function of a training loop) raises
    ``KeyboardInterrupt`` at ``iteration``, as a kill would stop the run there; the block must be stopped."""
    real = getattr(module, name)

    def stop(cfg, it):
        if it == iteration:
            raise KeyboardInterrupt("killed")
        return real(cfg, it)

    setattr(module, name, stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        setattr(module, name, real)
