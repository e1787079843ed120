"""Rows stored before a setting existed, read as if they had recorded it.

A setting declared with ``added=N`` (:func:`eclipse_ray.config.setting`) has as its
default what the code did before it existed, so a row written then was made at that
default: ``victim.precision`` fp32, ``defense.rng`` generator. Its column is missing
from that row's results part (NA once parts are unioned), and a study resumed after an
upgrade holds rows of one configuration with and without it; grouping on the raw
columns would split them into two points of one seed each. :func:`with_added_defaults`
fills each missing value with what a config of that row's attack, defense or victim
architecture records at the default, so old and new rows pool. Rows keep their stored
``config_hash``; nothing is written.
"""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd

from eclipse_ray.attacks import ATTACKS
from eclipse_ray.config import ConfigError, added_settings, flatten
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.victim.train import VictimConfig

# section prefix, the column naming the config's class, how to build that class's default config
SECTIONS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("attack.", "attack.name", lambda name: ATTACKS.build(str(name), {})),
    ("defense.", "defense.name", lambda name: DEFENSES.build(str(name), {})),
    ("victim.", "victim.arch", lambda arch: VictimConfig(arch=str(arch)).resolved()),  # rows record it resolved
)


def with_added_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every added setting's missing value filled with its default (a copy; ``df`` untouched).

    A class that cannot be built here (a plugin not installed or broken) leaves its rows as they are; a
    number fills a numeric column as a number, so filled and stored rows read alike."""
    out = df.copy()
    for prefix, name_col, build in SECTIONS:
        if name_col not in out:
            continue
        for name in out[name_col].dropna().unique():
            try:
                cfg = build(name)
            except Exception:  # noqa: BLE001 — any failure to build a default config: leave its rows
                continue
            flat, rows = flatten(cfg, prefix), out[name_col] == name
            for key in added_settings(cfg, prefix):
                _fill(out, key, rows, flat[key])
    return out


def _fill(out: pd.DataFrame, key: str, rows: pd.Series, value: Any) -> None:
    if value is None or isinstance(value, (list, tuple, dict)):
        return  # missing already reads as None; a sequence is not a cell value to broadcast
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key not in out:
        out[key] = pd.Series(float("nan") if number else None, index=out.index, dtype=float if number else object)
    missing = rows & out[key].isna()
    if not missing.any():
        return
    if number and pd.api.types.is_numeric_dtype(out[key]) and not pd.api.types.is_bool_dtype(out[key]):
        out[key] = out[key].astype(float) if not pd.api.types.is_float_dtype(out[key]) else out[key]
        out.loc[missing, key] = float(value)
        return
    if out[key].dtype != object:
        out[key] = out[key].astype(object)
    out.loc[missing, key] = value


def config_strings(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``df[keys]`` as strings for grouping, every missing value (None, NaN, NA) as one: ``"None"``."""
    return df[keys].astype(object).where(df[keys].notna(), None).astype(str)
