"""The results store: one parquet dataset per study, one row per trial, append-only.

The store is a local path or a URI (``s3://…``; see :mod:`eclipse_ray.storage`).
Each append writes a new ``part-<name>.parquet`` whole (a local temporary name
renamed into place, or one object upload), so a reader never sees half a file
and concurrent writers never collide; a trial's part is named after its
``config_hash``, so a retried trial rewrites its own part instead of adding a row. Columns are flat and dotted (``attack.name``,
``defense.sigma``, ``test_acc``, ``config_hash`` …). Read it without eclipse_ray:

    pandas:  pd.concat([pd.read_parquet(f) for f in glob("DIR/part-*.parquet")])
    duckdb:  SELECT * FROM read_parquet('DIR/part-*.parquet', union_by_name=true)

Integrity: every parquet page of a part carries a CRC and the footer a SHA-256
of the column names and types (the one thing no page CRC covers), so a damaged
part (flipped bytes, truncated, empty) is reported by name and skipped instead
of read as wrong numbers. Two rows of one trial (same ``config_hash`` and
``seed``: a legacy store appended under random part names, a copied part) are
reported and read as one, the newest.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eclipse_ray import storage
from eclipse_ray.config import ConfigError

KEY = ("config_hash", "seed")  # one trial


@dataclass(frozen=True)
class Metric:
    """One metric column of a trial row."""

    name: str
    meaning: str
    headline: bool = False  # in the CLI's one-line summary and the markdown report's seed table


# Every metric a trial row may carry, declared once: the CLI summary, Tune's reports, the seed tables,
# Pareto fronts and both reports read this list.
METRICS = (
    Metric("test_acc", "victim accuracy on the clean test split", True),
    Metric("poison_success", "the attack's success: ASR (backdoor), target success (targeted), relative accuracy "
                             "loss against the clean reference victim (availability)", True),
    Metric("asr", "backdoor: triggered non-target test images predicted as the target class", True),
    Metric("asr_any", "backdoor: triggered test images predicted as any one class (the most frequent)", True),
    Metric("asr_max_class", "targeted with a trigger: ASR of the most-hit class", True),
    Metric("target_success", "targeted: target images predicted as the adversarial label", True),
    Metric("poisons_learnt", "targeted: poisoned training rows (as poisoned) the victim gives their label"),
    Metric("acc_ref", "accuracy of the clean reference victim (same victim, clean data)", True),
    Metric("clean_cost", "clean data: relative accuracy the defense costs", True),
    Metric("purify_psnr_poisoned", "PSNR of purified poisoned images to their clean originals (dB)", True),
    Metric("purify_psnr_clean", "PSNR of purified clean images to themselves (dB)", True),
    Metric("vab_precision", "V&B: share of the suspicious split that is poisoned"),
    Metric("vab_recall", "V&B: share of the poisons in the suspicious split"),
    Metric("purify_seconds", "seconds spent purifying the training set"),
    Metric("train_seconds", "seconds spent training the victim"),
    Metric("seconds", "seconds of the whole trial", True),
)
METRIC_NAMES = tuple(m.name for m in METRICS)
HEADLINE = tuple(m.name for m in METRICS if m.headline)
TIME_COLUMNS = ("finished_at", "timestamp")  # when a row was written, first one present wins
DIGEST_KEY = b"eclipse_ray.columns_sha256"


class CorruptPart(ValueError):
    """A results part whose bytes are not the parquet file that was written (flipped bytes, truncated, empty)."""

    def __init__(self, location: str, detail: str):
        super().__init__(f"{location}: {detail}")
        self.location, self.detail = location, detail

    def __reduce__(self):  # picklable across Ray workers
        return type(self), (self.location, self.detail)


def _column(values: list[Any]) -> pa.Array:
    """An arrow column; lists/dicts and mixed types become JSON-ish strings so any row can be stored."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _columns_digest(schema: pa.Schema) -> bytes:
    """SHA-256 of the column names and kinds of type: they live in the footer, outside every page checksum.

    The type's id, not its text: parquet renames a list's item field on the way back.
    """
    text = "\n".join(f"{f.name}\t{f.type.id}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest().encode()


def write_part(loc: str | os.PathLike, table: pa.Table) -> None:
    """One results part at ``loc`` (local or URI), never visible half-written, with a CRC on every page and
    the columns' digest in the footer so that damage anywhere in it is caught on read."""
    table = table.replace_schema_metadata({DIGEST_KEY: _columns_digest(table.schema)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_page_checksum=True)
    storage.write_bytes(loc, sink.getvalue().to_pybytes())


def read_part(loc: str | os.PathLike) -> pd.DataFrame:
    """One part's rows, its page checksums and column digest verified; :class:`CorruptPart` if damaged.

    The bytes are fetched first, so a storage error (permission, network) is raised as it
    is and never mistaken for a damaged part; every error after that is about the bytes.
    Parts written before checksums existed are read without them.
    """
    data = storage.read_bytes(loc)
    try:
        table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
        frame = table.to_pandas()
    except (pa.ArrowException, OSError, ValueError) as e:  # in memory: an OSError here is a failed page CRC
        raise CorruptPart(str(loc), " ".join(str(e).split()) or type(e).__name__) from e
    want = (table.schema.metadata or {}).get(DIGEST_KEY)
    if want is not None and want != _columns_digest(table.schema):
        raise CorruptPart(str(loc), "column names or types differ from those written (footer damaged)")
    return frame


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
    write_part(loc, table)
    return loc


def part_files(results_dir: str | os.PathLike) -> list[str]:
    return storage.glob(results_dir, "part-*.parquet")


def _base(loc: str) -> str:
    return str(loc).replace("\\", "/").rsplit("/", 1)[-1]


def _read_parts(results_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.Series, list[dict[str, str]]]:
    """(all readable rows, the part each row came from, one problem per damaged part), parts in sorted order."""
    frames, where, problems = [], [], []
    for f in part_files(results_dir):
        try:
            frame = read_part(f)
        except CorruptPart as e:
            problems.append({"kind": "corrupt-part", "location": f, "detail": e.detail})
            continue
        frames.append(frame)
        where += [f] * len(frame)
    if not frames:
        return pd.DataFrame(), pd.Series(dtype=object), problems
    return pd.concat(frames, ignore_index=True, sort=False), pd.Series(where, dtype=object), problems


def _finished(df: pd.DataFrame) -> pd.Series:
    """When each row was written (NaT/NaN where unknown), from the first time column present."""
    col = next((c for c in TIME_COLUMNS if c in df.columns), None)
    if col is None:
        return pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns, UTC]")
    if pd.api.types.is_numeric_dtype(df[col]):
        return df[col].astype(float)
    return pd.to_datetime(df[col], utc=True, errors="coerce", format="ISO8601")


def superseded(df: pd.DataFrame) -> pd.Series:
    """For each row that repeats a trial (same ``config_hash`` and ``seed``), the index of the row kept instead.

    The kept row is the newest by its time column where rows record one, else the
    last in part order; rows lacking ``config_hash`` or ``seed`` are never duplicates.
    """
    key = list(KEY)
    if df.empty or not set(key) <= set(df.columns):
        return pd.Series(dtype="int64")
    d = df.loc[df[key].notna().all(axis=1), key].assign(_t=_finished(df), _row=lambda x: x.index)
    d = d.sort_values(["_t", "_row"], na_position="first", kind="stable")
    keeper = d.groupby(key, sort=False)["_row"].transform("last")
    return keeper[keeper != keeper.index].sort_index()


def _duplicate_problems(df: pd.DataFrame, where: pd.Series, dropped: pd.Series) -> list[dict[str, str]]:
    """One problem per superseded row, located at the part that holds it."""
    return [{"kind": "duplicate-row", "location": where[i],
             "detail": f"config_hash {df.at[i, 'config_hash']} seed {df.at[i, 'seed']} repeats the row kept "
                       f"from {_base(where[k])}"} for i, k in dropped.items()]


def _warn(text: str) -> None:
    print(f"eclipse_ray: warning: {text}", file=sys.stderr, flush=True)


LEGACY_ATTACK_COLUMNS = ("attack.train_preset", "attack.train_iterations")  # em-adaptive's, before nesting


def current_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Rows written before the model-training settings were nested (``defense.train_iterations``,
    ``attack.train_preset``) read with today's names (``defense.train.iterations``). Such rows lack the nested settings they had no
    column for (those had their recipe's defaults); they keep the ``config_hash`` they were stored under,
    which :meth:`eclipse_ray.trial.TrialConfig.hashes` still recognises."""
    old = [c for c in df.columns if c.startswith("defense.train_") or c in LEGACY_ATTACK_COLUMNS]
    for c in old:
        section, name = c.split(".", 1)
        new = f"{section}.train.{name[len('train_'):]}"
        df[new] = df[c] if new not in df else df[new].combine_first(df[c])
    return df.drop(columns=old) if old else df


def read_results(results_dir: str | os.PathLike, dedupe: bool = True) -> pd.DataFrame:
    """All rows of a store as one DataFrame (columns unioned across parts; missing values are NA).

    A damaged part is reported by name on stderr and skipped, so it never blocks the
    rest; a storage error is raised. Rows repeating a trial (same ``config_hash`` and
    ``seed``) are reported in one line and read once, the newest (see :func:`superseded`),
    unless ``dedupe`` is false.
    """
    df, where, problems = _read_parts(results_dir)
    df = current_columns(df)
    for p in problems:
        _warn(f"skipping corrupt results part {p['location']} ({p['detail']})")
    dropped = superseded(df)
    if len(dropped):
        parts = sorted({_base(where[i]) for i in (*dropped.index, *dropped.values)})
        shown = ", ".join(parts[:5]) + (f" and {len(parts) - 5} more" if len(parts) > 5 else "")
        _warn(f"{len(dropped)} duplicate results row(s) (same config_hash and seed) in {shown}; "
              + ("read the newest of each" if dedupe else "all kept (dedupe=False)"))
        if dedupe:
            df = df.drop(index=dropped.index).reset_index(drop=True)
    return df


def verify_results(results_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Every problem of the store at ``results_dir``, for a doctor command; empty when it is healthy.

    One dict per problem: ``kind`` (``corrupt-part`` or ``duplicate-row``), ``location``
    (the part) and a one-line ``detail``. Nothing is printed; a storage error is raised.
    """
    df, where, problems = _read_parts(results_dir)
    return problems + _duplicate_problems(df, where, superseded(df))
