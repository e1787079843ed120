"""The on-disk dataset format: parquet shards per split plus ``meta.json``.

Layout::

    DIR/meta.json                  format, classes, image shape, splits, dataset meta
    DIR/<split>/part-00000.parquet columns index:int64 label:int64 poisoned:bool image:binary

``image`` holds the raw uint8 HWC bytes (lossless; shape in ``meta.json``), so
the shards are readable by ``ray.data.read_parquet``, pandas, pyarrow and
duckdb alike. ``DIR`` is a local path or a URI (:mod:`eclipse_ray.storage`). A
dataset is complete when its ``meta.json`` exists: locally it is written under a
temporary name and renamed into place; on an object store its shards are
uploaded first and ``meta.json`` last. An interrupted write never leaves a
dataset that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eclipse_ray import storage
from eclipse_ray.config import ConfigError
from eclipse_ray.data.imageset import ImageSet

FORMAT = "eclipse_ray.imageset/1"
COLUMNS = ("index", "label", "poisoned", "image")


def to_table(s: ImageSet) -> pa.Table:
    """One ImageSet as an arrow table (raw image bytes, one row per sample)."""
    flat = np.ascontiguousarray(s.images).reshape(len(s), -1)
    width = flat.shape[1]
    images = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(s), [None, pa.py_buffer(flat.tobytes())])
    table = pa.table({
        "index": pa.array(s.index, pa.int64()),
        "label": pa.array(s.labels, pa.int64()),
        "poisoned": pa.array(s.poisoned, pa.bool_()),
        "image": images.cast(pa.binary()),
    })  # the shape travels with the bytes: a meta.json that declares another shape is caught on read
    return table.replace_schema_metadata({b"image_shape": ",".join(map(str, s.image_shape)).encode()})


def decode_images(column: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """Raw-bytes image column (arrow or numpy of bytes) to a uint8 NHWC array."""
    values = column.to_pylist() if hasattr(column, "to_pylist") else list(column)
    size = int(np.prod(shape))
    bad = [i for i, v in enumerate(values) if len(v) != size]
    if bad:
        raise ConfigError(f"image bytes of row {bad[0]} have length {len(values[bad[0]])}, expected {size} for {shape}")
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape((len(values), *shape)).copy()


def from_table(table: pa.Table, shape: tuple[int, int, int], classes: tuple[str, ...],
               meta: dict[str, Any] | None = None) -> ImageSet:
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ConfigError(f"parquet shard lacks column(s) {', '.join(missing)}")
    written = (table.schema.metadata or {}).get(b"image_shape")
    if written is not None and written.decode() != ",".join(map(str, shape)):
        raise ConfigError(f"images were written as {written.decode().replace(',', 'x')}, meta.json declares "
                          f"{'x'.join(map(str, shape))}")
    labels = table.column("label")
    if not pa.types.is_integer(labels.type):
        raise ConfigError(f"parquet shard: labels must be integers, got {labels.type}")
    labels = labels.to_numpy()
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ConfigError(f"labels must lie in 0..{len(classes) - 1} ({len(classes)} classes), "
                          f"found {labels.min()}..{labels.max()}")
    return ImageSet(
        images=decode_images(table.column("image"), shape),
        labels=labels,
        index=table.column("index").to_numpy(),
        poisoned=table.column("poisoned").to_numpy(zero_copy_only=False),
        classes=classes,
        meta=dict(meta or {}),
    )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def write_table(loc: str | os.PathLike, table: pa.Table) -> str:
    """One parquet file at ``loc`` (local or URI), never visible half-written; returns its SHA-256."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    storage.write_bytes(loc, data)
    return storage.sha256(data)


def read_table(loc: str | os.PathLike, columns: list[str] | None = None, sha256: str | None = None) -> pa.Table:
    """A parquet file; with ``sha256``, its bytes are checked first (:class:`storage.CorruptArtifact` if they differ)."""
    if sha256 is None:
        fs, path = storage.filesystem(loc)
        return pq.read_table(path, columns=columns, filesystem=fs)
    data = storage.read_bytes(loc)
    if storage.sha256(data) != sha256:
        raise storage.CorruptArtifact(str(loc), ["does not match the checksum in meta.json"])
    return pq.read_table(pa.BufferReader(data), columns=columns)


def num_rows(loc: str | os.PathLike) -> int:
    fs, path = storage.filesystem(loc)
    with fs.open_input_file(path) as fh:
        return pq.ParquetFile(fh).metadata.num_rows


def write_dataset(path: str | os.PathLike, splits: Mapping[str, ImageSet], meta: Mapping[str, Any] | None = None,
                  *, overwrite: bool = False, if_absent: bool = False, shard_rows: int = 2048) -> str:
    """Write ``splits`` to ``path`` (a local path or URI); refuses to replace a dataset unless ``overwrite``.

    ``if_absent`` (content-addressed caches): a complete dataset already at ``path``
    is kept as it is — first writer wins, and readers are never disturbed.

    Locally the dataset is written under a temporary name and renamed into place;
    on an object store its shards are written first and ``meta.json`` last, so
    either way a dataset without ``meta.json`` is incomplete and never read.
    """
    loc = storage.normalize(path)
    if not splits:
        raise ConfigError("nothing to write: no splits")
    first = next(iter(splits.values()))
    for name, s in splits.items():
        if not name.replace("_", "").isalnum():
            raise ConfigError(f"bad split name {name!r}")
        if s.classes != first.classes or s.image_shape != first.image_shape:
            raise ConfigError(f"split {name!r} has other classes or image shape than {next(iter(splits))!r}")
    if if_absent and is_dataset(loc):
        return loc
    if not overwrite and not if_absent and storage.exists(loc) and (storage.is_file(loc) or storage.listdir(loc)):
        raise ConfigError(f"{loc} already exists; choose a new output directory")
    remote = storage.is_uri(loc)
    tmp = loc if remote else str(storage.temp_path(Path(loc)))
    try:
        info: dict[str, Any] = {}
        for name, s in splits.items():
            table = to_table(s)
            shards, sums = [], {}
            for k, start in enumerate(range(0, len(s), shard_rows)):
                shard = f"{name}/part-{k:05d}.parquet"
                sums[shard] = write_table(storage.join(tmp, shard), table.slice(start, shard_rows))
                shards.append(shard)
            info[name] = {"rows": len(s), "shards": shards, "sha256": sums, "poisoned": int(s.poisoned.sum()),
                          "meta": _jsonable(s.meta)}
        doc = {"format": FORMAT, "classes": list(first.classes), "image_shape": list(first.image_shape),
               "image_encoding": "raw-uint8-hwc", "splits": info, "meta": _jsonable(dict(meta or {}))}
        storage.write_json(storage.join(tmp, "meta.json"), doc)
        if not remote:
            if if_absent:
                storage.publish_dir(tmp, loc, "meta.json")
            else:
                _replace_dir(Path(tmp), Path(loc))
    except BaseException:
        if not remote:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return loc


def _replace_dir(tmp: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        trash = storage.temp_path(path)
        os.replace(path, trash)
        os.replace(tmp, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, path)


def is_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a complete dataset (its ``meta.json`` is written last)."""
    return storage.is_file(storage.join(path, "meta.json"))


MAX_CLASSES = 100_000  # a bound far above any image dataset, checked before anything is allocated


def _check_doc(doc: Any, where: str) -> dict[str, Any]:
    """``meta.json`` against its schema: keys, types, a shape matching the bytes, paths inside the dataset."""
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{where}: {msg}")

    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("format") != FORMAT:
        raise bad(f"unknown format {doc.get('format')!r} (expected {FORMAT})")
    for key, typ in (("classes", list), ("image_shape", list), ("splits", dict)):
        if not isinstance(doc.get(key), typ):
            raise bad(f"{key!r} missing or not a {typ.__name__}")
    classes, shape = doc["classes"], doc["image_shape"]
    if not classes or len(classes) > MAX_CLASSES or not all(isinstance(c, str) for c in classes):
        raise bad(f"'classes' must be 1..{MAX_CLASSES} names")
    if (len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
            or shape[2] != 3 or not 1 <= shape[0] <= 4096 or not 1 <= shape[1] <= 4096):
        raise bad(f"'image_shape' must be [height, width, 3] with sides 1..4096, got {shape}")
    for name, info in doc["splits"].items():
        if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
            raise bad(f"bad split name {name!r}")
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list) \
                or not isinstance(info.get("rows"), int) or isinstance(info.get("rows"), bool) or info["rows"] < 0:
            raise bad(f"split {name!r} needs 'rows' (a count) and 'shards' (a list)")
        for shard in info["shards"]:
            parts = shard.split("/") if isinstance(shard, str) else []
            if not parts or shard.startswith("/") or "\\" in shard or any(p in ("", ".", "..") for p in parts) \
                    or not shard.endswith(".parquet"):
                raise bad(f"shard path {shard!r} of split {name!r} must be a relative .parquet path inside "
                          f"the dataset")
        sums = info.get("sha256", {})
        if not isinstance(sums, dict) or set(sums) - set(info["shards"]) \
                or not all(isinstance(v, str) and len(v) == 64 for v in sums.values()):
            raise bad(f"split {name!r}: 'sha256' must map its shards to SHA-256 hex digests")
    return doc


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``meta.json`` of a dataset directory, checked against its schema (one-line errors)."""
    meta_file = storage.join(path, "meta.json")
    if not storage.is_file(meta_file):
        raise ConfigError(f"{storage.normalize(path)} is not an eclipse_ray dataset (no meta.json)")
    try:
        doc = json.loads(storage.read_bytes(meta_file).decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{meta_file}: not valid JSON ({e})") from None
    return _check_doc(doc, meta_file)


def _shard(path: str | os.PathLike, shard: str) -> str:
    """A shard's location, which must stay inside the dataset (no symlink out of a local one)."""
    loc = storage.join(path, shard)
    if not storage.is_uri(loc):
        root = os.path.realpath(storage.normalize(path))
        if os.path.commonpath([root, os.path.realpath(loc)]) != root:
            raise ConfigError(f"{storage.normalize(path)}: shard {shard!r} leads outside the dataset")
    return loc


def read_split(path: str | os.PathLike, split: str, doc: dict[str, Any] | None = None) -> ImageSet:
    """One split of a dataset directory as an ImageSet (row count checked against meta.json)."""
    doc = doc or read_meta(path)
    if split not in doc["splits"]:
        raise ConfigError(f"{storage.normalize(path)} has no split {split!r} (has {', '.join(doc['splits'])})")
    info = doc["splits"][split]
    sums = info.get("sha256", {})
    tables = [read_table(_shard(path, shard), columns=list(COLUMNS), sha256=sums.get(shard))
              for shard in info["shards"]]
    table = pa.concat_tables(tables)
    if table.num_rows != info["rows"]:
        raise ConfigError(f"{storage.normalize(path)}/{split}: {table.num_rows} rows on disk, "
                          f"meta.json says {info['rows']}")
    return from_table(table, tuple(doc["image_shape"]), tuple(doc["classes"]), info.get("meta"))


def read_rows(path: str | os.PathLike, split: str, pick, limit: int) -> ImageSet:
    """The first ``limit`` rows of a split for which ``pick(table) -> bool mask`` holds, read shard by shard
    (each checked against its checksum) and stopping once found: memory holds one shard, not the split."""
    doc = read_meta(path)
    if split not in doc["splits"]:
        raise ConfigError(f"{storage.normalize(path)} has no split {split!r} (has {', '.join(doc['splits'])})")
    info = doc["splits"][split]
    sums = info.get("sha256", {})
    found: list[pa.Table] = []
    n = 0
    for shard in info["shards"]:
        if n >= limit:
            break
        table = read_table(_shard(path, shard), columns=list(COLUMNS), sha256=sums.get(shard))
        rows = np.flatnonzero(np.asarray(pick(table), bool))[:limit - n]
        if len(rows):
            found.append(table.take(pa.array(rows)))
            n += len(rows)
    table = pa.concat_tables(found) if found else read_table(_shard(path, info["shards"][0]),
                                                             columns=list(COLUMNS)).slice(0, 0)
    return from_table(table, tuple(doc["image_shape"]), tuple(doc["classes"]), info.get("meta"))


def read_shard_bytes(path: str | os.PathLike, shard: str, sha256: str | None = None) -> bytes:
    """A shard's bytes (confined to the dataset), checked against ``sha256`` when given."""
    data = storage.read_bytes(_shard(path, shard))
    if sha256 is not None and storage.sha256(data) != sha256:
        raise storage.CorruptArtifact(storage.join(path, shard), ["does not match the checksum in meta.json"])
    return data


def verify_dataset(path: str | os.PathLike, require_checksums: bool = True) -> list[str]:
    """What is wrong with a dataset directory (empty: complete and intact): its ``meta.json`` against
    the schema, every shard against its checksum (a shard without one is a problem when required)."""
    try:
        doc = read_meta(path)
    except (ConfigError, FileNotFoundError) as e:  # other storage errors are raised, never taken as corruption
        return [str(e)]
    problems = []
    for name, info in doc["splits"].items():
        sums = info.get("sha256", {})
        for shard in info["shards"]:
            try:
                data = storage.read_bytes(_shard(path, shard))
            except FileNotFoundError:
                problems.append(f"{shard} missing")
                continue
            except ConfigError as e:
                problems.append(str(e))
                continue
            if shard in sums and storage.sha256(data) != sums[shard]:
                problems.append(f"{shard} does not match its checksum")
            elif shard not in sums and require_checksums:
                problems.append(f"{shard} has no checksum (written by an older version)")
    return problems


def read_dataset(path: str | os.PathLike) -> tuple[dict[str, ImageSet], dict[str, Any]]:
    """All splits of a dataset directory and its dataset-level meta."""
    doc = read_meta(path)
    return {name: read_split(path, name, doc) for name in doc["splits"]}, doc.get("meta", {})
