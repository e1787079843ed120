"""Seed-aggregated tables and Pareto frontiers of accuracy against poison success (docs/design.md §8).

A defense config is a point (mean ``test_acc``, mean ``poison_success``) over
its seeds; per (dataset, attack) the frontier keeps the configs no other config
beats on both (higher accuracy *and* lower poison success).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eclipse_ray.result_store import METRIC_NAMES
from eclipse_ray.results.columns import config_strings, with_added_defaults

GROUP = ("dataset", "attack.name", "defense.name")
LEVELS = ("defense.sigma", "defense.t_star", "defense.sampler", "defense.steps", "defense.model_calls",
          "attack.rate", "attack.eps", "defense.quality")
METRICS = METRIC_NAMES  # aggregated over seeds (those present)


def config_columns(df: pd.DataFrame) -> list[str]:
    """Columns that identify a configuration apart from its seed (dataset, attack.*, defense.*, victim.*)."""
    keep = [c for c in df.columns if c == "dataset" or c.split(".")[0] in ("attack", "defense", "victim")]
    return [c for c in keep if c != "attack.kind"]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count of the metrics over the distinct seeds of each configuration.

    Rows of one seed (a trial stored twice) are averaged into one first, so a copy
    neither counts as another seed nor shrinks the std; without a ``seed`` column
    every row is a seed. A row stored before a setting existed counts as made at its
    default (:mod:`eclipse_ray.results.columns`).
    """
    if df.empty:
        return df
    df = with_added_defaults(df)  # rows stored before a setting existed pool with rows at its default
    keys = config_columns(df)
    metrics = [m for m in METRICS if m in df.columns]
    filled = config_strings(df, keys)  # None, NaN and NA: one value
    seed = df["seed"].astype(str) if "seed" in df else pd.Series(range(len(df)), index=df.index)
    per_seed = df[metrics].groupby([*(filled[k] for k in keys), seed.rename("seed")], dropna=False, sort=True).mean()
    g = per_seed.groupby(level=list(range(len(keys))), dropna=False, sort=True)
    mean, std = g.mean(), g.std(ddof=1)
    out = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    out["seeds"] = g.size()
    out = out.reset_index()
    for k in keys:  # restore boolean and numeric types where the column had them
        known = df[k].dropna()
        if len(known) and all(isinstance(v, (bool, np.bool_)) for v in known):  # bool, or bools with gaps
            out[k] = out[k].map({"True": True, "False": False})  # a missing value stays missing
        elif pd.api.types.is_numeric_dtype(df[k]):
            out[k] = pd.to_numeric(out[k].replace({"None": np.nan, "nan": np.nan, "<NA>": np.nan}), errors="coerce")
    return out


def pareto_front(points: pd.DataFrame, x: str = "test_acc_mean", y: str = "poison_success_mean") -> pd.Series:
    """Boolean mask: the rows not dominated (higher ``x`` and lower ``y`` is better)."""
    xs, ys = points[x].to_numpy(float), points[y].to_numpy(float)
    ok = ~(np.isnan(xs) | np.isnan(ys))
    mask = np.zeros(len(points), bool)
    for i in np.flatnonzero(ok):
        better = ok & (xs >= xs[i]) & (ys <= ys[i]) & ((xs > xs[i]) | (ys < ys[i]))
        mask[i] = not better.any()
    return pd.Series(mask, index=points.index)


def pareto(df: pd.DataFrame, x: str = "test_acc", y: str = "poison_success",
           summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (dataset, attack): every seed-aggregated config with ``on_front`` marking the frontier
    (``summary``: :func:`summarize` of ``df`` when the caller has it already)."""
    s = summarize(df) if summary is None else summary
    if s.empty or f"{y}_mean" not in s:
        return s.assign(on_front=False) if not s.empty else s
    s = s[s["attack.name"] != "none"].copy()
    s["on_front"] = False
    for _, idx in s.groupby(["dataset", "attack.name"]).groups.items():
        s.loc[idx, "on_front"] = pareto_front(s.loc[idx], f"{x}_mean", f"{y}_mean")
    return s.sort_values(["dataset", "attack.name", f"{x}_mean"], ascending=[True, True, False])


def point_label(row: pd.Series) -> str:
    """Short label of a point: defense and its noise level / steps."""
    parts = [str(row.get("defense.name"))]
    sigma = row.get("defense.sigma")
    if sigma is not None and not pd.isna(sigma):
        parts.append(f"σ={float(sigma) * 255:.0f}/255")
    steps = row.get("defense.model_calls")
    if steps is not None and not pd.isna(steps) and row.get("defense.sampler") not in (None, "oneshot"):
        parts.append(f"{int(steps)} calls")
    return " ".join(parts)
