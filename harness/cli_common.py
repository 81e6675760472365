"""Pieces shared by the ``harness`` command modules."""
from __future__ import annotations

import functools

import click


class HarnessError(click.ClickException):
    """A user-facing error: printed as one clear line, exit code 1."""


def friendly(fn):
    """Turn the project's own error types into one-line messages instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from harness.config import ConfigError
        from harness.data.audio import AudioError
        from harness.data.manifest import ManifestError
        from harness.models.loading import ModelLoadError
        from harness.registry import RegistryError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, ModelLoadError, RegistryError, ManifestError, AudioError, FileNotFoundError, ConnectionError) as e:
            raise HarnessError(str(e)) from e

    return wrapper
