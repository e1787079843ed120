"""The results store: one parquet dataset per study, one row per trial, append-only.

The store is a local path or a URI (``s3://…``; see :mod:`eclipse_ray.storage`).
Each append writes a new ``part-<name>.parquet`` whole (a local temporary name
renamed into place, or one object upload), so a reader never sees half a file
and concurrent writers never collide; a trial's part is named after its
``config_hash``, so a retried trial rewrites its own part instead of adding a row. Columns are flat and dotted (``attack.name``,
``defense.sigma``, ``test_acc``, ``config_hash`` …). Read it without eclipse_ray:

    pandas:  pd.concat([pd.read_parquet(f) for f in glob("DIR/part-*.parquet")])
    duckdb:  SELECT * FROM read_parquet('DIR/part-*.parquet', union_by_name=true)
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa

from eclipse_ray import storage
from eclipse_ray.config import ConfigError
from eclipse_ray.data.store import read_table, write_table


def _column(values: list[Any]) -> pa.Array:
    """An arrow column; lists/dicts and mixed types become JSON-ish strings so any row can be stored."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def append_rows(results_dir: str | os.PathLike, rows: Iterable[Mapping[str, Any]], name: str | None = None) -> str:
    """Append ``rows`` to the store at ``results_dir`` (local path or URI) as one new part; returns its location.

    ``name`` makes the part's name deterministic (``part-<name>.parquet``): a trial
    writes its row under its ``config_hash``, so a retried or rerun trial rewrites
    the same part instead of adding a duplicate.
    """
    rows = [dict(r) for r in rows]
    if not rows:
        raise ConfigError("append_rows: no rows")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    table = pa.table({k: _column([r.get(k) for r in rows]) for k in keys})
    stem = name or f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    loc = storage.join(results_dir, f"part-{stem}.parquet")
    write_table(loc, table)
    return loc


def part_files(results_dir: str | os.PathLike) -> list[str]:
    return storage.glob(results_dir, "part-*.parquet")


def read_results(results_dir: str | os.PathLike) -> pd.DataFrame:
    """All rows of a store as one DataFrame (columns unioned across parts; missing values are NA).

    A part that cannot be read is reported by name on stderr and skipped.
    """
    frames = []
    for f in part_files(results_dir):
        try:
            frames.append(read_table(f).to_pandas())
        except pa.ArrowInvalid as e:  # a corrupt part; a storage error is raised, never hidden
            print(f"eclipse-ray: warning: skipping unreadable results part {f} ({type(e).__name__})",
                  file=sys.stderr)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True, sort=False)
