"""The one error type of configuration, and how a bad value is shown in its message."""
from __future__ import annotations

import reprlib
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""



_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel = 160, 160, 3
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 8


def show(value: Any) -> str:
    """``repr(value)`` cut to a readable length (a value may be huge, deep, or share sub-lists)."""
    return _SHOW.repr(value)
