"""Crash-consistent training directories shared by the DDPM and EBM trainers.

An output directory ``OUT`` moves through three states, each safe to kill:

* *training* — ``OUT/checkpoint/`` holds one ``<name>.safetensors`` per tensor dict
  (model, EMA, replay buffer …), ``optimizer.pt`` (a plain state dict, loaded with
  ``weights_only=True``) and ``state.json`` (iteration, losses, the flattened
  config). A checkpoint is written to ``OUT/.checkpoint.tmp`` and swapped in by two
  renames (the previous one parked as ``OUT/.checkpoint.old`` meanwhile), so a kill
  at any point leaves one whole checkpoint;
* *publishing* — the final model is written to ``OUT/.final/`` with its checksum
  manifest, then marked ``.final/.complete``; its files are then moved up into
  ``OUT`` one by one, the loader's marker (``config.json``) last;
* *done* — ``OUT`` holds the model and nothing else.

:func:`claim_out` brings a directory left by a kill back to one of these states
(a half-made temporary is dropped, a parked checkpoint restored, a marked final
model finished publishing), so a rerun continues and no temporary file stays.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from eclipse_ray import storage
from eclipse_ray.config import ConfigError, flatten

CKPT, CKPT_TMP, CKPT_OLD, FINAL, COMPLETE = "checkpoint", ".checkpoint.tmp", ".checkpoint.old", ".final", ".complete"
RUN_FILES = {CKPT, CKPT_TMP, CKPT_OLD, FINAL}


def save_checkpoint(ckpt: Path, tensors: dict[str, dict[str, torch.Tensor]], opt: torch.optim.Optimizer,
                    cfg: Any, iteration: int, losses: list[float]) -> None:
    """Write ``tensors`` (file stem → state dict), the optimiser and the training state; swap it in."""
    from safetensors.torch import save_file

    tmp, old = ckpt.parent / CKPT_TMP, ckpt.parent / CKPT_OLD
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for stem, state in tensors.items():
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / f"{stem}.safetensors")
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"iteration": iteration, "losses": losses, "config": flatten(cfg)}))
    if ckpt.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt: Path, cfg: Any, stems: tuple[str, ...], opt: torch.optim.Optimizer,
                    device: torch.device) -> tuple[dict[str, dict[str, torch.Tensor]], int, list[float]]:
    """(tensors by stem, iteration, losses) of a checkpoint made with ``cfg`` (optimiser restored in place);
    ``({}, 0, [])`` when there is none: a fresh start. A checkpoint made with other settings is refused."""
    from safetensors.torch import load_file

    if not (ckpt / "state.json").is_file():
        return {}, 0, []
    state = json.loads((ckpt / "state.json").read_text())
    if state["config"] != flatten(cfg):
        raise ConfigError(f"{ckpt.parent}: checkpoint was made with other settings; use a new output directory")
    tensors = {stem: load_file(ckpt / f"{stem}.safetensors", device=str(device)) for stem in stems}
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))
    return tensors, state["iteration"], state["losses"]


def claim_out(out: Path, cfg: Any, info_name: str, marker: str = "config.json") -> bool:
    """Check ``out`` before training: ``True`` when it already holds the model these settings make
    (a rerun after the end), ``False`` when training should start or resume there.

    A directory left by a kill is recovered first; anything else is refused.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; choose a new output directory")
    if not out.exists():
        return False
    names = {p.name for p in out.iterdir()}
    if marker not in names and not (out / FINAL / COMPLETE).is_file() and names - RUN_FILES:
        raise ConfigError(f"{out} already exists and is not an interrupted training run; choose a new directory")
    _recover(out)  # only a training directory gets here
    names = {p.name for p in out.iterdir()}
    if marker in names and not names & RUN_FILES:
        try:
            done = json.loads((out / info_name).read_text()).get("train")
        except (OSError, ValueError):
            done = None
        if done == flatten(cfg):
            return True
        raise ConfigError(f"{out} already holds a model trained with other settings; choose a new directory")
    if names - RUN_FILES:
        raise ConfigError(f"{out} already exists and is not an interrupted training run; choose a new directory")
    return False


def _recover(out: Path) -> None:
    if not (out / CKPT).exists() and (out / CKPT_OLD / "state.json").is_file():
        os.replace(out / CKPT_OLD, out / CKPT)  # killed between the two renames of a checkpoint swap
    shutil.rmtree(out / CKPT_TMP, ignore_errors=True)
    shutil.rmtree(out / CKPT_OLD, ignore_errors=True)
    if (out / FINAL / COMPLETE).is_file():
        _finish(out)  # killed while moving a finished model into place
    else:
        shutil.rmtree(out / FINAL, ignore_errors=True)  # killed while writing it: training resumes


def publish_model(out: Path, write: Callable[[Path], None], marker: str = "config.json") -> Path:
    """``write(dir)`` the final model into ``out/.final``, add its checksum manifest, mark it complete,
    then move it into ``out`` (``marker`` last) and drop the checkpoint."""
    final = Path(out) / FINAL
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    write(final)
    storage.write_manifest(final)
    (final / COMPLETE).write_text("")
    _finish(Path(out), marker)
    return Path(out)


def _finish(out: Path, marker: str = "config.json") -> None:
    final = out / FINAL
    names = sorted((p.name for p in final.iterdir() if p.name != COMPLETE), key=lambda n: (n == marker, n))
    for name in names:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        os.replace(final / name, out / name)
    shutil.rmtree(out / CKPT, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)


def check_intact(path: Path) -> None:
    """A model directory with a checksum manifest must match it (one without, e.g. a diffusers download,
    is taken as is)."""
    if (Path(path) / storage.MANIFEST).is_file():
        problems = storage.verify_manifest(path)
        if problems:
            raise ConfigError(f"defense.model={path}: corrupt ({problems[0]}); retrain it or restore it")
