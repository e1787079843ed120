"""Streaming purification: dataset shards → Ray Data actor pool → output shards, written by the workers.

    from_items(work units) → map_batches(ShardPurifier, compute=ActorPoolStrategy(1..N),
                                         num_gpus=1 per actor on GPUs, batch_size=1 unit)

A *work unit* is a fixed row range of one input shard (``chunk_rows``, a
multiple of the batch size, counted from the shard's start). A worker reads its
unit's rows from storage, purifies them, checks that the rows it produced are the rows it read (count,
``index``, ``label``, ``poisoned``), and writes the output unit itself (atomic
local rename or one object upload). The driver plans the units, counts rows and
publishes ``meta.json`` last: it never holds the dataset, so its memory does not
grow with it.

Every model call has exactly the defense's ``batch_size`` rows (the tail padded)
on one CPU thread (:func:`eclipse_ray.defenses.base.fixed_shape`), and each
sample's noise is a function of (seed, index): a purified image does not depend
on the actor count, the unit size, the shards, the block layout or which worker
ran it — the same bytes with 0, 1 or N actors.

Reuse: a request may name a *donor* — a published purification by the same row-wise
purifier (same settings, seed and model) of a dataset with the same shard layout,
e.g. the clean set behind a backdoor's 10 % of poisoned rows. A unit's rows whose
index, label, flag and pixels equal the donor input's are copied from the donor's
output (a row-wise purifier's output is a function of the row: the same bytes as
purifying it again); only the others go through the model (``rows_reused`` in the report).

Resume: a finished unit is a file; a rerun computes only the missing ones (a
per-unit resume is simpler than Ray Data's row-keyed checkpointing and holds the
same guarantee, because units are written whole). Node loss: Ray Data restarts
lost actors and retries their units; a unit written twice is written with the
same bytes. Many purifications (a sweep's stage) share one pipeline, so small
ones do not each pay Ray Data's start-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from eclipse_ray import storage
from eclipse_ray.config import ConfigError, check_seed, flatten
from eclipse_ray.data import store
from eclipse_ray.data.cache import cache_root, model_fingerprint, purification_key
from eclipse_ray.data.imageset import clean_view
from eclipse_ray.defenses import DefenseConfig
from eclipse_ray.defenses.base import CHUNK_ROWS, chunk_rows
from eclipse_ray.distributed.connect import init_ray

_SCHEMA = pa.schema([pa.field("index", pa.int64()), pa.field("label", pa.int64()),
                     pa.field("poisoned", pa.bool_()), pa.field("image", pa.binary())])


@dataclass(frozen=True)
class Donor:
    """A published purification whose rows a request may copy (see the module docstring)."""

    input: str
    out: str
    input_sums: dict[str, str] = field(default_factory=dict)  # its input's train shard -> SHA-256
    out_shards: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # unit name -> (shard, SHA-256)


@dataclass(frozen=True)
class PurifyRequest:
    """One purification: ``input``'s train split through ``defense`` into ``out`` (locations)."""

    input: str
    out: str
    defense: DefenseConfig
    seed: int = 0
    model_dir: str | None = None  # location of the model (local or URI); None for model-free purifiers
    key: str = ""
    batch_size: int = 256
    meta: dict[str, Any] = field(default_factory=dict)  # extra dataset meta to publish
    resolved: dict[str, Any] = field(default_factory=dict)  # result columns that depend on the model
    chunk_rows: int = CHUNK_ROWS
    copy_splits: bool = True  # copy the input's other splits (a sweep's purified sets hold train only)
    donor: Donor | None = None  # rows equal to its input's are copied from its output (row-wise purifiers)

    @property
    def chunk(self) -> int:
        """Rows per unit: ``chunk_rows`` rounded up to a multiple of the batch size (the row ranges the
        in-memory loop, :meth:`DefenseConfig.purify`, calls the purifier on)."""
        return chunk_rows(self.batch_size, self.chunk_rows)

    @property
    def work(self) -> str:
        """Where units are written before publishing (object stores: the output prefix itself)."""
        if storage.is_uri(self.out):
            return self.out
        head, name = os.path.split(storage.normalize(self.out))
        return os.path.join(head, f".{name}.purify-{self.key}-c{self.chunk}")

    @property
    def units_dir(self) -> str:
        """The units' folder under :attr:`work`: named by the request where ``work`` is the output itself,
        so that units of another request (or unit size) left under the same output are never taken as done."""
        return f"train.{self.key}-c{self.chunk}" if storage.is_uri(self.out) else "train"

    def unit_loc(self, unit: "Unit") -> str:
        return storage.join(self.work, self.units_dir, unit.name)


@dataclass(frozen=True)
class Unit:
    request: int
    shard: str   # input shard, relative to the dataset (``train/part-00000.parquet``)
    start: int
    stop: int
    sha256: str | None = None  # the input shard's checksum (from its meta.json), checked on read

    @property
    def name(self) -> str:
        stem = self.shard.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return f"{stem}-{self.start:07d}.parquet"


def plan_units(shard_rows: dict[str, int], request: int, chunk_rows: int,
               sums: dict[str, str] | None = None) -> list[Unit]:
    """Fixed row ranges of every shard (independent of actors and of what is already done)."""
    units = []
    for shard, n in shard_rows.items():
        units += [Unit(request, shard, a, min(a + chunk_rows, n), (sums or {}).get(shard))
                  for a in range(0, n, chunk_rows)]
    return units


def purify_unit(req: PurifyRequest, unit: Unit, purifier, shape: tuple[int, int, int]) -> tuple[int, str]:
    """Read, purify, check and write one unit; returns its row count and the SHA-256 of what it wrote."""
    table = store.read_table(storage.join(req.input, unit.shard), columns=list(store.COLUMNS), sha256=unit.sha256)
    table = table.slice(unit.start, unit.stop - unit.start)
    images = store.decode_images(table.column("image"), shape)
    index = table.column("index").to_numpy()
    t = time.perf_counter()
    same, given = donor_rows(req, unit, table, images, shape)
    if same.any():
        out = given.copy()
        todo = ~same
        if todo.any():  # the purifier splits the rows into its fixed model batches
            out[todo] = purifier(images[todo], index[todo])
    else:
        out = purifier(images, index)  # the whole unit: the purifier splits it into its fixed model batches
    seconds = time.perf_counter() - t
    if out.shape != images.shape or out.dtype != np.uint8:
        raise RuntimeError(f"purify {req.defense.name}: {unit.shard}[{unit.start}:{unit.stop}] came back as "
                           f"{out.dtype}{tuple(out.shape)}, expected uint8{tuple(images.shape)}")
    flat = np.ascontiguousarray(out).reshape(len(out), -1)
    col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(flat.shape[1]), len(out),
                                               [None, pa.py_buffer(flat.tobytes())]).cast(pa.binary())
    result = table.set_column(table.schema.get_field_index("image"), "image", col).cast(_SCHEMA)
    result = result.replace_schema_metadata({**(table.schema.metadata or {}),
                                             b"purify_seconds": repr(seconds).encode(),
                                             b"rows_reused": str(int(same.sum())).encode()})
    sha = store.write_table(req.unit_loc(unit), result)
    back = store.read_table(req.unit_loc(unit), columns=["index", "label", "poisoned"])
    for c in ("index", "label", "poisoned"):  # the rows on storage are the rows read, in order
        if not back.column(c).equals(table.column(c).cast(_SCHEMA.field(c).type)):
            raise RuntimeError(f"purify: column {c} of {unit.name} does not match its input rows")
    return len(out), sha


def donor_rows(req: PurifyRequest, unit: Unit, table: pa.Table, images: np.ndarray,
               shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """(which of the unit's rows the donor has purified already, the donor's purified images of the unit)."""
    none = np.zeros(len(images), bool), None
    d = req.donor
    if d is None or unit.name not in d.out_shards:
        return none
    src = store.read_table(storage.join(d.input, unit.shard), columns=list(store.COLUMNS),
                           sha256=d.input_sums.get(unit.shard)).slice(unit.start, unit.stop - unit.start)
    shard, sha = d.out_shards[unit.name]
    got = store.read_table(storage.join(d.out, shard), columns=list(store.COLUMNS), sha256=sha)
    if src.num_rows != len(images) or got.num_rows != len(images) or not src.column("index").equals(
            table.column("index")) or not got.column("index").equals(table.column("index")) or \
            not got.column("label").equals(src.column("label")):
        return none  # not the same samples, or not the donor's output of its input: purify them all
    same = (src.column("label").to_numpy() == table.column("label").to_numpy()) & \
        (store.decode_images(src.column("image"), shape) == images).reshape(len(images), -1).all(axis=1)
    return same, store.decode_images(got.column("image"), shape)


def purifier_identity(req: PurifyRequest) -> list[Any]:
    """What makes two purifications of the same rows give the same images: the defense settings, seed, model
    and resolved columns, as a published purification's report holds them (JSON: tuples as lists)."""
    return json.loads(json.dumps([flatten(req.defense, "defense."), req.seed, req.model_dir, req.resolved or {}],
                                 default=str))


def find_donor(req: PurifyRequest, doc: dict[str, Any], candidates: list[str]) -> Donor | None:
    """Of ``candidates`` (published purified sets) made by ``req``'s purifier — the same defense settings,
    seed, model and resolved columns, of a row-wise purifier — from a dataset with ``req``'s input's train
    shards, rows and unit size (``doc``: the input's ``meta.json``), the one whose input has the fewest
    poisoned rows (most rows in common with any set poisoning few); else None."""
    if not getattr(req.defense, "row_wise", False):
        return None
    mine = doc["splits"]["train"]
    want = purifier_identity(req)
    best: tuple[int, Donor] | None = None
    rows: dict[str, int] | None = None  # the input's shard sizes, read once, when a candidate gets that far
    for loc in candidates:
        if storage.normalize(loc) == storage.normalize(req.out) or not store.is_dataset(loc):
            continue
        out_doc = store.read_meta(loc)
        rep = out_doc.get("meta", {}).get("purify", {})
        if [rep.get("defense"), rep.get("seed"), rep.get("model"), rep.get("resolved") or {}] != want:
            continue
        src = rep.get("input")
        if not src or not store.is_dataset(src):
            continue
        theirs = store.read_meta(src)["splits"].get("train", {})
        if theirs.get("shards") != mine["shards"] or theirs.get("rows") != mine["rows"]:
            continue
        shards = out_doc["splits"]["train"]
        by_name = {sh.rsplit("/", 1)[-1]: (sh, shards.get("sha256", {}).get(sh)) for sh in shards["shards"]}
        if rows is None:
            rows = {s: store.num_rows(storage.join(req.input, s)) for s in mine["shards"]}
        if not all(u.name in by_name for u in plan_units(rows, 0, req.chunk)):  # another unit size
            continue
        poisoned = sum(int(store.read_table(storage.join(src, sh), columns=["poisoned"]).column("poisoned")
                           .to_numpy().sum()) for sh in theirs["shards"])
        if best is None or poisoned < best[0]:
            best = poisoned, Donor(storage.normalize(src), storage.normalize(loc), theirs.get("sha256", {}), by_name)
    return None if best is None else best[1]


def unit_meta(loc: str) -> dict[bytes, bytes]:
    """A unit's parquet schema metadata (purify_seconds, rows_reused)."""
    fs, path = storage.filesystem(loc)
    with fs.open_input_file(path) as fh:
        return pq.ParquetFile(fh).schema_arrow.metadata or {}


class ShardPurifier:
    """Ray Data callable class: purifiers built once per actor and purification."""

    def __init__(self, requests: list[PurifyRequest], shapes: list[tuple[int, int, int]], actor: bool = True):
        import torch

        if actor and not torch.cuda.is_available():
            torch.set_num_threads(1)  # one core per actor
        self.requests, self.shapes = requests, shapes
        self.current: tuple[int, Any] | None = None

    def purifier(self, i: int):
        if self.current is None or self.current[0] != i:
            self.current = None  # free the previous model first
            self.current = (i, request_purifier(self.requests[i]))
        return self.current[1]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names, rows, sums = [], [], []
        for r, shard, a, b, sha in zip(batch["request"], batch["shard"], batch["start"], batch["stop"],
                                       batch["sha256"]):
            unit = Unit(int(r), str(shard), int(a), int(b), str(sha) or None)
            n, written = purify_unit(self.requests[unit.request], unit, self.purifier(unit.request),
                                     self.shapes[unit.request])
            names.append(unit.name)
            rows.append(n)
            sums.append(written)
        return {"request": batch["request"], "name": np.array(names), "rows": np.array(rows),
                "sha256": np.array(sums)}


def request_purifier(req: PurifyRequest):
    """The defense's f(uint8 NHWC images, index) -> purified images, with the request's model loaded once."""
    model = None if req.model_dir is None else str(storage.local_dir(req.model_dir, "config.json"))
    return req.defense.image_purifier(model, req.seed)


def input_fingerprint(input_dir: str) -> str:
    """Content hash of a dataset's train split (shards read one at a time, each checked against
    ``meta.json`` here, before any work)."""
    doc = store.read_meta(input_dir)
    sums = doc["splits"]["train"].get("sha256", {})
    h = hashlib.sha256()
    for shard in doc["splits"]["train"]["shards"]:
        h.update(bytes.fromhex(storage.sha256(store.read_shard_bytes(input_dir, shard, sums.get(shard)))))
    return h.hexdigest()[:16]


def check_purify_inputs(requests: list[PurifyRequest], docs: list[dict[str, Any]]) -> None:
    """Before any unit is computed: every request's seed, and a model-based purifier's model against the
    size of the images it will purify (``docs``: the input datasets' ``meta.json``)."""
    for req, doc in zip(requests, docs):
        check_seed(req.seed, "seed")
        if req.model_dir is not None:
            req.defense.check_model(req.model_dir, tuple(doc["image_shape"]))


def run_purifications(requests: list[PurifyRequest], *, actors: int = 0, address: str | None = None,
                      progress: bool = True, desc: str = "purify") -> list[dict[str, Any]]:
    """Compute every request's missing units (one Ray Data pipeline for all), then publish each; reports."""
    docs = [store.read_meta(r.input) for r in requests]
    for r, doc in zip(requests, docs):
        if "train" not in doc["splits"]:
            raise ConfigError(f"{storage.normalize(r.input)} has no train split to purify")
    check_purify_inputs(requests, docs)  # seeds; each model against its images' size
    units: list[Unit] = []
    per_request: list[list[Unit]] = []
    for i, (r, doc) in enumerate(zip(requests, docs)):
        shards = {s: store.num_rows(storage.join(r.input, s)) for s in doc["splits"]["train"]["shards"]}
        mine = plan_units(shards, i, r.chunk, doc["splits"]["train"].get("sha256"))
        per_request.append(mine)
        done = set(storage.listdir(storage.join(r.work, r.units_dir)))
        units += [u for u in mine if u.name not in done]
    written: dict[tuple[int, str], str] = {}  # (request, unit name) -> SHA-256 of the unit written now
    if units:
        total = sum(u.stop - u.start for u in units)
        bar = tqdm(total=total, unit="img", desc=f"{desc} ×{actors or 'in-process'}", disable=not progress)
        shapes = [tuple(d["image_shape"]) for d in docs]
        if actors > 0:
            for request, name, rows, sha in _run_ray(requests, shapes, units, actors, address):
                written[(request, name)] = sha
                bar.update(rows)
        else:
            worker = ShardPurifier(requests, shapes, actor=False)
            for u in units:
                rows, written[(u.request, u.name)] = purify_unit(requests[u.request], u, worker.purifier(u.request),
                                                                  shapes[u.request])
                bar.update(rows)
        bar.close()
    return [_publish(r, doc, mine, actors, sum(u.request == i for u in units),
                     {name: sha for (j, name), sha in written.items() if j == i})
            for i, (r, doc, mine) in enumerate(zip(requests, docs, per_request))]


def _run_ray(requests: list[PurifyRequest], shapes: list, units: list[Unit], actors: int, address: str | None):
    """Yield the row count of each finished unit."""
    import ray
    from ray.data import ActorPoolStrategy


    init_ray(address, num_cpus=actors + 1)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    items = [{"request": u.request, "shard": u.shard, "start": u.start, "stop": u.stop, "sha256": u.sha256 or ""}
             for u in units]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    env = storage.env()  # workers on other nodes reach the same storage (endpoint, keys, cache)
    ds = ds.map_batches(ShardPurifier, fn_constructor_kwargs=dict(requests=requests, shapes=shapes),
                        compute=ActorPoolStrategy(min_size=1, max_size=actors), num_gpus=gpus,
                        num_cpus=0 if gpus else 1, batch_size=1, batch_format="numpy",
                        **({"runtime_env": {"env_vars": env}} if env else {}))
    for row in ds.iter_rows():
        yield int(row["request"]), str(row["name"]), int(row["rows"]), str(row["sha256"])


def _publish(req: PurifyRequest, doc: dict[str, Any], units: list[Unit], actors: int,
             computed: int, written: dict[str, str]) -> dict[str, Any]:
    """Check every unit is there with its rows, copy the other splits, write meta.json last, move into place."""
    if store.is_dataset(req.out) and storage.normalize(req.work) != storage.normalize(req.out):
        storage.remove(req.work)  # published meanwhile by another run of the same request: first writer wins
        return {**store.read_meta(req.out)["meta"].get("purify", {}), "cached": True,
                "out": storage.normalize(req.out)}
    names = set(storage.listdir(storage.join(req.work, req.units_dir)))
    missing = [u.name for u in units if u.name not in names]
    if missing:
        raise RuntimeError(f"purify: units {missing[:3]} were not written")
    rows = sum(store.num_rows(req.unit_loc(u)) for u in units)
    if rows != doc["splits"]["train"]["rows"] or rows != sum(u.stop - u.start for u in units):
        raise RuntimeError(f"purify: {rows} rows written, the input has {doc['splits']['train']['rows']}")
    metas = [unit_meta(req.unit_loc(u)) for u in units]
    seconds = sum(float(m.get(b"purify_seconds", b"0")) for m in metas)  # all units, also those of earlier runs
    reused = sum(int(m.get(b"rows_reused", b"0")) for m in metas)
    splits = {}
    for name, info in doc["splits"].items():
        if name == "train":  # what a trial reading this set reports: the model's settings, the compute time
            meta = {**info.get("meta", {}), "resolved": req.resolved, "purify_seconds": seconds}
            shards = [f"{req.units_dir}/{u.name}" for u in units]
            sums = {f"{req.units_dir}/{u.name}": written.get(u.name) or  # units of an earlier run: read once
                    storage.sha256(storage.read_bytes(req.unit_loc(u))) for u in units}
            splits[name] = {**info, "shards": shards, "sha256": sums, "meta": meta}
        elif req.copy_splits:
            sums = {}
            for shard in info["shards"]:
                data = store.read_shard_bytes(req.input, shard, info.get("sha256", {}).get(shard))
                storage.write_bytes(storage.join(req.work, shard), data)
                sums[shard] = storage.sha256(data)
            splits[name] = {**info, "sha256": sums}
    report = {"key": req.key, "defense": flatten(req.defense, "defense."), "model": req.model_dir,
              "seed": req.seed, "input": storage.normalize(req.input), "rows": rows, "units": len(units),
              "units_computed": computed, "seconds": seconds, "actors": actors, "rows_reused": reused,
              **({"donor": req.donor.out} if req.donor else {}),
              **({"resolved": req.resolved} if req.resolved else {})}
    new_doc = {**doc, "splits": splits, "meta": {**doc.get("meta", {}), **req.meta, "purify": report}}
    storage.write_json(storage.join(req.work, "meta.json"), new_doc)
    if storage.normalize(req.work) != storage.normalize(req.out):
        if os.path.isdir(req.out) and not os.listdir(req.out):
            os.rmdir(req.out)  # an empty directory left for the output
        if not storage.publish_dir(req.work, req.out, "meta.json"):
            return {**store.read_meta(req.out)["meta"].get("purify", {}), "cached": True,
                    "out": storage.normalize(req.out)}
    return {**report, "cached": False, "out": storage.normalize(req.out)}


def purify_dataset(input_dir: str | os.PathLike, defense: DefenseConfig, out_dir: str | os.PathLike, *,
                   seed: int = 0, actors: int = 0, address: str | None = None, batch_size: int | None = None,
                   chunk_rows: int = CHUNK_ROWS, progress: bool = True,
                   reuse: list[str | os.PathLike] = ()) -> dict[str, Any]:
    """Purify the ``train`` split of ``input_dir`` into ``out_dir`` (other splits copied). Returns a report.

    ``reuse``: published purified sets whose rows may be copied where ``input_dir`` has the same rows
    (:func:`find_donor` picks one made by the same purifier, seed and model, or none)."""
    input_dir, out_dir = storage.normalize(input_dir), storage.normalize(out_dir)
    doc = store.read_meta(input_dir)
    if "train" not in doc["splits"]:
        raise ConfigError(f"{input_dir} has no train split to purify")
    model_dir, model_fp = None, "none"
    if defense.needs_model:
        model_dir = _resolve_model(input_dir, defense, actors, address, progress)
        model_fp = model_fingerprint(model_dir)
    key = purification_key({"input": input_fingerprint(input_dir)}, defense, seed,
                           model_fp if model_dir is not None else None)
    if store.is_dataset(out_dir):
        done = store.read_meta(out_dir).get("meta", {}).get("purify", {})
        if done.get("key") == key:
            return {**done, "cached": True, "out": out_dir}
        raise ConfigError(f"{out_dir} already holds another dataset; choose a new output directory")
    req = PurifyRequest(input_dir, out_dir, defense, seed, model_dir, key,
                        batch_size or getattr(defense, "batch_size", 256), chunk_rows=chunk_rows)
    if storage.is_uri(out_dir):
        others = [n for n in storage.listdir(out_dir) if n != req.units_dir]
    else:
        others = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    if others or (storage.is_file(out_dir)):
        raise ConfigError(f"{out_dir} already exists; choose a new output directory")
    resolved = {} if model_dir is None else defense.model_resolved(model_dir)
    req = dataclasses.replace(req, resolved=resolved)
    if reuse:
        req = dataclasses.replace(req, donor=find_donor(req, doc, [storage.normalize(r) for r in reuse]))
    report = run_purifications([req], actors=actors, address=address, progress=progress,
                               desc=f"purify {defense.name}")[0]
    return {**report, "model_fingerprint": model_fp}


def model_for(input_dir: str, defense: DefenseConfig, cache_dir: str | None = None, progress: bool = False) -> str:
    """The model a model-based purifier uses on ``input_dir`` (an ``auto`` model is trained once, cached);
    ``cache_dir`` names the cache when this runs in a worker (default ``$ECLIPSE_RAY_CACHE``)."""

    if cache_dir:
        os.environ["ECLIPSE_RAY_CACHE"] = cache_dir
    doc = store.read_meta(input_dir)
    train = store.read_split(input_dir, "train", doc)
    originals = store.read_split(input_dir, "originals", doc) if "originals" in doc["splits"] else None
    return str(defense.model_path(train, clean_view(train, originals), progress))


def _resolve_model(input_dir: str, defense: DefenseConfig, actors: int, address: str | None,
                   progress: bool) -> str:
    """:func:`model_for`, in a Ray task when purifying over Ray (the driver never reads the data)."""
    if actors <= 0:
        return model_for(input_dir, defense, progress=progress)
    import ray


    init_ray(address, num_cpus=actors + 1)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    env = storage.env()
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=3,
                      **({"runtime_env": {"env_vars": env}} if env else {}))(model_for)
    return ray.get(task.remote(input_dir, defense, cache_root()))
