"""Crash consistency: a training run killed at any file operation (before it, or with the file torn
half-written) resumes on rerun to the same model as an undisturbed run, and leaves no temporary behind."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch

from eclipse_ray import storage
from eclipse_ray.data.imageset import ImageSet


class Killed(BaseException):
    """A simulated kill (not an Exception, so no code path can swallow it)."""


class Faults:
    """Counts file operations; the ``at``-th one kills the run, before it (``torn=False``) or after
    writing half of the file it was writing (``torn=True``)."""

    def __init__(self, monkeypatch, at: int | None = None, torn: bool = False):
        self.n, self.at, self.torn = 0, at, torn
        real_replace, real_rmtree = os.replace, shutil.rmtree
        real_write, real_save, real_tsave = pathlib.Path.write_text, safetensors.torch.save_file, torch.save

        def hit(target=None):
            self.n += 1
            if self.n == self.at:
                if self.torn and target is not None:
                    pathlib.Path(target).write_bytes(b"\x00half-written")
                raise Killed(f"killed at operation {self.n}")

        def replace(a, b):
            hit()
            return real_replace(a, b)

        def rmtree(p, *a, **k):
            hit()
            return real_rmtree(p, *a, **k)

        def write_text(self_, data, *a, **k):
            hit(self_)
            return real_write(self_, data, *a, **k)

        def save_file(tensors, path, *a, **k):
            hit(path)
            return real_save(tensors, path, *a, **k)

        def tsave(obj, f, *a, **k):
            hit(f if isinstance(f, (str, os.PathLike)) else None)
            return real_tsave(obj, f, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(shutil, "rmtree", rmtree)
        monkeypatch.setattr(pathlib.Path, "write_text", write_text)
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
        monkeypatch.setattr(torch, "save", tsave)


@pytest.fixture(scope="module")
def clean(digits):
    s = digits.train
    return ImageSet(s.images[:32], s.labels[:32], s.index[:32], np.zeros(32, bool), s.classes)


def _diffusion(clean, out):
    from eclipse_ray.diffusion.train import DiffusionTrainConfig, train_diffusion

    cfg = dataclasses.replace(DiffusionTrainConfig(), iterations=3, checkpoint_every=2, batch_size=8,
                              num_steps=100, device="cpu")
    return train_diffusion(cfg, clean, out, progress=False)


def _ebm(clean, out):
    from eclipse_ray.ebm.train import EBMTrainConfig, train_ebm

    cfg = dataclasses.replace(EBMTrainConfig(), preset="tiny", iterations=3, checkpoint_every=2, batch_size=8,
                              mcmc_steps=2, buffer_size=16, device="cpu")
    return train_ebm(cfg, clean, out, progress=False)


def _weights(out: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.safetensors"))}


def _kill_everywhere(train, clean, tmp_path, monkeypatch, points):
    ref = train(clean, tmp_path / "ref" / "model")
    want = _weights(ref)
    assert want and not storage.verify_manifest(ref)
    with monkeypatch.context() as mp:
        count = Faults(mp)
        train(clean, tmp_path / "count" / "model")
    assert count.n >= 15  # a checkpoint swap and the publish, every write and rename in them
    for at, torn in points(count.n):
        out = tmp_path / f"k{at}{'t' if torn else ''}" / "model"
        with monkeypatch.context() as mp:
            Faults(mp, at, torn)
            with pytest.raises(Killed):
                train(clean, out)
        assert train(clean, out) == out
        assert _weights(out) == want, (at, torn)
        assert sorted(p.name for p in out.parent.iterdir()) == ["model"], (at, torn)
        names = {p.name for p in out.iterdir()}
        assert names == {p.name for p in ref.iterdir()}, (at, torn, names)
        assert not storage.verify_manifest(out)
    assert train(clean, out) == out  # a rerun after the end is a no-op


TRAINERS = pytest.mark.parametrize("train", [_diffusion, _ebm], ids=["train-diffusion", "train-ebm"])


@pytest.mark.slow
@TRAINERS
def test_killed_at_a_seventh_of_the_file_operations_resumes_to_the_same_model(train, clean, tmp_path, monkeypatch):
    """Every seventh operation, alternately before it and with its file torn (the default run)."""
    _kill_everywhere(train, clean, tmp_path, monkeypatch,
                     lambda n: [(at, at % 2 == 0) for at in range(1, n + 1, 7)])


@pytest.mark.heavy
@TRAINERS
def test_killed_at_every_file_operation_resumes_to_the_same_model(train, clean, tmp_path, monkeypatch):
    _kill_everywhere(train, clean, tmp_path, monkeypatch,
                     lambda n: [(at, torn) for at in range(1, n + 1) for torn in (False, True)])
