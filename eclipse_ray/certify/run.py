"""Certified diffusion denoising (Hong, Carlini & Kurakin, arXiv 2403.11981): N models as Ray tasks.

Randomized smoothing over the whole training pipeline: model m is trained on
``denoise(D + σ·N_m)`` — every training image noised with its own Gaussian
draw and denoised in one shot by a diffusion model (the ``denoise`` defense) —
and votes on every test input; :mod:`eclipse_ray.certify.stats` turns the N
votes into a prediction, a Clopper–Pearson bound and a certified radius.

* The diffusion model is resolved (for ``defense.model=auto``: trained on the
  defender's clean reference set, cached) once, in the driver, before any task
  starts; its files travel to the tasks through Ray's object store, so workers
  need no shared disk.
* Each model's test predictions are saved as soon as it finishes under
  ``OUT/models/<key>/model-NNNNN.npz`` (``key`` hashes everything a model's
  predictions depend on except its number), so an interrupted run resumes
  without retraining finished models and a larger ``certify.models`` reuses the
  smaller run's models.
* The radius uses the σ the denoiser actually applies (the first schedule step
  with noise ≥ the requested σ, §5.0), which is ≥ ``certify.sigma``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
from tqdm.auto import tqdm

from eclipse_ray.attacks import ATTACKS, AttackConfig
from eclipse_ray.config import (
    Config,
    ConfigError,
    config_hash,
    flatten,
    setting,
    with_overrides,
    without_added_defaults,
)
from eclipse_ray.data.address import address_dataset, content_digest
from eclipse_ray.data.cache import address_settings
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.data.sources import Dataset
from eclipse_ray.defenses.diffusion import Denoise
from eclipse_ray.storage import local_dir, replacing
from eclipse_ray.victim.train import VictimConfig, train_victim

FORMAT = 1  # bump when the meaning of a saved model file changes


@dataclass(frozen=True)
class CertifyConfig(Config):
    section: ClassVar[str] = "certify"
    sigma: float = setting(0.1, "smoothing noise σ in pixel units [0,1] added to every training image", gt=0.0)
    models: int = setting(100, "N: models, each trained on its own noised-and-denoised training set", ge=2)
    selection_models: int | None = setting(
        None, "Cohen's n0: models whose votes only pick the class (none: 10 % of N, at least 1; "
              "0: pick and estimate on all N, slightly optimistic)", ge=0)
    alpha: float = setting(0.001, "failure probability of the Clopper–Pearson lower bound", gt=0.0, lt=0.5)
    seed: int = setting(0, "base seed; model m draws its noise and training seeds from (seed, m)", ge=0)
    poison_l2: float | None = setting(
        None, "per-poison ℓ2 norm for reading radii as numbers of poisons (none: 8/255·√(H·W·C))", gt=0.0)
    radii: tuple[float, ...] | None = setting(None, "radii of the table (none: 8 steps up to the largest certifiable)")
    cpus_per_model: float = setting(1.0, "Ray CPUs per model task", gt=0.0)
    gpus_per_model: float | None = setting(None, "Ray GPUs per model task (none: 0.5 if the cluster has GPUs)", ge=0.0)

    def validate(self) -> None:
        if self.selection_models is not None and self.selection_models >= self.models:
            raise ConfigError(f"certify.selection_models={self.selection_models}: must be < certify.models="
                              f"{self.models} (some models must estimate)")
        if self.radii is not None and any(r < 0 for r in self.radii):
            raise ConfigError("certify.radii: radii must be ≥ 0")
        n = self.models - self.n0
        if self.alpha ** (1.0 / n) < 0.5:
            need = self.n0 + math.ceil(math.log(self.alpha) / math.log(0.5))
            raise ConfigError(f"certify: {n} estimation models at α={self.alpha:g} can certify nothing "
                              f"(best p_lower α^(1/n) = {self.alpha ** (1.0 / n):.3f} < 0.5); "
                              f"use certify.models ≥ {need} or a larger certify.alpha")

    @property
    def n0(self) -> int:
        """Selection models actually used."""
        if self.selection_models is not None:
            return self.selection_models
        return max(1, round(0.1 * self.models))


@dataclass(frozen=True)
class CertifyJob:
    """Everything a certify run depends on."""

    dataset: str
    attack: AttackConfig
    denoiser: Denoise
    victim: VictimConfig = field(default_factory=VictimConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)

    def flat(self) -> dict[str, Any]:
        return {"dataset": self.dataset, **flatten(self.attack, "attack."), **flatten(self.denoiser, "defense."),
                **flatten(self.victim.resolved(), "victim."), **flatten(self.certify, "certify.")}


def build_job(dataset: str, attack: str = "none", overrides: Mapping[str, str] | None = None) -> CertifyJob:
    """A validated job from ``--set`` overrides (certify.*, attack.*, defense.* of ``denoise``, victim.*)."""
    per: dict[str, dict[str, str]] = {s: {} for s in ("certify", "attack", "defense", "victim")}
    for key, raw in (overrides or {}).items():
        section, dot, rest = key.partition(".")
        if not (dot and section in per and rest):
            raise ConfigError(f"unknown setting {key!r} (certify takes certify.*, attack.*, defense.*, victim.*)")
        if section == "defense" and rest in ("sigma", "t_star"):
            raise ConfigError(f"{key}: set the smoothing noise with certify.sigma")
        if rest == "name":
            raise ConfigError(f"{key}: not a setting")
        per[section][rest] = raw
    cert = with_overrides(CertifyConfig(), per["certify"], prefix="certify.")
    denoiser = with_overrides(Denoise(), per["defense"], prefix="defense.")
    denoiser = dataclasses.replace(denoiser, sigma=cert.sigma)
    victim = with_overrides(VictimConfig(), per["victim"], prefix="victim.")
    if victim.transfer != "none":
        raise ConfigError(f"victim.transfer={victim.transfer}: certify trains its smoothed victims from scratch")
    return CertifyJob(dataset, ATTACKS.build(attack, per["attack"]), denoiser, victim, cert)


def model_seeds(seed: int, m: int) -> tuple[int, int]:
    """(noise seed, training seed) of model ``m``: independent streams derived from (seed, m)."""
    s = np.random.SeedSequence([int(seed), int(m), 0x5EED]).generate_state(2)
    return int(s[0] & 0x7FFFFFFF), int(s[1] & 0x7FFFFFFF)


def train_one(m: int, seed: int, denoiser: Denoise, victim: VictimConfig, train: ImageSet,
              test_images: np.ndarray) -> dict[str, Any]:
    """Model ``m``: noise + one-shot denoise the training set, train a victim, predict the test set."""
    noise_seed, train_seed = model_seeds(seed, m)
    t0 = time.perf_counter()
    purified = denoiser.purify(train, noise_seed, progress=False)
    t1 = time.perf_counter()
    net = train_victim(victim, purified.images, purified.labels, train.num_classes, train_seed, progress=False)
    pred = net.predict(test_images)
    return {"pred": pred.astype(np.int16), "purify_seconds": t1 - t0, "train_seconds": time.perf_counter() - t1}


def _model_files(model_dir: Path) -> dict[str, bytes]:
    """The diffusion model's files (relative path → bytes), to ship to tasks; training checkpoints left out."""
    out = {}
    for p in sorted(model_dir.rglob("*")):
        rel = p.relative_to(model_dir)
        if p.is_file() and rel.parts[0] != "checkpoint" and not p.name.endswith(".lock"):
            out[str(rel)] = p.read_bytes()
    return out


def _remote_train(m: int, seed: int, denoiser: Denoise, victim: VictimConfig, files: dict[str, bytes],
                  arrays: dict[str, Any]) -> dict[str, Any]:
    """Ray task body: materialise the model files locally, then :func:`train_one`."""
    with tempfile.TemporaryDirectory(prefix="eclipse_ray_denoiser_") as tmp:
        for rel, blob in files.items():
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        train = ImageSet(np.array(arrays["images"]), np.array(arrays["labels"]), np.array(arrays["index"]),
                         np.zeros(len(arrays["labels"]), bool), tuple(arrays["classes"]))
        out = train_one(m, seed, dataclasses.replace(denoiser, model=tmp), victim, train,
                        np.array(arrays["test_images"]))
    return out


class ModelStore:
    """Per-model predictions under ``OUT/models/<key>/``: written atomically, read back to resume."""

    def __init__(self, root: Path, key: str, test_index: np.ndarray) -> None:
        self.dir = root / "models" / key
        self.test_index = np.asarray(test_index, np.int64)

    def path(self, m: int) -> Path:
        return self.dir / f"model-{m:05d}.npz"

    def load(self, m: int) -> dict[str, Any] | None:
        """Model m's saved result, or None if absent/unreadable/for another test set."""
        try:
            with np.load(self.path(m), allow_pickle=False) as z:
                doc = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError):
            return None
        if not np.array_equal(doc.get("test_index"), self.test_index):
            return None
        return doc

    def save(self, m: int, result: Mapping[str, Any]) -> None:
        with replacing(self.path(m)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, pred=np.asarray(result["pred"], np.int16), test_index=self.test_index,
                     purify_seconds=float(result["purify_seconds"]), train_seconds=float(result["train_seconds"]))


def _gpus(cfg: CertifyConfig) -> float:
    import ray

    if cfg.gpus_per_model is not None:
        return cfg.gpus_per_model
    return 0.5 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def train_models(job: CertifyJob, pending: list[int], model_dir: Path, train: ImageSet, test_images: np.ndarray,
                 store: ModelStore, *, use_ray: bool, address: str | None, progress: bool) -> None:
    """Train every pending model (Ray tasks, or in this process) and save each as it finishes."""
    bar = tqdm(total=len(pending), desc="certify models", unit="model", disable=not progress)
    if not use_ray:
        local = dataclasses.replace(job.denoiser, model=str(model_dir))
        for m in pending:
            store.save(m, train_one(m, job.certify.seed, local, job.victim, train, test_images))
            bar.update()
        bar.close()
        return
    import ray

    from eclipse_ray.distributed.connect import init_ray

    init_ray(address)
    task = ray.remote(num_cpus=job.certify.cpus_per_model, num_gpus=_gpus(job.certify), max_retries=2)(_remote_train)
    files = ray.put(_model_files(model_dir))
    arrays = ray.put({"images": train.images, "labels": train.labels, "index": train.index,
                      "classes": list(train.classes), "test_images": test_images})
    running = {task.remote(m, job.certify.seed, job.denoiser, job.victim, files, arrays): m for m in pending}
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                store.save(running.pop(ref), ray.get(ref))
                bar.update()
    finally:
        for ref in running:
            ray.cancel(ref)
        bar.close()


def resolve_denoiser(job: CertifyJob, data: Dataset, progress: bool) -> tuple[Path, dict[str, Any], str]:
    """(model directory, resolved noise columns, model identity for the key): the model trained here, once."""
    from eclipse_ray.data.imageset import clean_view
    from eclipse_ray.diffusion.unet import load_model

    clean = clean_view(data.train, data.splits.get("originals"))
    model_dir = local_dir(job.denoiser.model_path(data.train, clean, progress), "config.json")
    resolved = job.denoiser.resolved(load_model(model_dir, "cpu"))
    identity = f"auto:{model_dir.name}" if job.denoiser.model == "auto" else str(Path(job.denoiser.model).resolve())
    return model_dir, resolved, identity


def model_key(job: CertifyJob, identity: str, digest: str | None = None) -> str:
    """What one model's predictions depend on: data, attack, denoiser, victim, σ and seed (not N, α, n0).
    ``digest``: the content digest of a dataset read from a path, when already taken."""
    flat = {"format": FORMAT, "dataset": address_dataset(job.dataset, digest),
            **address_settings(job.attack, "attack."),
            **without_added_defaults(dataclasses.replace(job.denoiser, model=identity), "defense."),
            **address_settings(job.victim.resolved(), "victim."), "certify.seed": job.certify.seed}
    # (data, attack and victim spelled as artifact addresses are: models certified before are found again,
    # except those of a dataset read from a path, which are now addressed by its content)
    for k in ("defense.batch_size", "defense.device", "defense.compile", "defense.compile_mode", "victim.device"):
        flat.pop(k, None)  # how, not what
    return config_hash(flat)


def run_certify(job: CertifyJob, out: str | Path, *, data: Dataset | None = None, data_dir: str | None = None,
                cache_dir: str | None = None, use_ray: bool = True, address: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Train the missing models, certify every test input, write the outputs; returns the summary."""
    from eclipse_ray.certify import report
    from eclipse_ray.certify.stats import certify
    from eclipse_ray.trial import TrialConfig, prepare

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    t0 = time.perf_counter()
    digest = content_digest(job.dataset)  # a dataset read from a path: hashed once, here
    if data is None:
        data = prepare(TrialConfig(job.dataset, job.attack, job.denoiser, job.victim, job.certify.seed,
                                   dataset_digest=digest), data_dir, cache_dir)
    train, test = data.train, data.test
    model_dir, resolved, identity = resolve_denoiser(job, data, progress)
    key = model_key(job, identity, digest)
    store = ModelStore(out, key, test.index)
    n = job.certify.models
    pending = [m for m in range(n) if store.load(m) is None]
    t1 = time.perf_counter()
    if pending:
        train_models(job, pending, model_dir, train, test.images, store, use_ray=use_ray, address=address,
                     progress=progress)
    results = [store.load(m) for m in range(n)]
    if any(r is None for r in results):
        raise RuntimeError(f"certify: model results missing under {store.dir} after training")
    preds = np.stack([r["pred"].astype(np.int64) for r in results])
    sigma = float(resolved["defense.sigma"])
    cert = certify(preds, train.num_classes, sigma, job.certify.alpha, job.certify.n0)
    summary = {**job.flat(), **resolved, "certify.sigma_resolved": sigma, "certify.n0": job.certify.n0,
               "certify.n": cert.n, "model_key": key, "models_trained": len(pending),
               "models_reused": n - len(pending), "train_wall_seconds": time.perf_counter() - t1,
               "seconds": time.perf_counter() - t0,
               "model_purify_seconds_mean": float(np.mean([r["purify_seconds"] for r in results])),
               "model_train_seconds_mean": float(np.mean([r["train_seconds"] for r in results]))}
    return report.write_outputs(out, job, data, preds, cert, summary)
