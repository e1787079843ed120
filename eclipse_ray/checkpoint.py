"""Resumable training checkpoints shared by the DDPM and EBM trainers (safetensors + plain JSON state).

``CHECKPOINT/`` holds one ``<name>.safetensors`` per tensor dict (model, EMA,
replay buffer …), ``optimizer.pt`` (a plain state dict, loaded with
``weights_only=True``) and ``state.json`` (iteration, losses, the flattened
config). A checkpoint is written to a temporary directory and renamed into
place, so a run killed while saving keeps the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from eclipse_ray.config import ConfigError, flatten


def save_checkpoint(ckpt: Path, tensors: dict[str, dict[str, torch.Tensor]], opt: torch.optim.Optimizer,
                    cfg: Any, iteration: int, losses: list[float]) -> None:
    """Write ``tensors`` (file stem → state dict), the optimiser and the training state atomically."""
    from safetensors.torch import save_file

    tmp = ckpt.parent / ".checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for stem, state in tensors.items():
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / f"{stem}.safetensors")
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"iteration": iteration, "losses": losses, "config": flatten(cfg)}))
    shutil.rmtree(ckpt, ignore_errors=True)
    os.replace(tmp, ckpt)


def load_checkpoint(ckpt: Path, cfg: Any, stems: tuple[str, ...], opt: torch.optim.Optimizer,
                    device: torch.device) -> tuple[dict[str, dict[str, torch.Tensor]], int, list[float]] | None:
    """(tensors by stem, iteration, losses) of a checkpoint made with ``cfg`` (optimiser restored in place);
    ``None`` when there is none. A checkpoint made with other settings is refused."""
    from safetensors.torch import load_file

    if not (ckpt / "state.json").is_file():
        return None
    state = json.loads((ckpt / "state.json").read_text())
    if state["config"] != flatten(cfg):
        raise ConfigError(f"{ckpt.parent}: checkpoint was made with other settings; use a new output directory")
    tensors = {stem: load_file(ckpt / f"{stem}.safetensors", device=str(device)) for stem in stems}
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))
    return tensors, state["iteration"], state["losses"]
