"""Writing matplotlib figures as PNG files atomically (temp name, then rename)."""

from __future__ import annotations

from pathlib import Path

from eclipse_ray.storage import replacing


def save_png(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` to ``path`` (parents created), close it, and return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
