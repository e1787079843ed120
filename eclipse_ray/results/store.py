"""The results store: one parquet dataset per study, one row per trial, append-only.

Each append writes a new ``part-<time>-<id>.parquet`` under a temporary name
and renames it into place, so a crash never leaves a half-written file and
concurrent writers never collide. Columns are flat and dotted (``attack.name``,
``defense.sigma``, ``test_acc``, ``config_hash`` …). Read it without eclipse_ray:

    pandas:  pd.concat([pd.read_parquet(f) for f in glob("DIR/part-*.parquet")])
    duckdb:  SELECT * FROM read_parquet('DIR/part-*.parquet', union_by_name=true)
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eclipse_ray.config import ConfigError


def _column(values: list[Any]) -> pa.Array:
    """An arrow column; lists/dicts and mixed types become JSON-ish strings so any row can be stored."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def append_rows(results_dir: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Append ``rows`` to the store in ``results_dir`` as one new part file; returns its path."""
    rows = [dict(r) for r in rows]
    if not rows:
        raise ConfigError("append_rows: no rows")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    table = pa.table({k: _column([r.get(k) for r in rows]) for k in keys})
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = d / f".{name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, d / name)
    return d / name


def part_files(results_dir: str | Path) -> list[Path]:
    return sorted(Path(results_dir).glob("part-*.parquet"))


def read_results(results_dir: str | Path) -> pd.DataFrame:
    """All rows of a store as one DataFrame (columns unioned across parts; missing values are NA)."""
    files = part_files(results_dir)
    if not files:
        return pd.DataFrame()
    frames = [pq.read_table(f).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True, sort=False)
