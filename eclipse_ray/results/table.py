"""ECLIPSE's Table 1, from a results store: attacks × defenses, mean ± std over seeds.

Availability poisons (and the clean row) show victim test accuracy; backdoors
show accuracy / attack success rate. :func:`won_back` reads the table the way
the reference study's acceptance does: per availability attack, the share of
the accuracy the attack removed that the best defense wins back (attacks that
remove less than ``min_drop`` are reported but left out of the average: there
is too little to win back to measure); :func:`best_backdoor` the lowest ASR per
backdoor.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def cell_stats(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, std and count of ``metric`` over the distinct seeds of each (attack, defense).

    Rows of one seed (a trial stored twice) are averaged into one first, so a copy
    neither counts as another seed nor shrinks the std; without a ``seed`` column
    every row is a seed.
    """
    d = df[df[metric].notna()] if metric in df else df.iloc[0:0].assign(**{metric: []})
    cell = ["attack.name", "defense.name"]
    if "seed" in d:
        g = d.groupby([*cell, "seed"], dropna=False)[metric].mean().groupby(level=[0, 1])
    else:
        g = d.groupby(cell)[metric]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.size()})


def _pct(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{100 * mean:.1f}" + ("" if pd.isna(std) else f" ± {100 * std:.1f}")


def defense_table(df: pd.DataFrame, attacks: Sequence[str], defenses: Sequence[str]) -> pd.DataFrame:
    """Strings in Table 1's shape: one row per attack, one column per defense."""
    acc, asr = cell_stats(df, "test_acc"), cell_stats(df, "asr")
    out = pd.DataFrame(index=list(attacks), columns=list(defenses), dtype=object)
    for a in attacks:
        for d in defenses:
            if (a, d) not in acc.index:
                out.loc[a, d] = "–"
                continue
            text = _pct(acc.loc[(a, d), "mean"], acc.loc[(a, d), "std"])
            if (a, d) in asr.index:
                text += " / " + _pct(asr.loc[(a, d), "mean"], asr.loc[(a, d), "std"])
            out.loc[a, d] = text
    return out


def clean_cost(df: pd.DataFrame, defenses: Sequence[str]) -> pd.Series:
    """Points of clean accuracy each defense costs (undefended clean minus defended clean, mean over seeds)."""
    acc = cell_stats(df, "test_acc")["mean"]
    base = acc.get(("none", "none"), np.nan)
    return pd.Series({d: 100 * (base - acc.get(("none", d), np.nan)) for d in defenses})


def won_back(df: pd.DataFrame, attacks: Sequence[str], min_drop: float = 0.10) -> pd.DataFrame:
    """Per availability attack: accuracy removed, best defense, share won back, counted in the average."""
    acc = cell_stats(df, "test_acc")["mean"]
    clean = acc.get(("none", "none"), np.nan)
    rows = []
    for a in attacks:
        undef = acc.get((a, "none"), np.nan)
        defended = {d: v for (att, d), v in acc.items() if att == a and d != "none"}
        if not defended or pd.isna(undef):
            continue
        best = max(defended, key=defended.get)
        removed = clean - undef
        rows.append({"attack": a, "clean": clean, "undefended": undef, "removed": removed, "best_defense": best,
                     "best_acc": defended[best], "won_back": (defended[best] - undef) / removed if removed > 0
                     else np.nan, "counted": bool(removed >= min_drop)})
    return pd.DataFrame(rows)


def best_backdoor(df: pd.DataFrame, attacks: Sequence[str]) -> pd.DataFrame:
    """Per backdoor: the undefended ASR and the defense with the lowest mean ASR (with its accuracy)."""
    acc, asr = cell_stats(df, "test_acc")["mean"], cell_stats(df, "asr")["mean"]
    rows = []
    for a in attacks:
        by = {d: v for (att, d), v in asr.items() if att == a and d != "none"}
        if not by:
            continue
        best = min(by, key=by.get)
        rows.append({"attack": a, "undefended_asr": asr.get((a, "none"), np.nan), "best_defense": best,
                     "best_asr": by[best], "best_acc": acc.get((a, best), np.nan)})
    return pd.DataFrame(rows)


def scale_change(before: pd.DataFrame, after: pd.DataFrame, attacks: Sequence[str],
                 defenses: Sequence[str]) -> pd.DataFrame:
    """Two studies of one grid side by side (e.g. the subset and full CIFAR-10): per attack and defense,
    ``"before → after"`` of the mean accuracy (``/`` the mean ASR where there is one), in %, and a
    ``clean cost`` row (undefended clean minus defended clean, points). A cell measured in only one
    study shows ``–`` on the other side."""
    stats = [(cell_stats(df, "test_acc")["mean"], cell_stats(df, "asr")["mean"]) for df in (before, after)]

    def side(acc: pd.Series, asr: pd.Series, key: tuple[str, str]) -> str:
        if key not in acc.index:
            return "–"
        return f"{100 * acc[key]:.1f}" + (f" / {100 * asr[key]:.1f}" if key in asr.index else "")

    out = pd.DataFrame(index=[*attacks, "clean cost"], columns=list(defenses), dtype=object)
    for a in attacks:
        for d in defenses:
            out.loc[a, d] = " → ".join(side(acc, asr, (a, d)) for acc, asr in stats)
    costs = [clean_cost(df, defenses) for df in (before, after)]
    for d in defenses:
        out.loc["clean cost", d] = " → ".join("–" if pd.isna(c[d]) else f"{c[d]:+.1f}" for c in costs)
    return out


def markdown(table: pd.DataFrame, index_name: str = "attack") -> str:
    """A DataFrame of strings/numbers as a GitHub markdown table."""
    cols = [index_name, *map(str, table.columns)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, r in table.iterrows():
        cells = [f"{v:.3g}" if isinstance(v, (float, np.floating)) else str(v) for v in r]
        lines.append("| " + " | ".join([str(idx), *cells]) + " |")
    return "\n".join(lines)
