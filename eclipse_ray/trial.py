"""One trial end to end: load → poison → purify → train the victim → measure → one results row.

This is the unit every sweep repeats. :func:`build_config` validates all
settings before any work starts; :func:`run_trial` does the work and returns
the row (flattened config, metrics, timings, provenance). Nothing is written
until the row is complete.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from eclipse_ray import storage
from eclipse_ray.attacks import ATTACKS, AttackConfig
from eclipse_ray.config import ConfigError, check_seed, config_hash, flatten, parse_value, with_overrides
from eclipse_ray.data.address import address_dataset, check_content, content_digest, path_kind, published_as
from eclipse_ray.data.cache import cached_attack, read_acc_ref, write_acc_ref
from eclipse_ray.data.imageset import ImageSet, check_same_samples, clean_view
from eclipse_ray.data.kinds import AVAILABILITY, BACKDOOR, NONE, TARGETED
from eclipse_ray.data.sources import Dataset, dataset_label, former_specs, load_dataset
from eclipse_ray.defenses import DEFENSES, DefenseConfig
from eclipse_ray.provenance import provenance
from eclipse_ray.result_store import HEADLINE, append_rows, read_results
from eclipse_ray.tensors import pick_device
from eclipse_ray.victim import metrics
from eclipse_ray.victim.train import Victim, VictimConfig, train_victim
from eclipse_ray.victim.transfer import finetune_rows

SECTIONS = ("attack", "defense", "victim")


@dataclass(frozen=True)
class TrialConfig:
    """Everything that determines a trial's result (and hence its ``config_hash``)."""

    dataset: str
    attack: AttackConfig
    defense: DefenseConfig
    victim: VictimConfig = field(default_factory=VictimConfig)
    seed: int = 0
    purify_seed: int | None = None  # fixes the purification's randomness apart from ``seed`` (None: ``seed``)
    # the sha256 of a dataset read from a path, taken where the work was planned (eclipse_ray.data.address):
    # what its artifacts are filed under; not a result column (rows carry it in ``dataset_label``)
    dataset_digest: str | None = None

    def __post_init__(self) -> None:
        v = self.victim
        if v.transfer != "none" and self.defense.trains_victim:
            raise ConfigError(f"victim.transfer={v.transfer}: {self.defense.name} trains its own networks; a "
                              f"transfer victim needs a defense that leaves the victim's training alone")
        if v.finetune_per_class is not None and self.attack.kind == AVAILABILITY:
            raise ConfigError("victim.finetune_per_class: not with an availability poison (its every row is "
                              "fine-tuned on, its clean reference victim's only N per class)")

    def flat(self) -> dict[str, Any]:
        """The dotted result columns of this config (victim recipe resolved)."""
        extra = {} if self.purify_seed is None else {"purify_seed": self.purify_seed}  # old hashes stay valid
        return {"dataset": self.dataset, **flatten(self.attack, "attack."), **flatten(self.defense, "defense."),
                **flatten(self.victim.resolved(), "victim."), "seed": self.seed, **extra}

    @property
    def defense_seed(self) -> int:
        """The seed of the purification (and of the poison-free reference set it draws)."""
        return self.seed if self.purify_seed is None else self.purify_seed

    def hash(self) -> str:
        return config_hash(self.flat())

    @property
    def dataset_address(self) -> str:
        """The dataset as its artifacts' addresses name it: by content when read from a path."""
        return address_dataset(self.dataset, self.dataset_digest)

    def cache_hashes(self) -> tuple[str, ...]:
        """The hashes the artifact cache files this config's clean accuracy under (``acc_ref``): its
        :meth:`hashes`, with a dataset read from a path entering by its content rather than its path."""
        if path_kind(self.dataset, self.dataset_digest) is None:
            return self.hashes()
        named = published_as(self.dataset, self.dataset_digest)
        if named is not None:  # the published file read by its path: the named source's records
            return dataclasses.replace(self, dataset=named, dataset_digest=None).hashes()
        return tuple(dict.fromkeys(self._hashes([self.dataset_address])))

    def hashes(self) -> tuple[str, ...]:
        """This config's hash, then the hashes earlier versions gave it, where they differ: each section
        spelled now or as before its settings were nested (``defense.train``, ``attack.train``) or before
        each generation of settings declared ``added`` existed (:meth:`Config.spellings`), and a named dataset as it was read by
        path before (:func:`former_specs`). A stored row under any is this trial's."""
        return tuple(dict.fromkeys([self.hash(), *self._hashes([self.dataset, *former_specs(self.dataset)])]))

    def _hashes(self, datasets: list[str]) -> list[str]:
        """The hashes of this config spelled now and as before, with the dataset spelled each of ``datasets``."""
        flat = self.flat()
        rest = {k: v for k, v in flat.items() if not k.startswith(tuple(f"{s}." for s in SECTIONS))}
        spellings = [[{"dataset": d} for d in datasets]]
        for section, cfg in (("attack", self.attack), ("defense", self.defense), ("victim", self.victim.resolved())):
            now = {k: v for k, v in flat.items() if k.startswith(f"{section}.")}
            spellings.append([now, *(f for f in reversed(cfg.spellings(f"{section}.")) if f != now)])
        return [config_hash({**rest, **dataset, **attack, **defense, **victim})
                for dataset, attack, defense, victim in itertools.product(*spellings)]


def is_stored(cfg: TrialConfig, results_dir: str | Path) -> bool:
    """Whether the store at ``results_dir`` holds this trial's row (under either of :meth:`TrialConfig.hashes`)."""
    done = read_results(results_dir)
    return not done.empty and "config_hash" in done and bool(set(cfg.hashes()) & set(done["config_hash"]))


def build_config(dataset: str, attack: str = "none", defense: str = "none",
                 overrides: Mapping[str, str] | None = None, digest: str | None = None) -> TrialConfig:
    """A validated TrialConfig from names and dotted ``--set`` overrides (``attack.eps``, ``seed`` …).

    ``purify_seed`` draws the purification's noise independently of ``seed`` (which
    then varies only the victim), so several victim seeds can share one purified set.
    ``digest``: the content digest of a dataset read from a path, as the driver took it
    (:func:`eclipse_ray.data.address.pin`); taken here when not given.
    """
    per: dict[str, dict[str, str]] = {s: {} for s in SECTIONS}
    seeds: dict[str, int | None] = {"seed": 0, "purify_seed": None}
    for key, raw in (overrides or {}).items():
        section, dot, rest = key.partition(".")
        if key in seeds:
            seeds[key] = check_seed(parse_value(raw, int, key), key)
        elif dot and section in per and rest:
            if rest == "name":
                raise ConfigError(f"{key}: choose the {section} with --{section}, not --set")
            per[section][rest] = raw
        else:
            raise ConfigError(f"unknown setting {key!r} (settings start with attack., defense., victim. "
                              "or are 'seed' / 'purify_seed')")
    attack_cfg = ATTACKS.build(attack, per["attack"])
    defense_cfg = DEFENSES.build(defense, per["defense"])
    victim = with_overrides(VictimConfig(), per["victim"], prefix="victim.")
    return TrialConfig(dataset=dataset, attack=attack_cfg, defense=defense_cfg,
                       victim=victim, seed=seeds["seed"],
                       purify_seed=seeds["purify_seed"], dataset_digest=digest or content_digest(dataset))


def prepare(cfg: TrialConfig, data_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Dataset:
    """Load and poison the data (all validation that needs the dataset happens here).

    Crafted attacks (``attack.crafted``) are read from the poison cache under
    ``cache_dir`` ($ECLIPSE_RAY_CACHE when not given) and crafted only once.
    """
    data = load_data(cfg, data_dir)
    if cfg.attack.name == "none":
        return data
    if cfg.attack.crafted:
        return cached_attack(cfg.attack, data, cfg.dataset_address, cache_dir)
    return cfg.attack.apply(data)


def load_data(cfg: TrialConfig, data_dir: str | Path | None = None) -> Dataset:
    """``cfg``'s dataset as read here, refused when its content is not the one the work was planned on."""
    data = load_dataset(cfg.dataset, data_dir)
    check_content(cfg.dataset, data.meta, cfg.dataset_digest)
    return data


def is_reference(cfg: TrialConfig) -> bool:
    """Whether ``cfg`` trains the clean reference victim itself (clean data, no defense): its accuracy is the
    ``acc_ref`` of every trial with the same victim and seed, whatever its ``purify_seed``."""
    return cfg.attack.name == "none" and cfg.defense.name == "none"


def reference_config(cfg: TrialConfig) -> TrialConfig:
    """The trial whose clean accuracy a relative loss is measured against: same victim and seed, no attack or defense."""
    return TrialConfig(cfg.dataset, ATTACKS.build("none"), DEFENSES.build("none"), cfg.victim, cfg.seed,
                       dataset_digest=cfg.dataset_digest)


def stored_reference(cache_dir: str, ref: TrialConfig) -> float | None:
    """The cached clean accuracy of the reference trial ``ref``, under its hash or a former one."""
    return next((acc for key in ref.cache_hashes() if (acc := read_acc_ref(cache_dir, key)) is not None), None)


def reference_accuracy(cfg: TrialConfig, data: Dataset, cache_dir: str | None, progress: bool = False) -> float:
    """Clean test accuracy of the same victim on the undefended clean training set (cached by its hash).

    Content-addressed: two trials that both miss it train the same victim and write
    the same value; the staged study computes each one once beforehand.
    """
    ref = reference_config(cfg)
    key = ref.cache_hashes()[0]
    acc = stored_reference(cache_dir, ref) if cache_dir else None
    if acc is None:
        clean = clean_view(data.train, data.splits.get("originals"))
        fit = finetune_set(cfg.victim, clean, np.zeros(len(clean), bool))  # no row of the clean set is a poison
        victim = train_victim(cfg.victim, fit.images, fit.labels, clean.num_classes, cfg.seed, progress=progress,
                              clean=(clean.images, clean.labels))
        acc = metrics.accuracy(victim.predict(data.test.images), data.test.labels)
        if cache_dir:
            write_acc_ref(cache_dir, key, acc)
    return acc


def run_trial(cfg: TrialConfig, *, data_dir: str | Path | None = None, results_dir: str | Path | None = None,
              cache_dir: str | Path | None = None, reference: bool = True, progress: bool = True,
              data: Dataset | None = None, purified_train: ImageSet | None = None) -> dict[str, Any]:
    """Run one trial and return its results row; append it to ``results_dir`` if given.

    ``data`` (already poisoned) and ``purified_train`` (e.g. from the purification
    cache) skip those stages when given.
    """
    t0 = time.perf_counter()
    device = pick_device(cfg.victim.device)
    data = data if data is not None else prepare(cfg, data_dir, cache_dir)
    t_attack = time.perf_counter() - t0
    train = data.train
    kind = data.meta.get("attack_kind", NONE)
    AttackConfig.check_measurable(kind, train, data.name)  # also imported poisons, before purifying or training

    if cfg.victim.transfer != "none":
        check_originals(train, data.splits.get("originals"))
    t1 = time.perf_counter()
    clean = clean_view(train, data.splits.get("originals"))
    purified = purified_train if purified_train is not None else \
        cfg.defense.purify(train, cfg.defense_seed, progress=progress, clean=clean)
    check_same_samples(train, purified, f"defense {cfg.defense.name}")
    t_purify = time.perf_counter() - t1 if purified_train is None else float(purified.meta.get("purify_seconds", 0))

    t2 = time.perf_counter()
    trained = cfg.defense.train_victim(cfg.victim, purified, cfg.seed, progress=progress)  # training-time defense
    fit = finetune_set(cfg.victim, purified, purified.poisoned) if trained is None else purified
    victim, defense_metrics = trained if trained is not None else (
        train_victim(cfg.victim, fit.images, fit.labels, train.num_classes, cfg.seed,
                     transform=cfg.defense.train_transform(), progress=progress,
                     clean=(clean.images, clean.labels)), {})  # a transfer victim pre-trains on the clean set
    t_train = time.perf_counter() - t2

    m: dict[str, Any] = {**score(victim, data, kind, trained_on=purified), **defense_metrics}
    if cfg.defense.purifies:
        m.update(metrics.fidelity(purified, train, clean.images))
    if kind == AVAILABILITY or (reference and kind == NONE):
        cache = storage.normalize(cache_dir) if cache_dir else (
            storage.join(results_dir, ".cache") if results_dir else None)
        m.update(against_reference(cfg, data, kind, m["test_acc"], cache, reference, progress))

    row: dict[str, Any] = {**cfg.flat(), "dataset_label": dataset_label(cfg.dataset, data.meta),
                           "attack.kind": kind, "n_train": len(train),
                           **({"n_finetune": len(fit)} if fit is not purified else {}),
                           "n_poisoned": int(train.poisoned.sum()), "n_test": len(data.test), **m,
                           "attack_seconds": t_attack, "craft_seconds": data.meta.get("craft_seconds"), "purify_seconds": t_purify, "train_seconds": t_train,
                           "seconds": time.perf_counter() - t0,
                           "images_per_second": len(train) / t_purify if cfg.defense.purifies and t_purify > 0
                           else None,
                           "config_hash": cfg.hash(), **provenance(device)}
    row.update(purified.meta.get("resolved", {}))
    if results_dir is not None:
        append_rows(results_dir, [row], name=row["config_hash"])
    return row


def finetune_set(victim: VictimConfig, train: ImageSet, poisoned: np.ndarray) -> ImageSet:
    """What a transfer victim with ``finetune_per_class`` trains on (:func:`finetune_rows`); else ``train``."""
    if victim.transfer == "none" or victim.finetune_per_class is None:
        return train
    return train.subset(finetune_rows(train.labels, poisoned, train.index, victim.finetune_per_class))


def check_originals(train: ImageSet, originals: ImageSet | None) -> None:
    """A transfer victim pre-trains on the clean training set: every poisoned row needs its clean original."""
    have = set() if originals is None else {int(i) for i in originals.index}
    missing = [int(i) for i in train.index[train.poisoned] if int(i) not in have]
    if missing:
        raise ConfigError(f"victim.transfer: {len(missing)} poisoned rows have no clean original (an imported "
                          f"poison without them?); a transfer victim pre-trains on the clean training set")


def score(victim: Victim, data: Dataset, kind: str, trained_on: ImageSet | None = None) -> dict[str, float]:
    """The victim's metrics for this kind of poison (docs/design.md §6): clean test accuracy; for a backdoor
    its ASR on the triggered non-target test images (and the most-hit class's); for a targeted poison the
    share of targets given the adversarial label (or a trigger's ASR); ``poison_success`` for both."""
    target = data.meta.get("target")
    m = {"test_acc": metrics.accuracy(victim.predict(data.test.images), data.test.labels)}
    trig = data.splits.get("test_triggered")
    if trig is not None and target is not None:
        m["asr"] = metrics.attack_success_rate(victim.predict(trig.images), int(target))
    if kind == BACKDOOR:
        m["poison_success"] = m.get("asr", float("nan"))
        if "asr" in m:
            m["asr_any"], m["asr_any_class"] = metrics.any_class_asr(victim.predict(trig.images), trig.labels)
    elif kind == TARGETED:  # targets split (gradient matching, bullseye) and/or a trigger (narcissus)
        if "targets" in data.splits:
            adv = data.meta.get("adv_labels", data.splits["targets"].meta.get("adv_labels"))
            m["target_success"] = metrics.target_success(victim.predict(data.splits["targets"].images), adv)
        if "asr" in m:
            m["asr_max_class"] = metrics.max_class_asr(victim.predict(trig.images), trig.labels, int(target))
        m["poison_success"] = m.get("target_success", m.get("asr", float("nan")))
        fit = trained_on if trained_on is not None else data.train  # as the victim saw them (purified)
        if fit.poisoned.any():  # a feature-collision poison works through a victim that learnt its poisons
            m["poisons_learnt"] = metrics.accuracy(victim.predict(fit.images[fit.poisoned]), fit.labels[fit.poisoned])
    return m


def against_reference(cfg: TrialConfig, data: Dataset, kind: str, test_acc: float, cache: str | None,
                      reference: bool, progress: bool) -> dict[str, float]:
    """Availability poisons and clean data: the clean reference victim's accuracy (``acc_ref``; this trial's
    own when it is that victim) and the relative loss against it — ``poison_success`` of an availability
    poison, ``clean_cost`` of a defense on clean data."""
    m: dict[str, float] = {}
    if kind == NONE and is_reference(cfg):
        m["acc_ref"] = test_acc
        if cache is not None:  # under the key the others look up (a purify_seed changes cfg.hash(), not the victim)
            write_acc_ref(cache, reference_config(cfg).cache_hashes()[0], test_acc)
    elif reference:
        m["acc_ref"] = reference_accuracy(cfg, data, cache, progress)
    if "acc_ref" in m:
        m["poison_success" if kind == AVAILABILITY else "clean_cost"] = \
            metrics.relative_accuracy_loss(test_acc, m["acc_ref"])
    return m


SUMMARY_KEYS = ("dataset", "attack.name", "defense.name", "seed", *HEADLINE, "config_hash")


def summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """The headline fields of a row, rounded, for the one-line JSON the CLI prints."""
    out = {}
    for k in SUMMARY_KEYS:
        v = row.get(k)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        out[k] = round(v, 4) if isinstance(v, float) else v
    return out
