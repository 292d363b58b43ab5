"""Named registries of model families: one shape for generators and segmenters.

A :class:`Registry` maps names to entries, in registration order. The two instances live
here, where nothing imports torch, so the config can validate ``generator.model`` and
``segmenter.arch`` against whatever is registered without importing a network:

* :data:`GENERATORS` (``synthmri.generators.FAMILIES``): generator families, objects
  satisfying :class:`synthmri.generators.GeneratorFamily`;
* :data:`SEGMENTERS` (``synthmri.segmenters.ARCHITECTURES``): segmenter architectures,
  :class:`synthmri.segmenters.Architecture` records.

``synthmri.generators`` and ``synthmri.segmenters`` register the built-in entries when
imported. A new family is one module and one line::

    FAMILIES.register("mygan", mygan.FAMILY, section=mygan.MyGANConfig)

where ``section``, optional, is the family's settings dataclass: the config then accepts a
``generator.mygan`` section and the family reads it as ``cfg.generator.mygan`` (see
:mod:`synthmri.config.sections`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Generic, Iterator, TypeVar

from synthmri.config.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind, with an optional config section per entry.

    Args:
        kind: what an entry is, for messages (``generator model``).
        key: the config key that names an entry (``generator.model``), for messages.
    """

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key
        self._entries: dict[str, T] = {}
        self._sections: dict[str, type] = {}

    def register(self, name: str, entry: T, section: type | None = None) -> T:
        """Add `entry` as `name`.

        Args:
            name: the name configs and checkpoints use.
            entry: the family (generators) or architecture (segmenters).
            section: the dataclass of the entry's config section, for an entry whose
                section is not a field of the config's dataclasses (every entry added
                after the built-in ones); None for none.

        Returns:
            `entry`, so a module may write ``FAMILY = REGISTRY.register(...)``.

        Raises:
            ValueError: `name` is already registered.
        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        if section is not None:
            self._sections[name] = section
        return entry

    def unregister(self, name: str) -> T:
        """Remove `name` (a test's temporary entry) and return its entry.

        Raises:
            ConfigError: `name` is not registered.
        """
        entry = self.get(name)
        del self._entries[name]
        self._sections.pop(name, None)
        return entry

    @contextlib.contextmanager
    def registered(self, name: str, entry: T, section: type | None = None) -> Iterator[T]:
        """Register `entry` while the context is open.

        Args:
            name, entry, section: as :meth:`register`.

        Yields:
            `entry`; it is unregistered when the context closes.
        """
        self.register(name, entry, section)
        try:
            yield entry
        finally:
            self.unregister(name)

    def get(self, name: str) -> T:
        """The entry registered as `name`.

        Raises:
            ConfigError: (a ValueError) `name` is not registered; the message names the
                kind and lists the known names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"{self.key}: unknown {self.kind} {name!r}; "
                              f"known: {', '.join(sorted(self._entries))}") from None

    def section(self, name: str) -> type | None:
        """The config section dataclass registered with `name`.

        Args:
            name: a registered name.

        Returns:
            The dataclass, or None when `name` has none (or is not registered).
        """
        return self._sections.get(name)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


#: Generator families by ``generator.model`` name (filled by ``synthmri.generators``).
GENERATORS: Registry[Any] = Registry("generator model", "generator.model")
#: Segmenter architectures by ``segmenter.arch`` name (filled by ``synthmri.segmenters``).
SEGMENTERS: Registry[Any] = Registry("segmenter architecture", "segmenter.arch")
