"""Name -> entry registries (attacks, defenses, victim networks, dataset sources), open to plugins.

Built-ins are registered when their package is imported. Third-party entries
come from two places, both loaded once per process on the first look-up of any
registry, so Ray workers find them as the driver does:

* installed packages, through Python entry points in the groups
  ``eclipse_ray.attacks``, ``eclipse_ray.defenses``, ``eclipse_ray.victims`` and
  ``eclipse_ray.datasets`` (an entry point names an entry, or a module whose import
  registers entries with :meth:`Registry.register`);
* single files, ``--plugin path/to/module.py`` on the command line and the sweeps,
  passed on to workers in ``$ECLIPSE_RAY_PLUGINS`` (paths joined by ``os.pathsep``).

A broken installed plugin is skipped with a one-line warning naming it (the
built-ins keep working); a broken ``--plugin`` file is a one-line error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar

from eclipse_ray.config import Config, ConfigError, with_overrides

T = TypeVar("T")
PLUGINS_ENV = "ECLIPSE_RAY_PLUGINS"
_REGISTRIES: dict[str, "Registry[Any]"] = {}  # entry-point group -> registry
_loaded: dict[str, str] = {}  # plugin file (resolved) -> module name
_given: dict[str, str] = {}  # plugin file as given -> module name (a later chdir must not matter)
_searched: set[int] = set()  # registries whose entry points are loaded (by id)
_origin_stack: list[str] = []  # the plugin being loaded (named in its entries' origin)


class Registry(Generic[T]):
    """Entries by name: config classes (``cls.name``) or named callables.

    ``kind``: the base class every entry must subclass (config registries), or ``None``
    for callables; ``group``: the entry-point group plugins register into.
    """

    def __init__(self, section: str, entries: Iterable[Any] | Mapping[str, Any], *, group: str,
                 kind: type | None = None, reserved: Iterable[str] = (),
                 compose: Callable[[str, "Registry[Any]"], Any] | None = None) -> None:
        self.section, self.group, self.kind = section, group, kind
        self.compose = compose  # name -> an entry made from registered ones (``a+b``), or None
        self.reserved = frozenset(reserved)  # names of built-ins kept elsewhere (a plugin may not take them)
        self._entries: dict[str, T] = {}
        self.origin: dict[str, str] = {}  # name -> plugin it came from (built-ins absent)
        items = entries.items() if isinstance(entries, Mapping) else ((None, e) for e in entries)
        loading, _origin_stack[:] = list(_origin_stack), []  # built-ins, even when a plugin imports us first
        try:
            for name, entry in items:
                self.register(entry, name)
        finally:
            _origin_stack[:] = loading
        _REGISTRIES[group] = self

    def register(self, entry: T, name: str | None = None, origin: str | None = None) -> T:
        """Add ``entry`` (usable as a decorator on a config class); a name taken twice is an error."""
        if self.kind is not None and not (isinstance(entry, type) and issubclass(entry, self.kind)):
            raise ConfigError(f"{self.section} plugin {entry!r}: not a subclass of {self.kind.__name__}")
        if self.kind is None and not callable(entry):
            raise ConfigError(f"{self.section} plugin {entry!r}: not callable")
        key = name or getattr(entry, "name", None)
        if not key or not isinstance(key, str):
            raise ConfigError(f"{self.section} plugin {entry!r}: has no name")
        if self.kind is not None and key != getattr(entry, "name", None):
            raise ConfigError(f"{self.section} {entry.__name__}: registered as {key!r} but named "
                              f"{getattr(entry, 'name', None)!r} (rows and hashes use its name)")
        where = origin or (_origin_stack[-1] if _origin_stack else None)
        if key in self.reserved:
            raise ConfigError(f"{self.section} {key!r} registered twice" + (f" (by {where})" if where else "")
                              + ": a built-in has that name")
        if key in self._entries and self._entries[key] is not entry:
            raise ConfigError(f"{self.section} {key!r} registered twice" + (f" (by {where})" if where else ""))
        self._entries[key] = entry
        if where:
            self.origin[key] = where
        return entry

    def __contains__(self, name: str) -> bool:
        discover()
        if name in self._entries:
            return True
        try:
            return self.compose is not None and self.compose(name, self) is not None
        except ConfigError:
            return False

    def __iter__(self) -> Iterator[str]:
        discover()
        return iter(list(self._entries))

    def __getitem__(self, name: str) -> T:
        discover()
        made = self.compose(name, self) if self.compose is not None and name not in self._entries else None
        if made is not None:
            return made
        if name not in self._entries:
            raise ConfigError(f"unknown {self.section} {name!r} (known: {', '.join(self._entries)})")
        return self._entries[name]

    def build(self, name: str, overrides: Mapping[str, str] | None = None) -> Any:
        """The config of ``name`` with ``overrides`` (keys without the section prefix) applied."""
        cls: Callable[[], Config] = self[name]  # type: ignore[assignment]
        return with_overrides(cls(), overrides or {}, prefix=f"{self.section}.")


def discover() -> None:
    """Load the ``$ECLIPSE_RAY_PLUGINS`` files not yet loaded, then the installed plugins of every registry
    not yet searched (once per process; again only for what is new) — the driver's order, so a worker
    ends with the same entries. A listed file a worker cannot load is a warning: the built-ins keep working."""
    for path in plugin_paths():
        if path not in _given:
            try:
                load_plugin_file(path)
            except ConfigError as e:
                _given[path] = ""
                print(f"eclipse-ray: warning: {e}", file=sys.stderr, flush=True)
    for group, registry in list(_REGISTRIES.items()):
        if id(registry) not in _searched:
            _searched.add(id(registry))
            for ep in entry_points(group=group):
                _load_entry_point(registry, ep)


def plugin_paths() -> list[str]:
    return [p for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]


def _load_entry_point(registry: Registry[Any], ep: Any) -> None:
    _origin_stack.append(f"plugin {ep.value}")
    try:
        obj = ep.load()
        if not isinstance(obj, type(sys)):  # a module registers its entries itself when imported
            registry.register(obj, ep.name if registry.kind is None else None)
    except Exception as e:  # noqa: BLE001 — a broken plugin must not break the built-ins
        print(f"eclipse-ray: warning: plugin {ep.name!r} ({ep.group} = {ep.value}) not loaded: "
              f"{_one_line(e)}", file=sys.stderr, flush=True)
    finally:
        _origin_stack.pop()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load_plugin_file(path: str | os.PathLike) -> str:
    """Import the plugin module at ``path`` (its import registers its entries); returns the module name.

    Its classes are pickled by value, so Ray ships them to workers with the task.
    """
    given = os.fspath(path)
    if given in _given:
        return _given[given]
    file = Path(given)
    if file.suffix != ".py" or not file.is_file():
        raise ConfigError(f"--plugin {given}: no such Python file")
    key = str(file.resolve())
    if key in _loaded:
        _given[given] = _loaded[key]
        return _loaded[key]
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    name = f"eclipse_ray_plugin_{''.join(c if c.isalnum() else '_' for c in file.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--plugin {given}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    _loaded[key] = name  # before running it: a look-up inside the plugin must not load it again
    _origin_stack.append(f"plugin {file.name}")
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 — one line naming the plugin
        del sys.modules[name], _loaded[key]
        raise ConfigError(f"--plugin {given}: {e if isinstance(e, ConfigError) else _one_line(e)}")  # noqa: B904
    finally:
        _origin_stack.pop()
    _by_value(module)
    _given[given] = name
    return name


def _by_value(module: Any) -> None:
    """Let cloudpickle (plain and Ray's copy, where present) pickle the module's objects by value."""
    for mod_name in ("cloudpickle", "ray.cloudpickle"):
        try:
            cp = importlib.import_module(mod_name)
        except ImportError:
            continue
        cp.register_pickle_by_value(module)


def use_plugins(paths: Iterable[str]) -> None:
    """Load ``--plugin`` files now (a broken one: one-line error) and pass them on to every Ray
    worker and subprocess through ``$ECLIPSE_RAY_PLUGINS``, as given: a relative path resolves in
    the worker's directory, which is the driver's (embedded Ray) or the job's ``--working-dir``."""
    given = [os.fspath(p) for p in paths]
    for p in given:
        load_plugin_file(p)
    if given:
        os.environ[PLUGINS_ENV] = os.pathsep.join(dict.fromkeys(plugin_paths() + given))
