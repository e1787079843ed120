"""Composed defenses: ``--defense jpeg+vab``, ``eclipse+vab``, ``denoise+jpeg`` …

No single defense here handles every attack (SIG survives all of them;
diffusion purifiers leave BadNets and Blend; V&B misses clean-label poisons),
so defenses compose: the purifiers are applied in the order given, then at
most one training-time defense (V&B, adversarial training) trains the victim
on the result. Every part but the last must purify; the last may purify or
train.

A composite is one defense everywhere: its name is ``a+b`` in rows, hashes,
caches, Pareto fronts and tables, and each part's settings are its own,
addressed by the part's name (``-`` read as ``_``): ``defense.vab.lambda2``,
``defense.jpeg.quality``, ``defense.puregen_ddpm.sigma``. At most one part
may use a model (it is trained on the clean reference set of the poisoned
data, as on its own). Its purifier is the parts' purifiers one after the
other; a study computes the first part's purified set once (shared by every
composite that starts with it) and the rest from there.

Composite classes are made on demand and named after their parts, so that a
Ray worker that unpickles one makes the same class (module ``__getattr__``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from eclipse_ray.config import ConfigError, nested
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.defenses.base import DefenseConfig, ImagePurifier
from eclipse_ray.victim.train import BatchTransform, Victim, VictimConfig

SEPARATOR = "+"
_CLASSES: dict[tuple[str, ...], type] = {}
_REGISTRY: list[Any] = []  # the defenses' registry, given by the first composite() call


def field_name(part: str) -> str:
    """The field (and settings prefix) of a part: its name with ``-`` as ``_``."""
    return part.replace("-", "_")


def _qualname(parts: tuple[str, ...]) -> str:
    return "Composite_" + "_".join(p.encode().hex() for p in parts)


class CompositeDefense(DefenseConfig):
    """Base of the composite classes (made by :func:`composite`); ``parts`` are the part names in order."""

    parts: ClassVar[tuple[str, ...]] = ()

    def members(self) -> list[DefenseConfig]:
        return [getattr(self, field_name(p)) for p in self.parts]

    def purifiers(self) -> list[DefenseConfig]:
        return [m for m in self.members() if m.purifies]

    def trainer(self) -> DefenseConfig | None:
        """The training-time part (the last one, when it does not purify), or ``None``."""
        last = self.members()[-1]
        return None if last.purifies else last

    def model_part(self) -> DefenseConfig | None:
        return next((m for m in self.members() if m.needs_model), None)

    @property
    def needs_model(self) -> bool:
        return self.model_part() is not None

    def sub(self, parts: tuple[str, ...]) -> DefenseConfig:
        """The defense made of some of the parts, each with its settings here (one part: that defense)."""
        if len(parts) == 1:
            return getattr(self, field_name(parts[0]))
        cls = composite(SEPARATOR.join(parts), _REGISTRY[0])
        return cls(**{field_name(p): getattr(self, field_name(p)) for p in parts})

    @property
    def row_wise(self) -> bool:  # type: ignore[override]
        return all(m.row_wise for m in self.purifiers())

    def purifying(self) -> DefenseConfig:
        return self.sub(tuple(p for p, m in zip(self.parts, self.members()) if m.purifies))

    def split_first(self) -> tuple[DefenseConfig, DefenseConfig] | None:
        chain = self.purifying()
        if not isinstance(chain, CompositeDefense):
            return None
        return chain.sub(chain.parts[:1]), chain.sub(chain.parts[1:])

    def legacy_flat(self, prefix: str = "") -> dict[str, Any] | None:
        return None  # no earlier spelling: composites are new

    def validate(self) -> None:
        trainer = self.trainer()
        if trainer is not None and type(trainer).train_victim is not DefenseConfig.train_victim and any(
                m.train_transform() is not None for m in self.members()[:-1]):
            raise ConfigError(f"defense {self.name}: a per-epoch transform of a purifier cannot reach "
                              f"{trainer.name}'s own training (use its once-off mode)")

    # --- purification ----------------------------------------------------------------------
    def image_purifier(self, model_dir: str | Path | None, seed: int) -> ImagePurifier:
        model = self.model_part()
        runs = [m.image_purifier(model_dir if m is model else None, seed) for m in self.purifiers()]

        def run(images: np.ndarray, index: np.ndarray) -> np.ndarray:
            for f in runs:
                images = f(images, index)
            return images

        return run

    def check_images(self, image_shape: tuple[int, ...]) -> None:
        for m in self.members():
            m.check_images(image_shape)

    def model_path(self, train: ImageSet, clean: ImageSet | None, progress: bool = True) -> Path | str | None:
        model = self.model_part()
        return None if model is None else model.model_path(train, clean, progress)

    def check_model(self, model_dir: str | Path, image_shape: tuple[int, ...]) -> None:
        model = self.model_part()
        if model is not None:
            model.check_model(model_dir, image_shape)

    def model_resolved(self, model_dir: str | Path) -> dict[str, Any]:
        model = self.model_part()
        if model is None:
            return {}
        own = f"defense.{field_name(model.name)}."
        return {own + k[len("defense."):]: v for k, v in model.model_resolved(model_dir).items()}

    def chunk_rows(self) -> int:
        return max(m.chunk_rows() for m in self.purifiers()) if self.purifies else super().chunk_rows()

    # --- training --------------------------------------------------------------------------
    def train_transform(self) -> BatchTransform | None:
        steps = [t for t in (m.train_transform() for m in self.members()) if t is not None]
        if not steps:
            return None

        def transform(x, gen):
            for t in steps:
                x = t(x, gen)
            return x

        return transform

    def train_victim(self, victim_cfg: VictimConfig, train: ImageSet, seed: int,
                     progress: bool = True) -> tuple[Victim, dict[str, Any]] | None:
        trainer = self.trainer()
        return None if trainer is None else trainer.train_victim(victim_cfg, train, seed, progress)

    @property
    def trains_victim(self) -> bool:
        return self.trainer() is not None

    @property
    def purifies(self) -> bool:
        return any(m.purifies for m in self.members())


def composite(name: str, registry) -> type[DefenseConfig] | None:
    """The config class of the composite ``name`` (``a+b…``), made once per process; ``None`` when ``name``
    is not a composite. Every part must be a registered defense; the rules are checked here."""
    if SEPARATOR not in name:
        return None
    _REGISTRY[:] = [registry]
    parts = tuple(p.strip() for p in name.split(SEPARATOR))
    if parts in _CLASSES:
        return _CLASSES[parts]
    if any(not p for p in parts):
        raise ConfigError(f"defense {name!r}: an empty part")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"defense {name!r}: a part is given twice")
    classes = [registry[p] for p in parts]  # an unknown part: the registry's one-line error
    members = [c() for c in classes]
    if any(isinstance(m, CompositeDefense) for m in members):
        raise ConfigError(f"defense {name!r}: parts must be single defenses")
    for p, m in zip(parts[:-1], members[:-1]):
        if not m.purifies:
            raise ConfigError(f"defense {name!r}: {p} does not purify; only the last part may be a "
                              f"training-time defense (purifiers first, in order)")
    if not members[-1].purifies and type(members[-1]).train_victim is DefenseConfig.train_victim \
            and type(members[-1]).train_transform is DefenseConfig.train_transform:
        raise ConfigError(f"defense {name!r}: {parts[-1]} neither purifies nor trains")
    if sum(m.needs_model for m in members) > 1:
        raise ConfigError(f"defense {name!r}: at most one part may use a model")
    fields = [(field_name(p), c, nested(c, f"settings of the part {p}")) for p, c in zip(parts, classes)]
    cls = dataclasses.make_dataclass(_qualname(parts), fields, bases=(CompositeDefense,), frozen=True,
                                     namespace={"name": name, "parts": parts,
                                                "summary": " then ".join(parts) + " (composed)"})
    cls.__module__ = __name__
    _CLASSES[parts] = cls
    return cls


def __getattr__(attr: str):  # unpickling a composite made in another process makes the same class
    if attr.startswith("Composite_"):
        from eclipse_ray.defenses import DEFENSES

        parts = tuple(bytes.fromhex(h).decode() for h in attr[len("Composite_"):].split("_"))
        return DEFENSES[SEPARATOR.join(parts)]
    raise AttributeError(attr)
