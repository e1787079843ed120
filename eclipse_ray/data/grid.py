"""Labelled image grids (PNG): what a dataset, a poison or a purification looks like."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.figures import save_png


def pick_rows(s: ImageSet, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` rows, half of them poisoned when there are poisoned samples, in index order."""
    rng = np.random.default_rng(seed)
    pois, clean = np.flatnonzero(s.poisoned), np.flatnonzero(~s.poisoned)
    k = min(len(pois), n // 2 if len(clean) else n)
    rows = np.concatenate([rng.choice(pois, k, replace=False),
                           rng.choice(clean, min(len(clean), n - k), replace=False)])
    return rows[np.argsort(s.index[rows])]


def save_grid(s: ImageSet, path: str | Path, n: int = 40, cols: int = 10, title: str = "",
              rows: np.ndarray | None = None) -> Path:
    """Draw ``n`` samples with their class names; poisoned samples get a red frame and a ★."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pick_rows(s, n) if rows is None else rows
    nrow = max(1, int(np.ceil(len(rows) / cols)))
    fig, axes = plt.subplots(nrow, cols, figsize=(cols * 1.2, nrow * 1.35 + (0.4 if title else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows):
        ax.imshow(s.images[r], interpolation="nearest")
        name = s.classes[s.labels[r]]
        poisoned = bool(s.poisoned[r])
        ax.set_title(("★ " if poisoned else "") + name[:12], fontsize=7, color="red" if poisoned else "black")
        if poisoned:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
