"""Writing matplotlib figures as PNG files atomically (temp name, then rename)."""

from __future__ import annotations

import os
from pathlib import Path


def save_png(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` to ``path`` (parents created), close it, and return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path
