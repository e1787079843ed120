"""Where a dataset's artifacts are filed: a named source by its name, a dataset read from a path by its content.

Poisoned sets, purified sets and clean reference accuracies are cached under a
hash of what they depend on (:mod:`eclipse_ray.data.cache`); the dataset enters
that hash as its *address*:

- a named source (``digits``, ``cifar10-jpeg``, ``cifar10-subset``) or a
  plugin's spec: the spec. A named source stands for one published file,
  checked by its sha256 when read; ``cifar10-subset`` keeps the spelling its
  artifacts were first filed under (:data:`FORMER_SPECS`).
- a dataset read from a path (``npz:PATH``, ``folder:PATH``, ``parquet:PATH``,
  a dataset directory): its kind and the sha256 of its content
  (:func:`content_digest`), never the path. Another file put behind the same
  path gets artifacts of its own; the same file moved, or mounted elsewhere
  on another node, finds its artifacts again.

The digest is taken once, where the work is planned (the study's driver, or
the process of a lone ``eclipse-ray run``), and travels in the trial's config
(``TrialConfig.dataset_digest``) and in the Tune spec (``dataset_digest``) to
every worker: no worker addresses by its own copy, which it may lack or which
may be another file. A worker that reads the file checks it against the digest
(:func:`check_content`) before crafting or purifying anything from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eclipse_ray import storage
from eclipse_ray.config import ConfigError
from eclipse_ray.data.fingerprint import sha256_file
from eclipse_ray.data.sources import DATASETS, FORMER_SPECS, NAMED, PREFIXED, SHIPPED_SHA256, tree_digest

DIGEST_KEY = "dataset_digest"  # the spec key that carries it from the driver to the workers


def path_kind(spec: str, digest: str | None = None) -> str | None:
    """``npz``, ``folder`` or ``parquet`` for a dataset read from a path; None for a named source or a
    plugin. A bare path is a dataset directory where it is one here, or wherever the driver pinned a
    ``digest`` for it (a worker need not have it)."""
    kind, sep, rest = spec.partition(":")
    if spec in NAMED or (kind not in PREFIXED and kind in DATASETS):
        return None
    if sep and kind in PREFIXED and rest:
        return kind
    if digest or (not storage.is_uri(spec) and Path(spec).is_dir() and (Path(spec) / "meta.json").is_file()):
        return "parquet"  # a dataset directory given as a bare path
    return None


def content_digest(spec: str) -> str | None:
    """The sha256 of the content behind a path spec on this machine, as rows carry it in their
    ``dataset_label`` (an ``.npz`` or archive: the file's; a folder: its images' and sub-folders'
    (:func:`sha256_tree`); a dataset directory: its ``meta.json``, which lists every shard's checksum);
    None for a named source or a plugin. A path that is not here is a one-line error."""
    kind = path_kind(spec)
    if kind is None:
        return None
    path = spec.partition(":")[2] if spec.startswith(f"{kind}:") else spec
    if kind == "parquet":
        meta = storage.join(path, "meta.json")
        if not storage.is_file(meta):
            raise ConfigError(f"{spec}: no dataset directory there (no meta.json) on this machine")
        return storage.sha256(storage.read_bytes(meta))
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir() and kind == "folder":
        return tree_digest(p)
    raise ConfigError(f"{spec}: no such {'file' if kind == 'npz' else 'folder or archive'} on this machine "
                      f"(a dataset read from a path is addressed by its content, read where the work is planned)")


def published_as(spec: str, digest: str | None = None) -> str | None:
    """The named source whose published file ``spec`` reads by its path (by content), else None."""
    if path_kind(spec, digest) not in ("npz", "folder"):
        return None
    digest = digest or content_digest(spec)
    return next((name for name, sha in SHIPPED_SHA256.items() if sha == digest), None)


def address_dataset(spec: str, digest: str | None = None) -> str:
    """The dataset as it enters an artifact's address: ``KIND@sha256:DIGEST`` for a dataset read from a path
    (``digest`` as planned, else taken here), except that a published file read by its path is its named
    source; the earliest spelling of a named source; else the spec."""
    kind = path_kind(spec, digest)
    if kind is None:
        return FORMER_SPECS.get(spec, (spec,))[0]
    digest = digest or content_digest(spec)
    named = published_as(spec, digest)
    return address_dataset(named) if named else f"{kind}@sha256:{digest}"


def pin(spec: dict[str, Any], memo: dict[str, str | None] | None = None) -> dict[str, Any]:
    """A trial spec (``{"dataset": …, …}``) with the content digest of its dataset, taken here (the driver)
    unless it has one: what its workers address the dataset's artifacts by. ``memo``: digests already
    taken for this plan (a folder is hashed once, not once per trial)."""
    ds = spec["dataset"]
    if spec.get(DIGEST_KEY) or path_kind(ds) is None:
        return spec
    memo = {} if memo is None else memo
    if ds not in memo:
        memo[ds] = content_digest(ds)
    return {**spec, DIGEST_KEY: memo[ds]}


def check_content(spec: str, meta: dict[str, Any], digest: str | None) -> None:
    """Refuse data read from ``spec`` here whose content is not the one the work was planned on."""
    got = meta.get("fingerprint")
    if digest and got != digest:
        raise ConfigError(f"{spec}: the data at this path here (sha256 {str(got)[:12]}…) is not the one the work "
                          f"was planned on ({digest[:12]}…); give every node the same file")
