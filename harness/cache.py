"""The harness-wide cache folder (converted packs, encoder features)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the harness cache: $HARNESS_CACHE, else ~/.cache/slam-harness."""
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slam-harness"
