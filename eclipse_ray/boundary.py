"""The command-line boundary: every error becomes one line ``PROG: error: …`` and exit code 2.

``--debug`` (or ``ECLIPSE_RAY_DEBUG=1``) shows the traceback instead. An error
raised inside a Ray task, actor or Tune trial is reported by its cause, not by
Ray's wrapper. Ctrl-C exits 130 with a line saying that a rerun resumes.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from eclipse_ray.config import ConfigError
from eclipse_ray.storage import CorruptArtifact


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether ``--debug`` was given anywhere or ECLIPSE_RAY_DEBUG is set, argv without it)."""
    rest = [a for a in argv if a != "--debug"]
    return len(rest) != len(argv) or os.environ.get("ECLIPSE_RAY_DEBUG", "") not in ("", "0"), rest


def plugins_requested(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the files of every ``--plugin PATH`` / ``--plugin=PATH`` anywhere on the line, argv without them)."""
    paths: list[str] = []
    rest: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--":  # what follows is not ours
            rest += [a, *it]
            break
        if a == "--plugin" or a.startswith("--plugin="):
            value = next(it, None) if a == "--plugin" else a.split("=", 1)[1]
            if not value or value.startswith("--"):
                raise ConfigError("--plugin needs the path of a Python file")
            paths.append(value)
        else:
            rest.append(a)
    return paths, rest


def root_cause(e: BaseException) -> BaseException:
    """The exception that started it: through Ray's task/actor/trial wrappers and ``raise … from``."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = getattr(e, "cause", None)  # ray.exceptions.RayTaskError / TuneError
        if not isinstance(nxt, BaseException):
            nxt = e.__cause__
        if not isinstance(nxt, BaseException):
            break
        e = nxt
    return e


def one_line(e: BaseException) -> str:
    cause = root_cause(e)
    text = " ".join(str(cause).split()) or type(cause).__name__
    if isinstance(cause, (ConfigError, CorruptArtifact, FileNotFoundError, PermissionError, NotADirectoryError, FileExistsError)):
        return text
    return f"{type(cause).__name__}: {text[:500]} (--debug shows the traceback)"


def guarded(prog: str, fn: Callable[[], object], debug: bool) -> int:
    """Run ``fn``; its exit code (0 unless it returns one), 2 with one line on stderr on any error,
    130 on Ctrl-C."""
    try:
        rc = fn()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the boundary: everything becomes one line
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0
