"""Flags every verb shares, and the argument types the orchestrators need.

A verb's flags that set a config value are declared with :func:`config_flag`, which binds the
flag to its dotted config key; :func:`resolve_config` then applies, in order, the profile,
``--set key=value`` overrides and the verb's config flags. So a flag and the key it sets are
written once, where the verb declares it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from synthmri.config import Config, load_config, parse_override

#: Environment variable naming the default profile.
PROFILE_ENV = "SYNTHMRI_PROFILE"

#: Parser default holding the {argparse dest: dotted config key} of a verb's config flags.
_CONFIG_KEYS = "config_keys"


class UsageError(Exception):
    """Bad command-line input; printed without a traceback, exit status 2."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--profile``, ``--set`` and ``--verbose``: every verb takes them."""
    parser.add_argument("--profile", default=os.environ.get(PROFILE_ENV),
                        help="profile name (demo, paper) or YAML path; default $SYNTHMRI_PROFILE, else the paper "
                             "settings")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one config value, e.g. --set data.size=64 (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def config_flag(parser: argparse.ArgumentParser, *flags: str, key: str, **kwargs: Any) -> argparse.Action:
    """A flag that, when given, sets the config value `key` (e.g. ``--size`` -> ``data.size``).

    Args:
        parser: The verb's subparser.
        *flags: The flag's names, as for ``add_argument``.
        key: The dotted config key it overrides.
        **kwargs: ``add_argument`` keywords (type, choices, help...); the default is None,
            meaning "the profile decides".

    Returns:
        The argparse action.
    """
    kwargs.setdefault("default", None)
    action = parser.add_argument(*flags, **kwargs)
    keys = dict(parser.get_default(_CONFIG_KEYS) or {})
    keys[action.dest] = key
    parser.set_defaults(**{_CONFIG_KEYS: keys})
    return action


def config_keys(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{flag dest: config key} of the config flags registered on `parser`."""
    return dict(parser.get_default(_CONFIG_KEYS) or {})


def resolve_config(args: argparse.Namespace, **overrides: Any) -> Config:
    """The run's config: the profile, then ``--set`` overrides, then the verb's config flags.

    Args:
        args: Parsed flags of one verb.
        **overrides: More dotted keys (as ``**{"generator.model": "ddpm"}``), applied last;
            None values are skipped.

    Raises:
        ConfigError: An override names no config key or has a bad value.
    """
    values: dict[str, Any] = {}
    for text in getattr(args, "set", None) or []:
        key, value = parse_override(text)
        values[key] = value
    for dest, key in (getattr(args, _CONFIG_KEYS, None) or {}).items():
        if getattr(args, dest, None) is not None:
            values[key] = getattr(args, dest)
    values.update({key: value for key, value in overrides.items() if value is not None})
    return load_config(args.profile, values)


def whole_number(text: str) -> int:
    """An int flag that also takes ``3.0``: a pipeline passes loop items' numbers as JSON floats."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def names(values: list[str]) -> list[str]:
    """Words from flags given as words, comma lists or a JSON list (what a pipeline passes)."""
    words: list[str] = []
    for value in values:
        text = value.strip()
        if text.startswith("["):
            try:
                words += [str(v) for v in json.loads(text)]
            except json.JSONDecodeError as exc:
                raise UsageError(f"{text!r}: not a JSON list ({exc})") from None
        else:
            words += [part.strip() for part in text.split(",") if part.strip()]
    return words


def switch(value: str, flag: str = "--augment") -> bool:
    """``on``/``off`` (or true/false, 1/0, yes/no) as a bool; anything else names `flag`."""
    lowered = value.lower()
    if lowered in ("on", "true", "aug", "1", "yes"):
        return True
    if lowered in ("off", "false", "no-aug", "0", "no"):
        return False
    raise UsageError(f"{flag} takes on/off (or true/false), got {value!r}")


def at_least(value: int | None, minimum: int, flag: str) -> None:
    """Refuse `value` below `minimum`, naming `flag`."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")


def add_metrics_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--metrics-out`` and ``--executor-input``: a pipeline step's scores for its Metrics output."""
    parser.add_argument("--metrics-out", type=Path, help=f"also write {what} as flat JSON here (pipeline metrics)")
    parser.add_argument("--executor-input", metavar="JSON",
                        help=f"Kubeflow executor input ({{{{$}}}}): write {what} into the executor output it "
                             "names, as the metadata of the step's Metrics outputs, so the Kubeflow UI shows them")


def write_metrics(args: argparse.Namespace, summary: Any) -> None:
    """``--metrics-out``/``--executor-input``: the finite scores of `summary`, flat, for a pipeline."""
    from synthmri.io import atomic_write_json, scalar_metrics

    metrics = scalar_metrics(summary)
    if getattr(args, "metrics_out", None) is not None:
        atomic_write_json(args.metrics_out, metrics)
    if getattr(args, "executor_input", None) is not None:
        from synthmri.executor_output import write_executor_output

        write_executor_output(args.executor_input, metrics)


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: let the stage replace another kind of output at ``--out`` (never by default)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what --out holds even if it is another kind of output (a slice store, "
                             "another stage's output, other files); by default the stage refuses")
