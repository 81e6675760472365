"""The command line's floor plan: ``harness study run|report|search|dashboard``, the old spellings
still working (hidden), and a module docstring that lists every command there is."""
from __future__ import annotations

import click
from click.testing import CliRunner

import harness.cli.app as cli_main
from harness.cli import main


def _commands(group: click.Group, prefix: str = "harness") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        if cmd.hidden:
            continue
        if isinstance(cmd, click.Group):
            out += [f"{prefix} {name} {sub}" for sub in cmd.commands]
        else:
            out.append(f"{prefix} {name}")
    return out


def test_study_holds_run_report_search_and_dashboard() -> None:
    assert sorted(main.commands["study"].commands) == ["dashboard", "report", "run", "search", "status"]


def test_old_top_level_spellings_still_work_and_are_hidden() -> None:
    runner = CliRunner()
    top = runner.invoke(main, ["--help"]).output
    for old in ("report", "search", "dashboard"):
        assert main.commands[old].hidden and f"\n  {old} " not in top
        result = runner.invoke(main, [old, "--help"])
        assert result.exit_code == 0 and "STUDY_FILE" in result.output


def test_the_module_docstring_lists_every_command() -> None:
    doc = cli_main.__doc__
    missing = [c for c in _commands(main) if c.split(" ", 2)[1] not in ("data", "packs") and c not in doc]
    assert not missing, missing
    for group in ("data", "packs"):  # listed as one line: `harness data synth | librispeech ROOT | subset`
        line = next(ln for ln in doc.splitlines() if f"harness {group} " in ln)
        assert all(sub in line for sub in main.commands[group].commands), (group, line)
