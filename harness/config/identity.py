"""A run's identity: the hash of what defines the experiment, not of how it is executed.

:func:`config_hash` (identity version 3) hashes the canonical JSON of the config with

- every execution setting left out (fields marked :data:`~harness.config.run.EXECUTION`: device,
  compilation, logging and checkpoint cadence, the feature cache, the audio scan, the decode batch),
  so turning on ``compile`` or re-running a finished grid on a GPU machine resumes or skips its cells;
- every manifest named by the digest of its content, not by its path: a changed manifest is a new
  cell, a moved one is not. ``data.optional_test`` is evaluation only and is left out.

Version 3 is version 2 with each family's options in its own section (``encoder.whisper.input_mode``,
``adapter.qformer.*``). :func:`legacy_hashes` gives the identities older stores were written with:
version 2, and version 1 (the whole config, manifests by path). The study runner, the search and
the run folder find a finished or interrupted cell under any of them and adopt it.

Example::

    >>> from harness.config import load_config
    >>> a = load_config(None, ["train.compile=true", "decode.batch_size=4"])
    >>> config_hash(a) == config_hash(load_config(None))
    True
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from harness.config.keys import get_path
from harness.config.loading import to_dict
from harness.config.run import CTCConfig, RunConfig, is_execution

IDENTITY_VERSION = 3
MISSING = "missing:"
"""Prefix of what stands for a manifest that does not exist (yet): ``missing:<path>``. Such a cell
cannot have run; once the file is made, its digest names it."""

# Settings added after stores full of runs existed: at their defaults they are left out of the
# legacy identity, so every cell run before they existed keeps its hash.
_LEGACY_ADDED_LATER: dict[str, Any] = {"adapter.ctc": CTCConfig(), "decode.tokens_per_position": None}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_json(cfg: Any) -> str:
    """The config as JSON with sorted keys: the same text for the same config, whatever the YAML's order."""
    return _dumps(to_dict(cfg))


@functools.lru_cache(maxsize=1024)
def _file_digest(path: str, stamp: tuple[int, int, int]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def manifest_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of the manifest's bytes, or ``missing:<path>`` (:data:`MISSING`) when it
    cannot be read; read once per file version (its inode, size and modification time key a cache)."""
    try:
        st = os.stat(path)
        return _file_digest(str(Path(path).resolve()), (st.st_ino, st.st_size, st.st_mtime_ns))
    except OSError:
        return MISSING + Path(path).as_posix()


# Settings added after stores of version-3 runs existed: at their defaults they are left out of every
# version's identity, so adding them renamed no cell.
_ADDED_AT_DEFAULT: dict[str, Any] = {"decode.ctc_weight": 0.0, "decode.ctc_candidates": 32}


def _drop_at_default(cfg: RunConfig, data: dict, settings: dict[str, Any]) -> None:
    """Delete from ``data`` (the config as plain data) each of ``settings`` that ``cfg`` holds at its default."""
    for key, default in settings.items():
        if get_path(cfg, key) == default:
            *parents, leaf = key.split(".")
            section = data
            for p in parents:
                section = section[p]
            del section[leaf]


def experiment_dict(cfg: RunConfig) -> dict:
    """The part of ``cfg`` that defines the experiment, as plain JSON-ready data."""
    data = _experiment_part(cfg)
    _drop_at_default(cfg, data, _ADDED_AT_DEFAULT)
    d = data["data"]
    d["train"], d["dev"] = manifest_digest(cfg.data.train), manifest_digest(cfg.data.dev)
    d["test"] = {name: manifest_digest(path) for name, path in cfg.data.test.items()}
    del d["optional_test"]
    return data


def _experiment_part(obj: Any) -> Any:
    if not dataclasses.is_dataclass(obj):
        return json.loads(json.dumps(obj))  # tuples -> lists, FrozenDict -> dict
    return {f.name: _experiment_part(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not is_execution(f)}


def execution_dict(cfg: RunConfig) -> dict[str, Any]:
    """The execution settings of ``cfg``, flat (``{"train.device": "auto", ...}``): logged, not hashed."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif is_execution(f):
                out[key] = value

    walk(cfg, "")
    return out


def config_hash(cfg: Any) -> str:
    """The run's identity (sha256 hex): the experiment settings, manifests by content digest.

    Any other frozen dataclass (e.g. a search's settings) hashes its whole canonical JSON."""
    if not isinstance(cfg, RunConfig):
        return _sha256(canonical_json(cfg))
    return _sha256(_dumps({"identity": IDENTITY_VERSION, "experiment": experiment_dict(cfg)}))


def _as_version_2(data: dict) -> dict:
    """A config tree (plain data) in the shape versions 1 and 2 hashed: the per-family options
    sections flattened back into the ``encoder`` and ``adapter`` keys they were."""
    data = json.loads(json.dumps(data))
    data["encoder"]["input_mode"] = data["encoder"].pop("whisper")["input_mode"]
    qformer = data["adapter"].pop("qformer")
    data["adapter"]["qformer_queries"], data["adapter"]["qformer_layers"] = qformer["queries"], qformer["layers"]
    return data


def _version_1(cfg: RunConfig) -> str:
    data = _as_version_2(to_dict(cfg))
    _drop_at_default(cfg, data, {**_LEGACY_ADDED_LATER, **_ADDED_AT_DEFAULT})
    return _sha256(_dumps(data))


def legacy_hashes(cfg: RunConfig) -> dict[int, str]:
    """The identities older stores knew this run by, newest first: ``{2: ..., 1: ...}``.

    Version 2: this version's experiment settings in the old shape (options not yet in their
    family's section). Version 1: every setting, manifests by path (settings added later left out at
    their defaults). Kept so that cells in older stores are found and adopted."""
    v2 = _sha256(_dumps({"identity": 2, "experiment": _as_version_2(experiment_dict(cfg))}))
    return {2: v2, 1: _version_1(cfg)}
