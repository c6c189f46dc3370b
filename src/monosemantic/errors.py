"""The one exception type for bad user input, and the one way a config's validation error becomes one.

Raise ``UserError("corpus file runs/x.txt: is empty")`` for anything the user can fix (a missing
file, a bad option, a corrupt checkpoint). The CLI prints its message as one line and exits with
code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Callable

from pydantic import ValidationError


class UserError(Exception):
    """Bad input: a message naming the file/option and what was wrong."""


def invalid_config(err: ValidationError, source: str, name: Callable[[str], str] = str) -> UserError:
    """``err``'s first problem as one line: ``{source} {name(field)}: {message} (got {value})``, or
    ``{source}: {message}`` for a check of the whole config. ``field`` is the dotted location
    (``lm.d_model``); ``name`` may add how the user spells it (``n_hidden (--n-hidden)``)."""
    first = err.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    where = ".".join(str(part) for part in first["loc"])
    if not where:
        return UserError(f"{source}: {message}")
    value = first["input"]
    got = "" if first["type"] in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {value!r:.60})"
    return UserError(f"{source} {name(where)}: {message}{got}")
