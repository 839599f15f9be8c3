"""Errors the library raises for bad input, and the one-line messages the CLI prints.

Every user-facing failure is a :class:`SkipNetError`; the CLI prints ``str(err)`` on one line
and exits with code 2, without a traceback. ``assert`` is kept for internal invariants only.
"""
from __future__ import annotations

from typing import Any


class SkipNetError(Exception):
    """Base class of every error caused by user input (files, names, values, addresses)."""


class ConfigError(SkipNetError, ValueError):
    """A configuration value is wrong: names the key path, the value and what is accepted.

    Example: ``ConfigError("scheduler.grace_period", 20, "<= max_t (10)", source="x.yaml")``
    renders as ``x.yaml: scheduler.grace_period: must be <= max_t (10) (got 20)``.
    """

    def __init__(self, path: str, value: Any, accepted: str, source: str | None = None):
        self.path, self.value, self.accepted, self.source = path, value, accepted, source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{path}: must be {accepted} (got {value!r})")

    def __reduce__(self):
        # rebuilt from its fields, not from the message: Ray pickles a trial's error to the
        # driver, and an error that cannot be rebuilt there ends the whole search instead of the trial
        return type(self), (self.path, self.value, self.accepted, self.source)

    def with_source(self, source: str) -> "ConfigError":
        """The same error, attributed to a file."""
        return ConfigError(self.path, self.value, self.accepted, source=source)


class CheckpointError(SkipNetError):
    """A checkpoint file is missing, unreadable, unsafe or belongs to another architecture."""


class UnknownModelError(SkipNetError, KeyError):
    """``create_model`` was given a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
