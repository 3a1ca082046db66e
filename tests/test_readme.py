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

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _readme_command_lines() -> list[str]:
    """`rechub-store ...` lines from the README's bash code blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines: list[str] = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"&&|\|\|", line):
                part = part.strip().removeprefix(".venv/bin/")
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
    if args in (["--version"], ["--help"]):
        assert CliRunner().invoke(app, args).exit_code == 0
        return
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


def test_ci_runs_the_readme_set_up_and_test_commands_in_virtualenvs() -> None:
    """The README's first two commands are set-up + demo and set-up + tests; CI runs exactly that
    set-up and that test command, and the CI scripts use the machine's python3 only to create
    virtualenvs (so a package that happens to be installed globally cannot make CI pass)."""
    first = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)  # type: ignore[union-attr]
    demo, tests = (line.split("#", 1)[0].strip() for line in first.splitlines()[:2])
    assert demo == "bash .ci/setup && .venv/bin/rechub-store demo"
    assert tests.startswith("bash .ci/setup && ")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "bash .ci/setup" in ci and tests.removeprefix("bash .ci/setup && ") in ci
    assert "export RECHUB_REQUIRE_POSTGRES=1" in " ".join(ci)
    for script in ("run", "setup"):
        for line in (ROOT / ".ci" / script).read_text().splitlines():
            code = line.split("#", 1)[0] if not line.startswith("#!") else ""
            code = re.sub(r'bin/python"? -m pip\b', "", code)  # pip of a virtualenv's interpreter
            if re.search(r"(?<![/\w.-])(python3?|pip3?)\b", code):
                assert "python3 -m venv" in code, f".ci/{script} uses the machine's interpreter: {line}"
