"""Importers for poisons made with other tools (docs/design.md §3): APBench, "Just how toxic", BackdoorBench, ECLIPSE, npz.

Each importer turns one foreign on-disk format into a :class:`~eclipse_ray.data.sources.Dataset`
(``train``, ``test``, plus ``test_triggered`` / ``targets`` / ``originals`` where
the format provides them), with ``poisoned`` set where the format says which
rows are poisoned and ``index``/``labels`` consistent with the clean dataset.
Pickles go through :mod:`eclipse_ray.data.safe_pickle` only. ``eclipse-ray import``
writes the result with :func:`eclipse_ray.data.store.write_dataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from eclipse_ray.config import ConfigError
from eclipse_ray.data.importers.apbench import import_apbench
from eclipse_ray.data.importers.backdoorbench import import_backdoorbench
from eclipse_ray.data.importers.eclipse import import_eclipse
from eclipse_ray.data.importers.npz import import_npz
from eclipse_ray.data.importers.toxic import import_toxic
from eclipse_ray.data.sources import Dataset

IMPORTERS: dict[str, Callable[..., Dataset]] = {
    "apbench": import_apbench,
    "toxic": import_toxic,
    "backdoorbench": import_backdoorbench,
    "eclipse": import_eclipse,
    "npz": import_npz,
}
OPTIONS = {"toxic": {"trainset_size"}}


def import_poisons(fmt: str, path: str | Path, clean: str | None = None, data_dir: str | Path | None = None, *,
                   progress: bool = False, **options: Any) -> Dataset:
    """Import the poisons at ``path`` in format ``fmt`` (the formats are described in each module's docstring)."""
    if fmt not in IMPORTERS:
        raise ConfigError(f"unknown import format {fmt!r} (known: {', '.join(IMPORTERS)})")
    given = {k: v for k, v in options.items() if v is not None}
    bad = sorted(set(given) - OPTIONS.get(fmt, set()))
    if bad:
        raise ConfigError(f"{fmt}: option {bad[0].replace('_', '-')} does not apply to this format")
    return IMPORTERS[fmt](path, clean, data_dir, progress=progress, **given)
