"""Plots (PNG) and a markdown report of a results store.

``plot_pareto`` draws one panel per (dataset, attack): every defense config as
a point (mean over seeds, error bars = std), the frontier joined and
highlighted, points labelled by defense and noise level. ``plot_sigma`` draws
accuracy against the noise level (sweeps over σ). ``write_report`` puts the
summary table, the frontier and the plots in ``report.md``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from eclipse_ray import storage
from eclipse_ray.figures import save_png
from eclipse_ray.results.html import labelled, varying_settings, write_html
from eclipse_ray.results.pareto import pareto, point_label, summarize
from eclipse_ray.result_store import HEADLINE, read_results


def plot_pareto(df: pd.DataFrame, path: str | Path, x: str = "test_acc", y: str = "poison_success",
                summary: pd.DataFrame | None = None) -> Path | None:
    """One panel per (dataset, attack); returns the PNG path, or None when there is nothing to draw
    (``summary``: :func:`summarize` of the labelled rows, when the caller has it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = pareto(labelled(df), x, y, summary)  # panels named by dataset label, never a path
    if p.empty or f"{y}_mean" not in p:
        return None
    panels = list(p.groupby(["dataset", "attack.name"]))
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, ((dataset, attack), g) in zip(axes.flat, panels):
        for name, d in g.groupby("defense.name"):
            ax.errorbar(d[f"{x}_mean"], d[f"{y}_mean"], xerr=d[f"{x}_std"].fillna(0), yerr=d[f"{y}_std"].fillna(0),
                        fmt="o", ms=5, alpha=0.8, label=name, capsize=2)
        front = g[g["on_front"]].sort_values(f"{x}_mean")
        ax.plot(front[f"{x}_mean"], front[f"{y}_mean"], "k--", lw=1.2, label="Pareto front")
        ax.scatter(front[f"{x}_mean"], front[f"{y}_mean"], s=140, facecolors="none", edgecolors="k", lw=1.5)
        for _, r in g.iterrows():
            ax.annotate(point_label(r), (r[f"{x}_mean"], r[f"{y}_mean"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_title(f"{dataset} · {attack}", fontsize=9)
        ax.set_xlabel(f"{x} (higher is better)")
        ax.set_ylabel(f"{y} (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def plot_sigma(df: pd.DataFrame, path: str | Path, summary: pd.DataFrame | None = None) -> Path | None:
    """Test accuracy against the noise level σ, one panel per (dataset, attack), one line per purifier;
    the undefended and model-free defenses as horizontal lines. None when fewer than 3 σ values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize(labelled(df)) if summary is None else summary
    if s.empty or "defense.sigma" not in s or s["defense.sigma"].dropna().nunique() < 3:
        return None
    panels = list(s.groupby(["dataset", "attack.name"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, ((dataset, attack), g) in zip(axes.flat, panels):
        for name, d in g.groupby("defense.name"):
            if d["defense.sigma"].notna().any():
                d = d.sort_values("defense.sigma")
                ax.errorbar(d["defense.sigma"] * 255, d["test_acc_mean"], yerr=d["test_acc_std"].fillna(0),
                            marker="o", capsize=2, label=name)
            else:
                ax.axhline(d["test_acc_mean"].iloc[0], ls="--" if name == "none" else ":", lw=1.2,
                           color="grey" if name == "none" else "black", label=f"{name} (no σ)")
        ax.set_title(f"{dataset} · {'clean data' if attack == 'none' else attack}", fontsize=9)
        ax.set_xlabel("σ × 255 (noise added before denoising)")
        ax.set_ylabel("test_acc")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def _table(df: pd.DataFrame, cols: list[str]) -> str:
    cols = [c for c in cols if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df[cols].iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:.4g}" if isinstance(v, (float, np.floating)) and not pd.isna(v) else
                         ("" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_columns(df: pd.DataFrame) -> list[str]:
    """The summary table's columns: what names a config (every setting that varies within one
    (dataset, attack, defense) included), seeds, then each headline metric's mean (and std for the two
    the Pareto front plots)."""
    cols = ["dataset", "attack.name", "defense.name", *varying_settings(df), "seeds"]
    for m in HEADLINE:
        cols += [f"{m}_mean", f"{m}_std"] if m in ("test_acc", "poison_success") else [f"{m}_mean"]
    return cols


def write_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 cache_dir: str | None = None) -> str:
    """``report.md``, ``report.html``, ``pareto.png`` and ``sigma.png`` for the store at ``study_dir``
    (local path or URI); ``cache_dir``: where the study's datasets are (default: its own ``.cache``, else
    ``$ECLIPSE_RAY_CACHE``), for the HTML report's image strips."""
    study = storage.normalize(study_dir)
    out = storage.normalize(out_dir) if out_dir else study
    raw = read_results(study)
    if raw.empty:
        raise FileNotFoundError(f"{study}: no results (no part-*.parquet files)")
    df = labelled(raw)
    cols = summary_columns(df)
    s = summarize(df)  # once: the plots, the Markdown and the HTML report share it
    with tempfile.TemporaryDirectory(prefix="eclipse_ray-report-") as tmp:
        png = plot_pareto(df, Path(tmp) / "pareto.png", summary=s)
        sigma_png = plot_sigma(df, Path(tmp) / "sigma.png", summary=s)
        for f in (png, sigma_png):
            if f is not None:
                storage.write_bytes(storage.join(out, f.name), Path(f).read_bytes())
    p = pareto(df, summary=s)
    front = p[p["on_front"]] if "on_front" in p else p.iloc[0:0]
    text = [f"# Results: {study.rstrip('/').rsplit('/', 1)[-1]}", "",
            f"{len(df)} trials, {s.shape[0]} configurations, seeds {sorted(df['seed'].unique().tolist())}.", "",
            "## Summary (mean and std over seeds)", "", _table(s, cols), "",
            "## Pareto frontier per (dataset, attack)", "",
            "Higher `test_acc`, lower `poison_success` (ASR for backdoors; relative accuracy loss for "
            "availability poisons).", "", _table(front, cols), "",
            "Interactive version (hover, sort, filter, image strips): [report.html](report.html).", ""]
    if png is not None:
        text += ["## Plot", "", f"![Pareto]({png.name})", ""]
    if sigma_png is not None:
        text += ["## Accuracy against σ", "", f"![sigma]({sigma_png.name})", ""]
    path = storage.join(out, "report.md")
    storage.write_bytes(path, "\n".join(text).encode())
    write_html(study, raw, out, cache_dir, summary=s)
    return path
