"""Frozen, typed dataclass configs: the single source of defaults.

Every setting is a dataclass field declared with :func:`setting`, which carries
its help text and its valid range. Configs

* validate themselves on construction (a bad value is a :class:`ConfigError`
  naming the dotted key, never a stack trace deep inside a run);
* take overrides as dotted ``key=value`` strings (``attack.eps=0.0314``), the
  same keys that :func:`flatten` produces as result-store column names;
* hash to a stable :func:`config_hash` (sorted JSON of the flattened config).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterable, Mapping


class ConfigError(ValueError):
    """A user-facing configuration or input error; its message is one line."""


SEED_LIMIT = 2**63  # torch.manual_seed takes < 2**64, but seeds are result columns: parquet int64 holds < 2**63
INT_LIMIT = 2**63  # every int setting is a result column (parquet int64)


def is_seed(name: str) -> bool:
    """Whether a setting named ``name`` is a seed (``seed``, ``key_seed``, ``purify_seed`` …)."""
    return name == "seed" or name.endswith("_seed")


def check_seed(value: int, key: str) -> int:
    """``value`` if it is a usable seed (0 ≤ seed < 2**63), else a one-line :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r}: a seed must be an integer")
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{key}={value}: must be 0 ≤ seed < 2**63 (what torch and a parquet int64 column hold)")
    return value


def seed_arg(text: str) -> int:
    """argparse ``type=`` of ``--seed``: an int in 0..2**63-1 (argparse prints the message as usual)."""
    import argparse

    try:
        return check_seed(int(text), "--seed")
    except ValueError as e:  # ConfigError is one; int('x') too
        raise argparse.ArgumentTypeError(str(e) if isinstance(e, ConfigError) else
                                         f"--seed={text!r}: not an integer") from None


def setting(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | Callable[[], Iterable[Any]] | None = None,
    added: int = 0,
) -> Any:
    """Declare a config field with help text and a valid range. ``added``: the settings generation (1, 2 …)
    that introduced it (0: there from the start); at its default it is left out of the spellings of earlier
    generations (:meth:`Config.spellings`), so the rows and caches of configs made before it stay
    addressable. Settings added together share a generation; a new batch takes the next number."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "added": added}
    return field(default=default, metadata=meta)


def nested(factory: Callable[[], "Config"], help: str) -> Any:
    """Declare a field holding a whole config (settings ``<section>.<field>.<name>``, columns alike)."""
    return field(default_factory=factory, metadata={"help": help, "nested": True})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_types(tp: Any) -> tuple[Any, ...]:
    """The non-None members of ``X | None`` or ``Optional[X]``; ``(tp,)`` otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def _allows_none(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert ints to floats where a float is due."""
    if value is None:
        if _allows_none(tp):
            return None
        raise ConfigError(f"{key}: a value is required (got none)")
    for base in _base_types(tp):
        if base is bool:
            if isinstance(value, bool):
                return value
        elif base is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif base is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif base is str:
            if isinstance(value, str):
                return value
        elif typing.get_origin(base) is tuple:
            if isinstance(value, (tuple, list)):
                (elem,) = {a for a in typing.get_args(base) if a is not Ellipsis}
                return tuple(_coerce(v, elem, key) for v in value)
        elif isinstance(base, type) and issubclass(base, Config):
            if isinstance(value, base):
                return value
    names = " | ".join(getattr(b, "__name__", str(b)) for b in _base_types(tp))
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


def parse_value(raw: str, tp: Any, key: str) -> Any:
    """Parse the string ``raw`` from the command line as a value of annotation ``tp``."""
    text = raw.strip()
    if text.lower() in ("none", "null") and _allows_none(tp):
        return None
    errors = []
    for base in _base_types(tp):
        try:
            if base is bool:
                low = text.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if base is int:
                return int(text)
            if base is float:
                value = float(text)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
                return value
            if base is str:
                return text
            if typing.get_origin(base) is tuple:
                (elem,) = {a for a in typing.get_args(base) if a is not Ellipsis}
                parts = [p for p in text.strip("()[]").split(",") if p.strip()]
                return tuple(parse_value(p, elem, key) for p in parts)
        except ValueError:
            errors.append(getattr(base, "__name__", str(base)))
    raise ConfigError(f"{key}: cannot read {raw!r} as {' | '.join(errors) or tp}")


@dataclass(frozen=True)
class Config:
    """Base of every config section: validates types and ranges on construction.

    A field may hold a whole config (:func:`nested`): its settings are addressed
    ``<field>.<name>`` and flatten to columns alike. ``aliases`` maps older
    setting names to their current ones, so that commands written for an earlier
    version keep working.
    """

    section: ClassVar[str] = ""
    aliases: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            key = f"{self.section}.{f.name}" if self.section else f.name
            value = _coerce(getattr(self, f.name), hints[f.name], key)
            object.__setattr__(self, f.name, value)
            _check_range(value, f.metadata, key)
            _check_int(value, f.name, key)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; subclasses override."""

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) for every setting, for ``eclipse-ray list`` (nested ones dotted)."""
        hints = _hints(cls)
        out = []
        for f in fields(cls):
            tp = hints[f.name]
            if f.metadata.get("nested"):
                inner = f.default_factory()  # type: ignore[misc]
                defaults = {k: v for k, v in flatten(inner).items()}
                out += [(f"{f.name}.{name}", t, defaults.get(name, d), h) for name, t, d, h in type(inner).describe()]
                continue
            tname = " | ".join(getattr(b, "__name__", str(b)) for b in _base_types(tp))
            if _allows_none(tp):
                tname += " | none"
            help_text = f.metadata.get("help", "")
            choices = _choices(f.metadata)
            if choices:
                help_text += f" (one of {', '.join(map(str, choices))})"
            out.append((f.name, tname, f.default, help_text))
        return out

    def legacy_flat(self, prefix: str = "") -> dict[str, Any] | None:
        """:func:`flatten` as versions before the nested fields spelled it (nested settings that had an
        alias under their old name, the others left out; settings declared ``added`` left out), or ``None``
        when a left-out setting differs from its default (no earlier version could express this config).
        Old rows and caches stay addressable."""
        old = {new: alias for alias, new in self.aliases.items()}
        out: dict[str, Any] = {}
        for key, value in flatten(self, prefix).items():
            rel = key[len(prefix):]
            head = rel.split(".", 1)[0]
            f = next((f for f in fields(self) if f.name == head), None)
            if f is not None and f.metadata.get("added", 0) > 0:
                if value != f.default:
                    return None
            elif f is None or not f.metadata.get("nested"):
                out[key] = value
            elif rel in old:
                out[prefix + old[rel]] = value
            elif value != flatten(f.default_factory()).get(rel.split(".", 1)[1]):  # type: ignore[misc]
                return None
        return out

    def generation(self) -> int:
        """The newest settings generation among this config's fields (nested ones included)."""
        return max((f.metadata.get("added", 0) if not f.metadata.get("nested") else
                    getattr(self, f.name).generation() for f in fields(self)), default=0)

    def spelling(self, version: int, prefix: str = "") -> dict[str, Any] | None:
        """:func:`flatten` as settings generation ``version`` spelled it: every setting added after it left
        out, or ``None`` when one of those differs from its default (that version could not express this
        config). Version 0 is :meth:`legacy_flat` (also before the nested fields)."""
        if version <= 0:
            return self.legacy_flat(prefix)
        out = flatten(self, prefix)
        for key, (value, default) in _added_after(self, version, prefix).items():
            if value != default:
                return None
            out.pop(key)
        return out

    def spellings(self, prefix: str = "") -> list[dict[str, Any]]:
        """Every distinct spelling of this config, oldest first, from the first settings generation that
        could express it to now (:func:`flatten`, always last). A cached artifact's address takes the first,
        so adding settings never moves it; a stored row is found under any."""
        out: list[dict[str, Any]] = []
        for version in range(max(self.generation(), 1)):
            flat = self.spelling(version, prefix)
            if flat is not None and flat not in out:
                out.append(flat)
        now = flatten(self, prefix)
        return [f for f in out if f != now] + [now]


def without_added_defaults(cfg: Config, prefix: str = "") -> dict[str, Any]:
    """:func:`flatten` with every setting declared ``added`` left out where it is at its default: the spelling
    a key made before any of them existed keeps, whichever generation adds one next."""
    flat = flatten(cfg, prefix)
    for key, (value, default) in _added_after(cfg, 0, prefix).items():
        if value == default:
            flat.pop(key)
    return flat


def added_settings(cfg: Config, prefix: str = "") -> list[str]:
    """The dotted keys of ``cfg``'s settings declared with ``added`` (nested ones included)."""
    return list(_added_after(cfg, 0, prefix))


def _added_after(cfg: Config, version: int, prefix: str) -> dict[str, tuple[Any, Any]]:
    """``{key: (value, default)}`` of the settings of ``cfg`` (nested ones included) added after ``version``."""
    out: dict[str, tuple[Any, Any]] = {}
    for f in fields(cfg):
        key = f"{prefix}{f.name}"
        if f.metadata.get("nested"):
            out.update(_added_after(getattr(cfg, f.name), version, key + "."))
        elif f.metadata.get("added", 0) > version:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            out[key] = (flatten(getattr(cfg, f.name), key + ".")[key], flatten(default, key + ".")[key])
    return out


def _choices(meta: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """A setting's allowed values: a tuple, or a function giving them (a registry open to plugins)."""
    choices = meta.get("choices")
    return tuple(choices()) if callable(choices) else choices


def _check_range(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    choices = _choices(meta)
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, choices))}")
    checks = (("ge", lambda v, b: v >= b, "≥"), ("gt", lambda v, b: v > b, ">"),
              ("le", lambda v, b: v <= b, "≤"), ("lt", lambda v, b: v < b, "<"))
    for name, ok, sym in checks:
        bound = meta.get(name)
        if bound is not None and isinstance(value, (int, float)) and not ok(value, bound):
            raise ConfigError(f"{key}={value}: must be {sym} {bound}")


def _check_int(value: Any, name: str, key: str) -> None:
    """Seeds in 0..2**63-1; any other int setting within int64 (all of them become parquet result columns)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        return
    if is_seed(name):
        check_seed(value, key)
    elif not -INT_LIMIT <= value < INT_LIMIT:
        raise ConfigError(f"{key}={value}: must fit a 64-bit integer (|value| < 2**63)")


def with_overrides(cfg: Config, overrides: Mapping[str, str], prefix: str = "") -> Config:
    """A copy of ``cfg`` with string overrides (keys relative to this section, nested ones dotted:
    ``train.iterations``; older names through ``aliases``) applied."""
    hints = _hints(type(cfg))
    names = {f.name: f for f in fields(cfg)}
    changes: dict[str, Any] = {}
    inner: dict[str, dict[str, str]] = {}
    for given, raw in overrides.items():
        key = type(cfg).aliases.get(given, given)
        head, dot, rest = key.partition(".")
        f = names.get(head)
        if f is not None and f.metadata.get("nested") and dot:
            inner.setdefault(head, {})[rest] = raw
            continue
        if f is None or f.metadata.get("nested"):
            known = ", ".join(sorted(f"{prefix}{n}" + (".…" if names[n].metadata.get("nested") else "")
                                     for n in names)) or "none"
            raise ConfigError(f"unknown setting {prefix + given!r} (known: {known})")
        changes[key] = parse_value(raw, hints[key], f"{prefix}{key}")
    for head, sub in inner.items():
        cur = getattr(cfg, head)
        try:
            changes[head] = with_overrides(cur, sub, f"{prefix}{head}.")
        except ConfigError as e:  # a range error names the inner section: name the setting as it was given
            text = str(e)
            own = f"{cur.section}." if cur.section else ""
            if own and text.startswith(own):
                text = f"{prefix}{head}.{text[len(own):]}"
            raise ConfigError(text) from None
    return dataclasses.replace(cfg, **changes)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dataclasses to one flat dict with dotted keys (the result columns)."""
    out: dict[str, Any] = {}
    if dataclasses.is_dataclass(obj):
        name = getattr(type(obj), "name", None)
        if isinstance(name, str) and prefix:
            out[f"{prefix}name"] = name
        for f in fields(obj):
            out.update(flatten(getattr(obj, f.name), f"{prefix}{f.name}."))
        return out
    key = prefix[:-1]
    out[key] = list(obj) if isinstance(obj, tuple) else obj
    return out


def config_hash(flat: Mapping[str, Any], length: int = 16) -> str:
    """Stable short hash of a flattened config (key order and int/float spelling do not matter)."""
    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return v

    text = json.dumps({k: norm(v) for k, v in sorted(flat.items())}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def section_settings(overrides: Mapping[str, str], section: str, command: str) -> dict[str, str]:
    """The ``section.*`` keys of ``overrides`` without their prefix; any other key is a one-line error
    naming what ``command`` takes."""
    bad = [k for k in overrides if not k.startswith(f"{section}.")]
    if bad:
        raise ConfigError(f"unknown setting {bad[0]!r} ({command} takes {section}.* settings)")
    return {k[len(section) + 1:]: v for k, v in overrides.items()}


def split_overrides(pairs: list[str] | None) -> dict[str, str]:
    """``["a.b=1", "seed=2"]`` to ``{"a.b": "1", "seed": "2"}``, rejecting malformed pairs."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key = key.strip()
        if key in out:
            raise ConfigError(f"--set {key} given twice")
        out[key] = value
    return out
