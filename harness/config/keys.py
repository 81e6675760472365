"""Dotted keys (``"train.lr"``) into nested mappings and config trees."""
from __future__ import annotations

from typing import Any

from harness.config.errors import ConfigError


def set_path(data: dict, key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key="a.b"``, creating mappings on the way."""
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = data.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        data = nxt
    data[parts[-1]] = value


_REQUIRED = object()


def get_path(obj: Any, key: str, default: Any = _REQUIRED) -> Any:
    """``obj.a.b`` (or ``obj["a"]["b"]``) for ``key="a.b"``; ``default`` where a mapping lacks a key."""
    for p in key.split("."):
        if isinstance(obj, dict) and p not in obj and default is not _REQUIRED:
            return default
        obj = obj[p] if isinstance(obj, dict) else getattr(obj, p)
    return obj

