"""Fault injection for kill tests: ``python tests/faults.py AT MODE -- eclipse-ray ARGS…``.

Runs the command line in this process with every file operation counted (writes,
renames, deletes, directory creation); the ``AT``-th one ends the process at once
with ``os._exit(137)``, as SIGKILL would: no ``finally``, no cleanup. ``MODE``
``before`` dies before the operation; ``torn`` first writes half of the file being
written. ``AT=0`` only counts and prints ``ops=N`` on exit.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import sys


def install(at: int, torn: bool) -> None:
    n = [0]
    real = {"replace": os.replace, "rename": os.rename, "rmtree": shutil.rmtree, "unlink": pathlib.Path.unlink,
            "write_bytes": pathlib.Path.write_bytes, "write_text": pathlib.Path.write_text,
            "mkdir": pathlib.Path.mkdir}

    def hit(target=None, data: bytes | str | None = None):
        n[0] += 1
        if n[0] == at:
            if torn and target is not None and data is not None:
                raw = data.encode() if isinstance(data, str) else data
                with open(target, "wb") as fh:
                    fh.write(raw[: len(raw) // 2])
            os._exit(137)

    def wrap(name, with_target=False):
        fn = real[name]

        def call(*a, **k):
            if name in ("write_bytes", "write_text"):
                hit(a[0], a[1])
            else:
                hit()
            return fn(*a, **k)
        return call

    os.replace, os.rename, shutil.rmtree = wrap("replace"), wrap("rename"), wrap("rmtree")
    for name in ("unlink", "write_bytes", "write_text", "mkdir"):
        setattr(pathlib.Path, name, wrap(name))
    if at == 0:
        atexit.register(lambda: print(f"ops={n[0]}", file=sys.stderr, flush=True))


if __name__ == "__main__":
    at, mode, sep, *argv = sys.argv[1:]
    assert sep == "--" and argv[0] == "eclipse-ray"
    install(int(at), mode == "torn")
    from eclipse_ray.cli import main

    sys.exit(main(argv[1:]))
