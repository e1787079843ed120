"""``eclipse-ray doctor DIR``: what under a study, cache or output directory is corrupt, stale or duplicated.

It walks ``DIR`` (a local path or a URI) once and checks every artifact it
recognises, without changing anything:

* datasets (``meta.json``): the schema, every shard against its SHA-256;
* models and other manifest directories (``manifest.json``): every file against it;
  a model directory without one is reported as unverified;
* results stores (``part-*.parquet``): unreadable parts, duplicate rows;
* reference accuracies (``acc_ref/*.json``): their checksum;
* temporaries a killed run left (a rerun resumes from or clears them), claims of
  runs that are gone, and quarantined artifacts (``.corrupt/``).

Exit code 1 when anything is corrupt, duplicated or stale; 0 when all is well.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass

from eclipse_ray import storage
from eclipse_ray.data import store
from eclipse_ray.data import cache
from eclipse_ray.result_store import verify_results

TEMPORARIES = (".checkpoint.tmp", ".checkpoint.old", ".final", ".*.tmp-*", ".train-*", ".*.purify-*",
               ".eclipse_ray-probe-*")
SERIOUS = {"corrupt", "duplicate-row", "corrupt-part", "stale-temporary", "stale-claim"}
RESUMABLE = (".checkpoint.tmp", ".checkpoint.old", ".final", ".train-*", ".*.purify-*")  # a rerun continues these


@dataclass(frozen=True)
class Finding:
    kind: str
    location: str
    detail: str


def examine(root: str) -> list[Finding]:
    """Every finding under ``root``, in path order."""
    root = storage.normalize(root)
    files = storage.list_files(root)
    dirs: dict[str, set[str]] = {}
    for rel in files:
        head, _, name = rel.rpartition("/")
        dirs.setdefault(head, set()).add(name)
    found: list[Finding] = []
    if storage.is_file(storage.claim_location(root)):  # the directory's own claim sits beside it
        found.append(_claim(storage.claim_location(root)))
    skip: list[str] = []  # inside a temporary or quarantine folder: reported once, at its top
    for d in sorted(dirs):
        loc = storage.join(root, d) if d else root
        if any(d == s or d.startswith(s + "/") for s in skip):
            continue
        top = _special(d)
        if top is not None:
            kind, top_dir = top
            skip.append(top_dir)
            found.append(_temporary(storage.join(root, top_dir)) if kind == "stale-temporary" else
                         Finding(kind, storage.join(root, top_dir), "a corrupt artifact moved aside; delete when read"))
            continue
        names = dirs[d]
        if "meta.json" in names:
            found += [Finding("unverified" if "has no checksum" in p else "corrupt", loc, p)
                      for p in store.verify_dataset(loc)]
            skip.append(d)
        elif storage.MANIFEST in names:
            found += [Finding("corrupt", loc, p) for p in storage.verify_manifest(loc)]
            skip.append(d)
        elif "config.json" in names and any(n.endswith(".safetensors") for n in names):
            found.append(Finding("unverified", loc, "model without manifest.json (written by an older version)"))
            skip.append(d)
        if any(fnmatch.fnmatch(n, "part-*.parquet") for n in names):
            found += [Finding(p["kind"], p["location"], p["detail"]) for p in verify_results(loc)]
        if d.rsplit("/", 1)[-1] == "acc_ref":
            for n in sorted(names):
                key = n[:-5] if n.endswith(".json") else None
                if key and not _acc_ref_ok(loc, key):
                    found.append(Finding("corrupt", storage.join(loc, n), "reference accuracy fails its checksum"))
        for n in sorted(names):
            if fnmatch.fnmatch(n, ".*.claim.json"):
                found.append(_claim(storage.join(loc, n)))
            elif any(fnmatch.fnmatch(n, pat) for pat in TEMPORARIES):
                found.append(_temporary(storage.join(loc, n)))
    return found


def _special(d: str) -> tuple[str, str] | None:
    parts = d.split("/") if d else []
    for i, part in enumerate(parts):
        if part == ".corrupt":
            return "quarantined", "/".join(parts[: i + 2])
        if any(fnmatch.fnmatch(part, pat) for pat in TEMPORARIES):
            return "stale-temporary", "/".join(parts[: i + 1])
    return None


def _temporary(loc: str) -> Finding:
    """A temporary: in use (its process lives), resumable work a rerun continues, or stale."""
    name = loc.rstrip("/").rsplit("/", 1)[-1]
    if ".tmp-" in name:  # .<target>.tmp-<host>-<pid>-<random>
        host, _, rest = name.rsplit(".tmp-", 1)[1].partition("-")
        pid = rest.split("-", 1)[0]
        if host == storage.HOST and pid.isdigit() and storage.pid_alive(int(pid)):
            return Finding("in-use", loc, f"being written by pid {pid}")
        return Finding("stale-temporary", loc, "left by a killed run (the next write there removes it)")
    if any(fnmatch.fnmatch(name, pat) for pat in RESUMABLE):
        return Finding("interrupted", loc, "work a killed run left; rerunning it continues from here")
    return Finding("stale-temporary", loc, "left by a killed run")


def _acc_ref_ok(loc: str, key: str) -> bool:
    try:
        doc = storage.read_json(storage.join(loc, f"{key}.json"))
        acc = float(doc["test_acc"])
        return doc in (cache.acc_ref_doc(acc, key), {"test_acc": acc, "config_hash": key})
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return False


def _claim(loc: str) -> Finding:
    try:
        doc = storage.read_json(loc)
    except (ValueError, UnicodeDecodeError):
        doc = {}
    if doc and storage.claim_alive(doc):
        return Finding("claim", loc, f"being written by pid {doc.get('pid')} on {doc.get('host')}")
    return Finding("stale-claim", loc, "claim of a run that is gone (the next run takes it over)")


def report(root: str, as_json: bool = False) -> int:
    """Print the findings (a table, or JSON lines); the exit code (1: something serious)."""
    found = examine(root)
    if as_json:
        for f in found:
            print(json.dumps(asdict(f)))
    else:
        width = max((len(f.kind) for f in found), default=0)
        for f in found:
            print(f"{f.kind:<{width}}  {f.location}  {f.detail}")
        serious = sum(f.kind in SERIOUS for f in found)
        notes = len(found) - serious
        print(f"{storage.normalize(root)}: {serious} problem(s)" + (f", {notes} note(s)" if notes else ""))
    return 1 if any(f.kind in SERIOUS for f in found) else 0
