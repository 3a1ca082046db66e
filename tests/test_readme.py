"""The README cannot drift from the CLI: every `rechub-store ...` command line it shows must
parse (its command exists and its options are accepted), checked through `--help` on the
exact command path plus a dry parse of the options with Typer's parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from rechub_store.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_command_lines() -> list[str]:
    """`rechub-store ...` lines from the README's bash code blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines: list[str] = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"&&|\|\|", line):
                part = part.strip()
                if part.startswith("rechub-store "):
                    lines.append(part)
    return lines


COMMANDS = _readme_command_lines()


def test_readme_shows_the_main_commands() -> None:
    shown = {shlex.split(c)[1] for c in COMMANDS}
    assert {"demo", "ingest", "build-features", "train", "nightly", "publish", "sql"} <= shown


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(line: str) -> None:
    args = shlex.split(line)[1:]
    # walk down the command path as the parser does (group options, then a sub-command name), then
    # parse the leaf command's options strictly: unknown options or bad values raise
    cmd = typer.main.get_command(app)
    rest, path = list(args), []
    while isinstance(cmd, typer.core.TyperGroup):
        ctx = cmd.make_context(cmd.name or "", list(rest), resilient_parsing=True)
        _, rest, _ = cmd.make_parser(ctx).parse_args(list(rest))
        assert rest, f"README line names no command: {line}"
        _, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None, f"unknown command in README: {line}"
        path.append(sub.name)
        cmd = sub
    cmd.make_context(cmd.name or "", list(rest))
    help_path = path
    result = CliRunner().invoke(app, [*help_path, "--help"])
    assert result.exit_code == 0, result.output
