"""Streaming purification at scale: driver peak memory and images/s against dataset size and actor count.

Claim (README "Purification at scale"): the driver of ``eclipse-ray purify``
only plans and publishes, so its peak RSS does not grow with the dataset (goal:
500,000 images within 1.2× of 50,000), and actors scale (goal: 2 actors ≥ 1.7×
the images/s of 1 on a 2-core machine).

Each measurement runs ``purify_dataset`` in a fresh Python process (the
driver) and reads that process's own peak RSS (``getrusage(RUSAGE_SELF)``);
actors are other processes and do not count. Inputs are synthetic 32×32 RGB
datasets written shard by shard (never held in memory) under ``--work``.

Usage:
    python benchmarks/purify_scaling.py                       # the README's table (≈ 15 min on 2 cores)
    python benchmarks/purify_scaling.py --sizes 20000 --cases bitdepth:1   # a quick look
    python benchmarks/purify_scaling.py --input DIR --cases denoise:1 denoise:2  # a real dataset directory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CASES = ("bitdepth:1", "bitdepth:2", "denoise:1", "denoise:2")


def write_synthetic(path: Path, n: int, shard_rows: int = 2048, seed: int = 0) -> Path:
    """A dataset directory of ``n`` random 32×32 RGB images (and a 64-image test split), shard by shard."""

    from eclipse_ray import storage
    from eclipse_ray.data import store
    from eclipse_ray.data.imageset import ImageSet

    if store.is_dataset(path):
        return path
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    classes = tuple(f"c{i}" for i in range(10))
    shards = []
    for k, a in enumerate(range(0, n, shard_rows)):
        m = min(shard_rows, n - a)
        s = ImageSet(rng.integers(0, 256, (m, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, m),
                     np.arange(a, a + m), np.zeros(m, bool), classes)
        shard = f"train/part-{k:05d}.parquet"
        store.write_table(tmp / shard, store.to_table(s))
        shards.append(shard)
    test = ImageSet(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 64),
                    np.arange(n, n + 64), np.zeros(64, bool), classes)
    store.write_table(tmp / "test/part-00000.parquet", store.to_table(test))
    doc = {"format": store.FORMAT, "classes": list(classes), "image_shape": [32, 32, 3],
           "image_encoding": "raw-uint8-hwc",
           "splits": {"train": {"rows": n, "shards": shards, "poisoned": 0, "meta": {}},
                      "test": {"rows": 64, "shards": ["test/part-00000.parquet"], "poisoned": 0, "meta": {}}},
           "meta": {"source": f"synthetic-{n}"}}
    storage.write_json(tmp / "meta.json", doc)
    os.replace(tmp, path)
    return path


def tiny_model(path: Path) -> Path:
    """A tiny UNet (random weights: speed does not depend on them) for the one-shot denoiser."""
    if (path / "config.json").is_file():
        return path
    import torch
    from diffusers import DDPMScheduler

    from eclipse_ray.diffusion.unet import build_unet, save_model

    torch.manual_seed(0)
    save_model(build_unet("tiny"), DDPMScheduler(num_train_timesteps=1000), path, {})
    return path


_DRIVER = r"""
import json, resource, sys, time
from eclipse_ray.defenses import DEFENSES
from eclipse_ray.distributed.purify import purify_dataset
inp, out, name, settings, actors = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
t = time.perf_counter()
r = purify_dataset(inp, DEFENSES.build(name, settings), out, actors=actors, progress=False)
wall = time.perf_counter() - t
print(json.dumps({"rows": r["rows"], "wall_s": wall, "images_per_s": r["rows"] / wall,
                  "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(inp: Path, work: Path, case: str, model: Path) -> dict:
    name, actors = case.split(":")
    settings = {"bits": "4"} if name == "bitdepth" else {"model": str(model), "sigma": "0.1", "batch_size": "64"}
    out = work / f"out-{inp.name}-{name}-{actors}"
    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run([sys.executable, "-c", _DRIVER, str(inp), str(out), name, json.dumps(settings), actors],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    shutil.rmtree(out, ignore_errors=True)
    return {"input": inp.name, "defense": name, "actors": int(actors), **json.loads(res.stdout.strip().splitlines()[-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000])
    p.add_argument("--cases", nargs="+", default=list(CASES), help="defense:actors (bitdepth or denoise)")
    p.add_argument("--denoise-max", type=int, default=50_000, help="largest size the denoiser runs on")
    p.add_argument("--input", default=None, help="a dataset directory instead of synthetic sizes")
    p.add_argument("--work", default=None, help="where inputs and outputs go (default: a temporary directory)")
    p.add_argument("--out", default=None, help="also write the rows as JSON lines here")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="purify_scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_model(work / "tiny-unet")
    inputs = [Path(args.input)] if args.input else [write_synthetic(work / f"synthetic-{n}", n) for n in args.sizes]
    rows = []
    for inp in inputs:
        n = json.loads((inp / "meta.json").read_text())["splits"]["train"]["rows"]
        for case in args.cases:
            if case.startswith("denoise") and n > args.denoise_max and not args.input:
                continue
            row = measure(inp, work, case, model)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    base = {(r["input"], r["defense"]): r for r in rows if r["actors"] == 1}
    for r in rows:
        b = base.get((r["input"], r["defense"]))
        if b and r["actors"] > 1:
            print(f"{r['input']} {r['defense']}: {r['actors']} actors {r['images_per_s'] / b['images_per_s']:.2f}× "
                  f"the images/s of 1")
    if len(inputs) > 1:
        small = min(rows, key=lambda r: (r["rows"], r["driver_peak_rss_mb"]))
        for r in rows:
            if r["rows"] > small["rows"] and r["defense"] == small["defense"] and r["actors"] == small["actors"]:
                print(f"driver peak RSS {r['rows']:,} / {small['rows']:,} images ({r['defense']}, {r['actors']} "
                      f"actor): {r['driver_peak_rss_mb'] / small['driver_peak_rss_mb']:.2f}×")


if __name__ == "__main__":
    main()
