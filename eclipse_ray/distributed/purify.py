"""Purify a dataset directory with Ray Data: parquet shards → actor pool → parquet shards.

    read_parquet(pending shards) → map_batches(PurifyActor, compute=ActorPoolStrategy(size=N),
                                               num_gpus=1 per actor if CUDA else 0, batch_size=B)

Each actor loads the model once (``__init__``). Outputs stream back to the
driver, which writes each output shard as soon as all of its rows are in
(under a temporary name, then renamed), so an interrupted run resumes without
redoing finished shards. The work directory is named after a content hash of
(input shards, defense config, model weights, seed): the same request is
computed once and then served from the finished directory. Row count,
``index``, ``labels`` and ``poisoned`` are checked against the input before the
output is published. ``actors=0`` runs the same per-shard loop in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from eclipse_ray.config import ConfigError, flatten
from eclipse_ray.data import store
from eclipse_ray.data.imageset import check_same_samples
from eclipse_ray.defenses import DefenseConfig
from eclipse_ray.victim.metrics import clean_view

ImagePurifier = Callable[[np.ndarray, np.ndarray], np.ndarray]


def make_purifier(defense: DefenseConfig, model_dir: str | None, seed: int) -> ImagePurifier:
    """f(uint8 NHWC images, index) -> purified images, with any model loaded once."""
    return defense.image_purifier(model_dir, seed)


class PurifyActor:
    """Ray Data callable class: the purifier is built once per actor."""

    def __init__(self, defense: DefenseConfig, model_dir: str | None, seed: int, shape: tuple[int, int, int]):
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(1)
        self.shape = shape
        self.run = make_purifier(defense, model_dir, seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = store.decode_images(batch["image"], self.shape)
        out = self.run(images, batch["index"])
        return {**batch, "image": np.array([img.tobytes() for img in out], dtype=object)}


def request_key(input_dir: Path, defense: DefenseConfig, model_fp: str, seed: int) -> str:
    """Content hash of what a purification depends on."""
    doc = store.read_meta(input_dir)
    h = hashlib.sha256()
    for shard in doc["splits"]["train"]["shards"]:
        with open(input_dir / shard, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    h.update(json.dumps(flatten(defense, "defense."), sort_keys=True, default=str).encode())
    h.update(f"{model_fp}|{seed}".encode())
    return h.hexdigest()[:16]


def _write_shard(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def purify_dataset(input_dir: str | Path, defense: DefenseConfig, out_dir: str | Path, *, seed: int = 0,
                   actors: int = 0, address: str | None = None, batch_size: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Purify the ``train`` split of ``input_dir`` into ``out_dir`` (other splits copied). Returns a report."""
    from eclipse_ray.diffusion.unet import model_fingerprint

    input_dir, out_dir = Path(input_dir), Path(out_dir)
    doc = store.read_meta(input_dir)
    if "train" not in doc["splits"]:
        raise ConfigError(f"{input_dir} has no train split to purify")
    shape = tuple(doc["image_shape"])
    train = store.read_split(input_dir, "train")
    model_dir, model_fp = None, "none"
    if defense.needs_model:
        originals = store.read_split(input_dir, "originals") if "originals" in doc["splits"] else None
        model_dir = str(defense.model_path(train, clean_view(train, originals), progress))
        model_fp = model_fingerprint(model_dir)
    key = request_key(input_dir, defense, model_fp, seed)
    if (out_dir / "meta.json").is_file():
        done = store.read_meta(out_dir).get("meta", {}).get("purify", {})
        if done.get("key") == key:
            return {**done, "cached": True, "out": str(out_dir)}
        raise ConfigError(f"{out_dir} already holds another dataset; choose a new output directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} already exists; choose a new output directory")

    work = out_dir.parent / f".{out_dir.name}.purify-{key}"
    (work / "train").mkdir(parents=True, exist_ok=True)
    shards = doc["splits"]["train"]["shards"]
    pending = [s for s in shards if not (work / s).is_file()]
    t0 = time.perf_counter()
    bs = batch_size or getattr(defense, "batch_size", 256)
    if pending:
        if actors > 0:
            _run_ray(input_dir, pending, work, defense, model_dir, seed, shape, actors, address, bs, progress)
        else:
            run = make_purifier(defense, model_dir, seed)
            bar = tqdm(total=sum(pq.read_metadata(input_dir / s).num_rows for s in pending), unit="img",
                       desc=f"purify {defense.name}", disable=not progress)
            for shard in pending:
                table = pq.read_table(input_dir / shard)
                images = store.decode_images(table.column("image"), shape)
                index = table.column("index").to_numpy()
                out = np.concatenate([run(images[i:i + bs], index[i:i + bs]) for i in range(0, len(images), bs)])
                _write_shard(table.set_column(table.schema.get_field_index("image"), "image",
                                              pa.array([img.tobytes() for img in out], pa.binary())), work / shard)
                bar.update(len(out))
            bar.close()
    seconds = time.perf_counter() - t0

    # Publish: check every sample, copy the other splits, write meta.json, rename into place.
    purified = store.from_table(pa.concat_tables([pq.read_table(work / s) for s in shards]), shape,
                                tuple(doc["classes"]))
    check_same_samples(train, purified, f"purify {defense.name}")
    for name, info in doc["splits"].items():
        if name != "train":
            (work / name).mkdir(exist_ok=True)
            for shard in info["shards"]:
                shutil.copyfile(input_dir / shard, work / shard)
    report = {"key": key, "defense": flatten(defense, "defense."), "model": model_dir, "model_fingerprint": model_fp,
              "seed": seed, "input": str(input_dir), "rows": len(train), "shards_computed": len(pending),
              "seconds": seconds, "actors": actors}
    if model_dir is not None:
        report["resolved"] = defense.model_resolved(model_dir)
    new_doc = {**doc, "meta": {**doc.get("meta", {}), "purify": report}}
    (work / "meta.json").write_text(json.dumps(new_doc, indent=2, default=str))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(work, out_dir)
    return {**report, "cached": False, "out": str(out_dir)}


def _run_ray(input_dir: Path, pending: list[str], work: Path, defense: DefenseConfig, model_dir: str | None,
             seed: int, shape: tuple[int, int, int], actors: int, address: str | None, batch_size: int,
             progress: bool) -> None:
    import ray
    import torch
    from ray.data import ActorPoolStrategy

    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, ignore_reinit_error=True)
        else:
            ray.init(num_cpus=max(actors + 1, os.cpu_count() or 1), include_dashboard=False,
                     ignore_reinit_error=True)
    gpus = 1 if torch.cuda.is_available() or ray.cluster_resources().get("GPU", 0) >= 1 else 0
    paths = [str((input_dir / s).resolve()) for s in pending]
    rows_in = {p: pq.read_metadata(p).num_rows for p in paths}
    ds = ray.data.read_parquet(paths, include_paths=True)
    blocks = max(len(paths), min(actors * 4, -(-sum(rows_in.values()) // batch_size)))
    if blocks > len(paths):  # a shard is one block: split so that every actor gets work
        ds = ds.repartition(blocks, shuffle=False)
    ds = ds.map_batches(PurifyActor, fn_constructor_kwargs=dict(defense=defense, model_dir=model_dir, seed=seed,
                                                               shape=shape),
                        compute=ActorPoolStrategy(size=actors), num_gpus=gpus, num_cpus=0 if gpus else 1,
                        batch_size=batch_size, batch_format="numpy")
    parts: dict[str, list[pa.Table]] = {p: [] for p in paths}
    got = dict.fromkeys(paths, 0)
    bar = tqdm(total=sum(rows_in.values()), unit="img", desc=f"purify {defense.name} ×{actors}",
               disable=not progress)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for path in set(batch.column("path").to_pylist()):
            sel = batch.filter(pa.compute.equal(batch.column("path"), path)).drop_columns(["path"])
            parts[path].append(sel)
            got[path] += sel.num_rows
            bar.update(sel.num_rows)
            if got[path] == rows_in[path]:
                _finish_shard(input_dir, Path(path), parts.pop(path), work)
    bar.close()
    missing = [p for p in parts if parts[p] or got[p] != rows_in[p]]
    if missing:
        raise RuntimeError(f"purify: shards {missing} came back incomplete")


def _finish_shard(input_dir: Path, path: Path, tables: list[pa.Table], work: Path) -> None:
    """Write one output shard in the input shard's row order."""
    original = pq.read_table(path, columns=["index"]).column("index").to_numpy()
    table = pa.concat_tables(tables)
    order = np.argsort(table.column("index").to_numpy())
    pos = np.searchsorted(table.column("index").to_numpy()[order], original)
    table = table.take(pa.array(order[pos]))
    if not np.array_equal(table.column("index").to_numpy(), original):
        raise RuntimeError(f"purify: rows of {path.name} were lost or duplicated")
    rel = path.resolve().relative_to(input_dir.resolve())
    _write_shard(table.select(list(store.COLUMNS)).cast(pa.schema([pa.field("index", pa.int64()), pa.field("label", pa.int64()),
                                                    pa.field("poisoned", pa.bool_()),
                                                    pa.field("image", pa.binary())])), work / rel)
