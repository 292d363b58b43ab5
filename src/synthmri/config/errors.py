"""The configuration's one exception (its own module, so that every part can raise it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A profile or override that does not fit the schema; the message names the key."""
