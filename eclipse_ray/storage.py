"""Storage anywhere: a local path or a URI of any filesystem pyarrow supports (``s3://``, ``gs://`` …).

Every place eclipse_ray keeps state (the results store, the artifact cache,
purified datasets, Tune's experiment state) is named by a *location*: a plain
string that is either a local path or a URI. These helpers are the only code
that touches files by location, so the same study runs on one laptop, on an NFS
mount or on an object store. The S3 endpoint comes from the standard
``AWS_ENDPOINT_URL`` environment variable (pyarrow reads it), so an S3-API
server on localhost works as well as AWS.

Writes are atomic from a reader's point of view: a local file is written under a
temporary name and renamed; an object-store object appears whole when its upload
completes. Directories on an object store are prefixes: a directory is *complete*
when its manifest (written last, e.g. ``meta.json``) exists.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs

from eclipse_ray.config import ConfigError

HOST = socket.gethostname().replace("-", "_")  # as it appears in temporary names


def is_uri(loc: str | os.PathLike) -> bool:
    """Whether ``loc`` names a remote filesystem (``scheme://…``, ``file://`` excluded)."""
    s = str(loc)
    return "://" in s and not s.startswith("file://")


def normalize(loc: str | os.PathLike) -> str:
    """A location as a string: URIs without a trailing slash, local paths absolute."""
    s = str(loc)
    if s.startswith("file://"):
        s = s[len("file://"):]
    if is_uri(s):
        return s.rstrip("/")
    return str(Path(s).expanduser().absolute())


def join(loc: str | os.PathLike, *parts: str) -> str:
    """``loc/part/…`` for paths and URIs alike."""
    s = normalize(loc)
    if is_uri(s):
        return "/".join([s, *(p.strip("/") for p in parts)])
    return str(Path(s, *parts))


def filesystem(loc: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for ``loc``."""
    s = normalize(loc)
    if not is_uri(s):
        return pafs.LocalFileSystem(), s
    fs, path = pafs.FileSystem.from_uri(s)
    return fs, path


def exists(loc: str | os.PathLike) -> bool:
    fs, path = filesystem(loc)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(loc: str | os.PathLike) -> bool:
    fs, path = filesystem(loc)
    return fs.get_file_info(path).type == pafs.FileType.File


def makedirs(loc: str | os.PathLike) -> None:
    """Create a local directory (and parents); object stores need none."""
    if not is_uri(loc):
        Path(normalize(loc)).mkdir(parents=True, exist_ok=True)


def temp_path(p: Path) -> Path:
    """A temporary sibling of ``p`` owned by this process (``.<name>.tmp-<host>-<pid>-<random>``);
    temporaries of ``p`` left by processes of this host that are gone (killed runs) are removed first."""
    p = Path(p)
    prefix = f".{p.name}.tmp-{HOST}-"
    clear_stale(p.parent, prefix)
    return p.with_name(f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:6]}")


def clear_stale(folder: Path, prefix: str) -> None:
    """Remove the entries of ``folder`` named ``<prefix><pid>…`` whose process (on this host) is gone."""
    try:
        stale = [e for e in os.scandir(folder) if e.name.startswith(prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in stale:
        pid = e.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                Path(e.path).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def read_bytes(loc: str | os.PathLike) -> bytes:
    fs, path = filesystem(loc)
    with fs.open_input_stream(path) as fh:
        return fh.read()


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of the local file ``path`` to write with any library (it keeps ``path``'s
    suffix, which some writers insist on); moved into place whole when the block ends, removed if it raises.
    The one way a local file is written: a reader sees the old file or the new one, never part of one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(p)
    tmp = tmp.with_name(tmp.name + p.suffix)
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(loc: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``loc`` so that no reader ever sees part of it."""
    s = normalize(loc)
    if not is_uri(s):
        with replacing(s) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = filesystem(s)
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def read_json(loc: str | os.PathLike) -> Any:
    return json.loads(read_bytes(loc).decode())


def write_json(loc: str | os.PathLike, doc: Any) -> None:
    write_bytes(loc, json.dumps(doc, indent=2, default=str).encode())


def listdir(loc: str | os.PathLike) -> list[str]:
    """Names directly under ``loc`` (sorted); empty if it does not exist."""
    fs, path = filesystem(loc)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(i.base_name for i in infos)


def glob(loc: str | os.PathLike, pattern: str) -> list[str]:
    """Locations of the entries directly under ``loc`` whose names match ``pattern``."""
    return [join(loc, n) for n in listdir(loc) if fnmatch.fnmatch(n, pattern)]


def remove(loc: str | os.PathLike) -> None:
    """Delete a file or a whole directory tree; nothing if it does not exist."""
    s = normalize(loc)
    if not is_uri(s):
        p = Path(s)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        return
    fs, path = filesystem(s)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike, last: str | None = None) -> None:
    """Copy a directory tree between any two filesystems; the file named ``last`` is copied last."""
    sfs, spath = filesystem(src)
    dfs, dpath = filesystem(dst)
    makedirs(dst)
    files = [i for i in sfs.get_file_info(pafs.FileSelector(spath, recursive=True)) if i.type == pafs.FileType.File]
    files.sort(key=lambda i: (os.path.relpath(i.path, spath) == last, i.path))
    for info in files:
        rel = os.path.relpath(info.path, spath)
        if not is_uri(dst):
            Path(dpath, rel).parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(info.path, f"{dpath}/{rel}", source_filesystem=sfs, destination_filesystem=dfs)


def publish_dir(tmp: str | os.PathLike, dest: str | os.PathLike, marker: str) -> bool:
    """Move the local directory ``tmp`` to ``dest`` unless a complete ``dest`` (with ``marker``) is there.

    First writer wins: a complete directory is never replaced (readers may be using
    it, and a content-addressed one holds the same thing); ``tmp`` is then deleted.
    Returns whether ``tmp`` was published.
    """
    tmp, dest = Path(tmp), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_dir() and not (dest / marker).is_file() and not (dest / "checkpoint").exists():
        shutil.rmtree(dest, ignore_errors=True)  # an incomplete leftover: never read, safe to clear
    try:
        os.rename(tmp, dest)
        return True
    except OSError:
        if (dest / marker).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise


# --- integrity: checksum manifests and quarantine ---------------------------------------------

MANIFEST = "manifest.json"


class CorruptArtifact(Exception):
    """An artifact whose bytes do not match its checksum manifest (or that has none)."""

    def __init__(self, loc: str, problems: list[str]):
        super().__init__(f"{normalize(loc)}: {'; '.join(problems[:3])}")
        self.loc, self.problems = normalize(loc), problems

    def __reduce__(self):  # picklable, so a Ray worker's error reaches the driver as itself
        return type(self), (self.loc, self.problems)


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def list_files(loc: str) -> list[str]:
    """Paths (relative, '/'-separated) of every file under ``loc``, sorted."""
    fs, path = filesystem(loc)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(os.path.relpath(i.path, path).replace(os.sep, "/") for i in infos if i.type == pafs.FileType.File)


def write_manifest(loc: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write ``manifest.json`` (size and SHA-256 of every file under ``loc``) last; returns it."""
    files = {}
    for rel in list_files(normalize(loc)):
        if rel == MANIFEST or rel.startswith(exclude):
            continue
        data = read_bytes(join(loc, rel))
        files[rel] = {"size": len(data), "sha256": sha256(data)}
    doc = {"files": files}
    write_json(join(loc, MANIFEST), doc)
    return doc


def verify_manifest(loc: str | os.PathLike) -> list[str]:
    """What is wrong with the files under ``loc`` against its manifest (empty: all intact)."""
    try:
        doc = read_json(join(loc, MANIFEST))
        files = doc["files"]
        assert isinstance(files, dict)
    except FileNotFoundError:
        return ["no manifest.json"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return ["manifest.json unreadable"]
    problems = []
    for rel, want in sorted(files.items()):
        try:
            data = read_bytes(join(loc, rel))
        except (FileNotFoundError, IsADirectoryError):
            problems.append(f"{rel} missing")
            continue
        if len(data) != want.get("size") or sha256(data) != want.get("sha256"):
            problems.append(f"{rel} does not match its checksum")
    return problems


def check_manifest(loc: str | os.PathLike) -> None:
    """Raise :class:`CorruptArtifact` unless ``loc`` matches its manifest."""
    problems = verify_manifest(loc)
    if problems:
        raise CorruptArtifact(str(loc), problems)


def quarantine(loc: str | os.PathLike, why: str = "corrupt") -> str:
    """Move a corrupt artifact aside (``<parent>/.corrupt/<name>-<stamp>``) and warn naming it; returns
    where it went. The caller then recomputes it."""
    import sys
    import time

    s = normalize(loc)
    head, name = s.rstrip("/").rsplit("/", 1) if "/" in s.rstrip("/") else (".", s)
    dest = join(head, ".corrupt", f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
    if is_uri(s):
        fs, path = filesystem(s)
        if fs.get_file_info(path).type == pafs.FileType.File:
            write_bytes(dest, read_bytes(s))
        else:
            copy_tree(s, dest)
        remove(s)
    else:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(s, dest)
        except FileNotFoundError:
            return dest  # moved aside meanwhile by another process that found it corrupt too
    print(f"eclipse_ray: warning: {s} is {why}; moved to {dest} and recomputing", file=sys.stderr, flush=True)
    return dest


# --- preflight: writable locations, claims ------------------------------------------------------

def check_writable(loc: str | os.PathLike, what: str) -> None:
    """Raise a one-line error now, before any work, unless files can be written at ``loc`` (which need
    not exist yet). A probe file is written and removed in ``loc``'s nearest existing ancestor (an object
    store: under ``loc``), so nothing is left behind, not even an empty directory."""
    s = normalize(loc)
    try:
        if is_uri(s):
            probe = join(s, f".eclipse_ray-probe-{uuid.uuid4().hex[:8]}")
            write_bytes(probe, b"")
            remove(probe)
            return
        p = Path(s).absolute()
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir():
            raise ConfigError(f"{what} {s} is not writable ({p} is not a directory)")
        prefix = f".eclipse_ray-probe-{HOST}-"
        clear_stale(p, prefix)
        probe = p / f"{prefix}{os.getpid()}"
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{what} {s} is not writable ({e.strerror or type(e).__name__})") from None


def claim_location(loc: str) -> str:
    head, name = loc.rstrip("/").rsplit("/", 1) if "/" in loc.rstrip("/") else (".", loc)
    return join(head, f".{name}.claim.json")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_HELD: set[str] = set()  # claims this process holds (a claim naming our own pid is otherwise a leftover)
HEARTBEAT_S = 60.0


def claim_alive(doc: dict[str, Any]) -> bool:
    """Whether the run that wrote a claim may still be running.

    On this host: its process exists, the machine has not rebooted since, and (our own pid) we
    hold it. From another host: it refreshed the claim within ``$ECLIPSE_RAY_CLAIM_TTL`` seconds
    (default 10 min; a live run refreshes it every minute).
    """
    import time

    if doc.get("host") == socket.gethostname():
        try:
            pid = int(doc.get("pid", -1))
        except (TypeError, ValueError):
            return False
        if doc.get("boot") and doc.get("boot") != _boot_id():
            return False  # the machine rebooted: every process of the claim's time is gone
        if pid == os.getpid():
            return doc.get("token") in _HELD
        return pid_alive(pid)
    ttl = float(os.environ.get("ECLIPSE_RAY_CLAIM_TTL", 600))
    return time.time() - float(doc.get("time", 0)) < ttl


class claim:
    """``with claim(loc, what):`` — this run writes ``loc``; another live run writing it is refused at once
    (or, with ``wait_s``, waited for up to that many seconds).

    The claim is ``.<name>.claim.json`` beside ``loc`` (host, boot, pid, time, command), refreshed every
    minute while held and removed on exit. A claim whose run is gone (a killed run on this host, a
    reboot, or no refresh from another host for ``$ECLIPSE_RAY_CLAIM_TTL`` seconds) is taken over.
    """

    def __init__(self, loc: str | os.PathLike, what: str, wait_s: float = 0.0):
        self.loc, self.what, self.file = normalize(loc), what, claim_location(normalize(loc))
        self.wait_s = wait_s

    def __enter__(self) -> "claim":
        import sys
        import threading
        import time

        self.doc = {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "time": time.time(),
                    "token": uuid.uuid4().hex, "command": " ".join(sys.argv)[:500]}
        deadline = time.monotonic() + self.wait_s
        for attempt in range(10_000):
            if self._create():
                _HELD.add(self.doc["token"])
                self._stop = threading.Event()
                threading.Thread(target=self._beat, daemon=True).start()
                return self
            try:
                doc = read_json(self.file)
            except FileNotFoundError:
                continue
            except (ValueError, UnicodeDecodeError):
                doc = {}  # unreadable: claims are published whole, so it was damaged; a leftover
            if doc and claim_alive(doc):
                if time.monotonic() < deadline:
                    time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
                    continue
                when = time.strftime("%H:%M:%S", time.localtime(float(doc.get("time", 0))))
                raise ConfigError(f"{self.what} {self.loc} is being written by another run (pid {doc.get('pid')} "
                                  f"on {doc.get('host')}, claimed {when}); wait for it or choose another location")
            self._take_over(doc)
            if attempt > 20 and time.monotonic() >= deadline:
                break
        raise ConfigError(f"{self.what} {self.loc}: could not claim it (other runs keep claiming it)")

    def _create(self) -> bool:
        """Publish the claim unless one exists: written whole to a temporary file, then linked into place
        (exclusive and never seen half-written). An object store has no exclusive create: there the
        check and the write are two steps."""
        data = json.dumps(self.doc).encode()
        if is_uri(self.file):
            if is_file(self.file):
                return False
            write_bytes(self.file, data)
            return True
        target = Path(self.file)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(target)
        tmp.write_bytes(data)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Remove a leftover claim — only if it is still the one found stale (never a fresh one)."""
        if is_uri(self.file):
            remove(self.file)
            return
        aside = temp_path(Path(self.file))
        try:
            os.rename(self.file, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_bytes())
        except (ValueError, OSError):
            moved = {}
        if moved and moved != stale and claim_alive(moved):  # a fresh claim slipped in: put it back
            try:
                os.link(aside, self.file)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        import time

        while not self._stop.wait(HEARTBEAT_S):
            try:
                if read_json(self.file).get("token") != self.doc["token"]:
                    return
                self.doc = {**self.doc, "time": time.time()}
                write_bytes(self.file, json.dumps(self.doc).encode())
            except (OSError, ValueError):
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        _HELD.discard(self.doc["token"])
        try:
            if read_json(self.file).get("token") == self.doc["token"]:
                remove(self.file)
        except (OSError, ValueError):
            pass


def local_root() -> Path:
    """This node's own disk for copies and staging: ``$ECLIPSE_RAY_LOCAL``, default ``~/.cache/eclipse_ray/local``."""
    return Path(os.environ.get("ECLIPSE_RAY_LOCAL", Path.home() / ".cache" / "eclipse_ray" / "local"))


def local_dir(loc: str | os.PathLike, marker: str) -> Path:
    """A local directory holding ``loc``'s files: ``loc`` itself when local, else a node-local copy.

    The copy lives under ``$ECLIPSE_RAY_LOCAL`` (default ``~/.cache/eclipse_ray/local``),
    keyed by the location, and is complete once ``marker`` exists in it (copied last).
    Processes of one node that copy at once each use their own temporary directory;
    the first to finish publishes, the others use its copy.
    """
    s = normalize(loc)
    if not is_uri(s):
        return Path(s)
    root = local_root()
    import hashlib

    out = root / hashlib.sha256(s.encode()).hexdigest()[:16]
    if (out / marker).is_file() and _manifest_bytes(s) != _manifest_bytes(str(out)):
        shutil.rmtree(out, ignore_errors=True)  # the source was replaced (recomputed) since it was copied
    if not (out / marker).is_file():
        tmp = temp_path(out)
        try:
            copy_tree(s, tmp, last=marker)
            if not (tmp / marker).is_file():
                raise FileNotFoundError(f"{s} has no {marker}")
            if (tmp / MANIFEST).is_file():
                check_manifest(tmp)
            publish_dir(tmp, out, marker)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _manifest_bytes(loc: str) -> bytes | None:
    try:
        return read_bytes(join(loc, MANIFEST))
    except FileNotFoundError:
        return None


def env() -> dict[str, str]:
    """The variables workers need to reach storage (``AWS_*``: endpoint and keys; ``ECLIPSE_RAY_*``)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "ECLIPSE_RAY_"))}


