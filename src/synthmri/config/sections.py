"""Config sections of families registered at runtime.

The built-in generator families and segmenter architectures have their sections as fields
of :class:`~synthmri.config.GeneratorConfig` and :class:`~synthmri.config.SegmenterConfig`.
A family registered later (``FAMILIES.register("mygan", mygan.FAMILY, section=MyGANConfig)``,
see :mod:`synthmri.registry`) brings its section's dataclass with it; the config then

* accepts a ``generator.mygan`` mapping in profiles and overrides and builds it into that
  dataclass (defaults for the keys not given), kept in the level's ``extra_sections`` field;
* reads it as an attribute, ``cfg.generator.mygan``, like a built-in section;
* writes it out beside the built-in sections (``to_dict``, ``flatten``, ``dump_config``);
* validates it with the generic checks of its level and the section's own ``validate(key)``
  method, when it has one.

The registries are looked up lazily, at call time: :mod:`synthmri.registry` imports
:class:`~synthmri.config.ConfigError`, and nothing here imports a network module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Name of the field that holds the registered families' sections, by family name.
EXTRA_SECTIONS = "extra_sections"
#: Field metadata key naming the registry (an attribute of synthmri.registry) of a level.
_REGISTRY = "synthmri.registry"


def registry_of(name: str) -> Any:
    """The registry ``synthmri.registry.<name>`` (``GENERATORS`` or ``SEGMENTERS``).

    Args:
        name: the registry's attribute name in :mod:`synthmri.registry`.

    Returns:
        The :class:`~synthmri.registry.Registry` instance.
    """
    from synthmri import registry  # at call time: synthmri.registry imports this package

    return getattr(registry, name)


def registered_sections(name: str) -> dict[str, type]:
    """Family name -> section dataclass, for the families of registry `name` that have one.

    Args:
        name: the registry's attribute name in :mod:`synthmri.registry`.

    Returns:
        The sections in registration order.
    """
    registry = registry_of(name)
    found = {family: registry.section(family) for family in registry.names()}
    return {family: section for family, section in found.items() if section is not None}


def extra_sections_field(registry: str) -> Any:
    """The dataclass field that holds the sections of families registered in `registry`.

    Its default is every registered family's section at its defaults, so a config built
    while a family is registered has that family's section, as it has the built-in ones.

    Args:
        registry: the registry's attribute name in :mod:`synthmri.registry`.

    Returns:
        A ``dataclasses.field`` for a ``dict[str, Any]`` annotation.
    """
    return dataclasses.field(default_factory=lambda: {n: s() for n, s in registered_sections(registry).items()},
                             repr=False, metadata={_REGISTRY: registry})


def extra_field(cls: type) -> dataclasses.Field | None:
    """The extra-sections field of a config dataclass.

    Args:
        cls: a config dataclass.

    Returns:
        The field made by :func:`extra_sections_field`, or None when `cls` has none.
    """
    return next((f for f in dataclasses.fields(cls) if _REGISTRY in f.metadata), None)


def extra_registry(field: dataclasses.Field) -> str:
    """The registry name recorded on an extra-sections field.

    Args:
        field: a field returned by :func:`extra_field`.

    Returns:
        The registry's attribute name in :mod:`synthmri.registry`.
    """
    return field.metadata[_REGISTRY]


class ExtraSections:
    """Mixin of a config level with registered families' sections: ``level.<family>`` reads one.

    Python calls ``__getattr__`` only for names that normal lookup does not find, so the
    built-in fields are untouched.
    """

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("__"):
            sections = self.__dict__.get(EXTRA_SECTIONS) or {}
            if name in sections:
                return sections[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
