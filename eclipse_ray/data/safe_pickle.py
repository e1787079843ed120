"""Reading pickles and ``torch.save`` files from strangers without running their code.

A pickle is a small program: its ``GLOBAL`` opcodes name any importable
callable and ``REDUCE`` calls it, so ``pickle.load`` on a downloaded poison
file can run ``os.system``. Poisons made with other tools (the "Just how toxic"
benchmark, ECLIPSE, BackdoorBench) ship as pickles, so eclipse_ray reads them
only through :class:`RestrictedUnpickler`, which admits plain data and nothing
else (docs/design.md §3, §10):

* builtins: numbers, strings, bytes, bytearray, lists, tuples, dicts, sets;
* ``collections.OrderedDict``;
* numpy arrays, dtypes and scalars (the ``numpy.core.*`` paths written by
  numpy 1.x and the ``numpy._core.*`` paths written by numpy 2.x);
* PIL images: ``PIL.Image.Image`` pickles as ``NEWOBJ`` + ``__setstate__([info,
  mode, size, palette, bytes])``; it is rebuilt as :class:`SafeImage`, whose
  ``__setstate__`` checks mode and size before allocating (image-file
  subclasses such as ``PIL.PngImagePlugin.PngImageFile`` map to it as well).

Any other global (``posix.system``, ``builtins.eval``, ``subprocess.Popen``,
``torch._utils._rebuild_tensor_v2`` …) ends the load with a one-line
:class:`~eclipse_ray.config.ConfigError` naming it, before anything is called.
``_codecs.encode`` (how protocol 2 stores bytes) is admitted only for latin-1.

:func:`load_torch` reads ``torch.save`` files with ``torch.load(weights_only=True)``,
adding the same numpy and PIL globals through ``torch.serialization.safe_globals``.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from eclipse_ray.config import ConfigError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

MAX_IMAGE_PIXELS = 4096 * 4096
IMAGE_MODES = {"1", "L", "P", "RGB", "RGBA", "LA", "PA", "I", "F", "I;16", "I;16B", "I;16L", "CMYK", "YCbCr",
               "LAB", "HSV", "RGBX", "RGBa", "La"}
IMAGE_FILE_CLASSES = ("PngImagePlugin.PngImageFile", "JpegImagePlugin.JpegImageFile",
                      "BmpImagePlugin.BmpImageFile", "TiffImagePlugin.TiffImageFile",
                      "GifImagePlugin.GifImageFile", "WebPImagePlugin.WebPImageFile", "ImageFile.ImageFile")


class SafeImage(Image.Image):
    """A ``PIL.Image.Image`` rebuilt from a pickle after checking its mode, size and byte count."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, (list, tuple)) or len(state) < 5:
            raise ConfigError("pickled PIL image has an unexpected state (not [info, mode, size, palette, data])")
        info, mode, size, palette, data = state[:5]
        if mode not in IMAGE_MODES:
            raise ConfigError(f"pickled PIL image has unknown mode {mode!r}")
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and 0 < s <= 65535 for s in size)
                or size[0] * size[1] > MAX_IMAGE_PIXELS):
            raise ConfigError(f"pickled PIL image has an implausible size {size!r}")
        if not isinstance(data, (bytes, bytearray)):
            raise ConfigError("pickled PIL image data is not bytes")
        super().__setstate__([info if isinstance(info, dict) else {}, mode, tuple(size), palette, bytes(data)])


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (bytes stored as latin-1 text), nothing else."""
    if encoding.replace("-", "").replace("_", "").lower() != "latin1" or not isinstance(text, str):
        raise ConfigError(f"pickle calls _codecs.encode with encoding {encoding!r}; only latin-1 is admitted")
    return text.encode("latin-1")


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects), admitted only to rebuild PIL images."""
    if cls is not SafeImage or base is not object or state is not None:
        raise ConfigError("pickle uses copyreg._reconstructor for something other than a PIL image")
    return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]


def _numpy_globals() -> dict[str, Any]:
    out: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for pkg in ("numpy.core", "numpy._core"):
        out[f"{pkg}.multiarray._reconstruct"] = _multiarray._reconstruct
        out[f"{pkg}.multiarray.scalar"] = _multiarray.scalar
        out[f"{pkg}.numeric._frombuffer"] = _numeric._frombuffer
    for name in dir(np.dtypes):  # dtype classes (numpy >= 1.25 may name them)
        obj = getattr(np.dtypes, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            out[f"numpy.dtypes.{name}"] = obj
    return out


_BUILTINS = {"bytearray": bytearray, "bytes": bytes, "set": set, "frozenset": frozenset, "complex": complex,
             "object": object}
ALLOWED: dict[str, Any] = {
    **{f"builtins.{k}": v for k, v in _BUILTINS.items()},
    **{f"__builtin__.{k}": v for k, v in _BUILTINS.items()},  # protocol < 3 spelling
    "collections.OrderedDict": OrderedDict,
    "_codecs.encode": _latin1_encode,
    "copy_reg._reconstructor": _reconstructor, "copyreg._reconstructor": _reconstructor,
    "PIL.Image.Image": SafeImage, "Image.Image": SafeImage,
    **{f"PIL.{c}": SafeImage for c in IMAGE_FILE_CLASSES},
    **_numpy_globals(),
}


def refused(file: str, module: str, name: str) -> ConfigError:
    """The one-line error for a pickle that names a global outside :data:`ALLOWED`."""
    full = f"{module or 'builtins'}.{name}"
    return ConfigError(f"refusing to unpickle {file}: it references {full}, which is not plain data "
                       f"and could run code")


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only :data:`ALLOWED` (plain data)."""

    def __init__(self, file: Any, *, what: str = "pickle") -> None:
        super().__init__(file)
        self.what = what

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle API
        obj = ALLOWED.get(f"{module}.{name}")
        if obj is None:
            raise refused(self.what, module, name)
        return obj

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 - pickle API
        raise ConfigError(f"refusing to unpickle {self.what}: it uses persistent ids (a torch or custom format)")


def loads(data: bytes, what: str = "pickle") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; any failure is a one-line ConfigError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), what=what).load()
    except ConfigError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} is not a valid pickle (truncated or corrupt: {_one_line(e)})") from None


def load(path: str | Path) -> Any:
    """Unpickle the file at ``path`` admitting plain data only (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    return loads(path.read_bytes(), what=str(path))


def _torch_safe_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    return [(obj, full) for full, obj in ALLOWED.items() if not full.startswith(("_codecs.", "builtins.",
                                                                                 "__builtin__.", "collections."))]


_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)|function ([\w.<>]+)|got <class '([\w.]+)'>")


def load_torch(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` with numpy and PIL globals admitted; errors as ConfigError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except pickle.UnpicklingError as e:
        m = _GLOBAL_IN_MESSAGE.search(str(e))
        if m:
            full = next(g for g in m.groups() if g)
            module, _, name = full.rpartition(".")
            raise refused(str(path), module, name) from None
        raise ConfigError(f"refusing to load {path}: {_one_line(e)}") from None
    except Exception as e:  # zip errors, truncated files, RuntimeError from torch
        raise ConfigError(f"{path} is not a readable torch file (truncated or corrupt; {type(e).__name__})") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
