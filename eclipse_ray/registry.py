"""Name -> config-class registries for attacks and defenses."""

from __future__ import annotations

from typing import Generic, Iterable, Iterator, Mapping, TypeVar

from eclipse_ray.config import Config, ConfigError, with_overrides

C = TypeVar("C", bound=Config)


class Registry(Generic[C]):
    """Config classes by their ``name``; builds configs from a name plus dotted overrides."""

    def __init__(self, section: str, classes: Iterable[type[C]]) -> None:
        self.section = section
        self._classes: dict[str, type[C]] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[C]) -> type[C]:
        if cls.name in self._classes:
            raise ValueError(f"{self.section} {cls.name!r} registered twice")
        self._classes[cls.name] = cls
        return cls

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __getitem__(self, name: str) -> type[C]:
        if name not in self._classes:
            raise ConfigError(f"unknown {self.section} {name!r} (known: {', '.join(self._classes)})")
        return self._classes[name]

    def build(self, name: str, overrides: Mapping[str, str] | None = None) -> C:
        """The config of ``name`` with ``overrides`` (keys without the section prefix) applied."""
        return with_overrides(self[name](), overrides or {}, prefix=f"{self.section}.")  # type: ignore[return-value]
