"""User-facing errors: the runner prints their message on one line and exits 2.

A message is one line by construction (line breaks inside it are joined) and never
longer than :data:`MAX_MESSAGE` characters, so a value echoed into it (a huge YAML
scalar, a long path) cannot flood the terminal; :func:`excerpt` shortens a value
where it is echoed.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

MAX_MESSAGE = 2000
MAX_EXCERPT = 80
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring = _REPR.maxother = 2 * MAX_EXCERPT


def excerpt(value: Any, limit: int = MAX_EXCERPT) -> str:
    """A short ``repr`` of ``value`` for a message: at most ``limit`` characters.

    Containers are rendered two levels deep and four items wide (``reprlib``), so the
    work is bounded too: a value of shared references (a YAML alias bomb) is never expanded.
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class UserError(Exception):
    """A mistake in what the user gave us (recipe, data, checkpoint); never a bug."""

    def __str__(self) -> str:
        text = re.sub(r"\s*[\r\n]+\s*", " ", super().__str__()).strip()
        return shorten(text, MAX_MESSAGE)


class ConfigError(UserError):
    """Invalid recipe: YAML syntax, unknown key, wrong type, unknown name."""


class DataError(UserError):
    """Data missing, unreadable or inconsistent."""


class CheckpointError(UserError):
    """Checkpoint missing, truncated, foreign or unsafe."""
