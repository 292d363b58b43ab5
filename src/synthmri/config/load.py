"""Loading the config: YAML profiles, dotted overrides, typed coercion, and writing it out.

A profile (``configs/demo.yaml``, ``configs/paper.yaml`` or any YAML path) overrides the
dataclass defaults section by section, and dotted overrides (command-line flags,
``--set``) override the profile. Every value is coerced to its annotated type here; the
checks of values against each other live in :mod:`synthmri.config.validate`, which
:func:`load_config` runs last.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from synthmri.config.errors import ConfigError
from synthmri.config.schema import Config
from synthmri.config.sections import extra_field, extra_registry, registered_sections
from synthmri.config.validate import validate

CONFIG_DIR_ENV = "SYNTHMRI_CONFIG_DIR"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is tuple:
        return _coerce_tuple(value, tp, where)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {_coerce(k, kt, f"{where}.{k}"): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # an id or name that YAML read as a number (``--set tracking.pipeline_run=1234``)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _coerce_tuple(value: Any, tp: Any, where: str) -> tuple[Any, ...]:
    """A YAML list as a ``tuple[X, ...]`` or fixed-length tuple annotation."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
    return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _merged(current: Any, value: Any) -> Any:
    """A partial section merged into that section's current values; other values as given."""
    if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
        return {**to_dict(current), **value}
    return value


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """An instance of the config dataclass `cls` from `values` over its defaults."""
    hints = typing.get_type_hints(cls)
    extra = extra_field(cls)
    names = {f.name for f in dataclasses.fields(cls) if f is not extra}
    registered = registered_sections(extra_registry(extra)) if extra is not None else {}
    known = names | {name for name in registered if name not in names}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    base = cls()
    kwargs = {}
    sections = dict(getattr(base, extra.name)) if extra is not None else {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        if name in names:
            kwargs[name] = _coerce(_merged(getattr(base, name), value), hints[name], key)
        else:  # the section of a family registered at runtime
            current = sections[name] if name in sections else registered[name]()
            sections[name] = _coerce(_merged(current, value), registered[name], key)
    if extra is not None:
        kwargs[extra.name] = sections
    return dataclasses.replace(base, **kwargs)


def to_dict(obj: Any) -> Any:
    """A plain, YAML/JSON-serialisable view of a config (tuples become lists).

    Sections of families registered at runtime appear beside the built-in sections.

    Args:
        obj: a config dataclass, or any value inside one.

    Returns:
        Nested dicts, lists and scalars.
    """
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f is extra_field(type(obj)):
                out.update({name: to_dict(section) for name, section in value.items()})
            else:
                out[f.name] = to_dict(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> scalar values, e.g. ``{"data.size": 64}``; for MLflow params.

    Args:
        obj: a config dataclass (or its :func:`to_dict` view).
        prefix: prepended to every key.

    Returns:
        One entry per leaf; a mapping with integer keys (``data.label_map``) stays whole.
    """
    out: dict[str, Any] = {}
    for key, value in to_dict(obj).items():
        name = f"{prefix}{key}"
        # label_map has int keys: keep it whole as one value rather than descending.
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def resolve_profile_path(profile: str | os.PathLike) -> Path:
    """Find a profile by path, or by name in $SYNTHMRI_CONFIG_DIR or ./configs.

    Args:
        profile: a YAML path, or a profile name (``demo``, ``paper``).

    Returns:
        The profile file.

    Raises:
        ConfigError: no such file; the message says where it looked.
    """
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"profile file not found: {path}")
        return path
    dirs = [Path(os.environ[CONFIG_DIR_ENV])] if os.environ.get(CONFIG_DIR_ENV) else []
    dirs.append(Path.cwd() / "configs")
    for directory in dirs:
        candidate = directory / f"{profile}.yaml"
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(d) for d in dirs)
    raise ConfigError(f"profile {str(profile)!r} not found (looked for {profile}.yaml in {searched})")


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating sections on the way.

    Raises:
        ConfigError: a part of the path is a value, not a section.
    """
    *sections, leaf = dotted.split(".")
    node = values
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {section!r} is not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value parsed as YAML (``data.size=64``, ``a.b=[1,2]``).

    Raises:
        ConfigError: no ``=`` in `text`.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_config(profile: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a profile and apply dotted overrides.

    Args:
        profile: profile name (``demo``, ``paper``) or path to a YAML file; None gives the
            paper defaults.
        overrides: dotted keys to values, applied after the profile
            (e.g. ``{"data.size": 64}``).

    Returns:
        The frozen, validated Config.

    Raises:
        ConfigError: unknown key, wrong type, invalid value or missing profile; the message
            names it.
    """
    values: dict[str, Any] = {}
    if profile is not None:
        path = resolve_profile_path(profile)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a profile must be a mapping of sections")
        values = loaded
        values.setdefault("profile", path.stem)
    for key, value in (overrides or {}).items():
        set_dotted(values, key, value)
    try:
        config = _build(Config, values, "")
    except ConfigError as exc:
        where = f"profile {profile}: " if profile is not None else ""
        raise ConfigError(f"{where}{exc}") from None
    validate(config)
    return config


def dump_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically).

    Args:
        config: the config to write.
        path: the YAML file.
    """
    from synthmri.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
