"""The Typer app, its global options and the one place user errors become one line.

Command modules (`cli/ingest.py`, `cli/build.py`, ...) import `app` and register their
commands; each command only parses options, calls one core function and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from rechub_store import __version__
from rechub_store.errors import UserError
from rechub_store.redact import redact
from rechub_store.settings import MODELS_DIR_ENV, Settings
from rechub_store.warehouse import Warehouse


class _Group(TyperGroup):
    """Render `UserError` as `error: <message>` on stderr with its exit code, no traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            typer.echo(f"error: {redact(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            ctx.exit(130)


app = typer.Typer(
    cls=_Group,
    help="Feature-store backed batch scoring for two-tower recommenders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"rechub-store {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    warehouse: Path = typer.Option(
        None,
        "--warehouse",
        "-w",
        help="DuckDB warehouse file [env RECHUB_WAREHOUSE; default warehouse/rechub.duckdb]",
    ),
    threads: int = typer.Option(
        None, "--threads", help="DuckDB/torch threads [env RECHUB_THREADS; default all cores]"
    ),
    memory_limit: str = typer.Option(None, "--memory-limit", help="DuckDB memory limit, e.g. 8GB"),
    models_dir: Path = typer.Option(
        None,
        "--models-dir",
        help="Your own SQL models, built with the built-in ones (same path = override) "
        f"[env {MODELS_DIR_ENV}; default: the job file's build.models_dir, else none]",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    # the one settings object of this invocation (a bad RECHUB_THREADS is a one-line error for
    # every command); its Warehouse carries it to DuckDB, torch and annoy
    settings = Settings.from_env(
        warehouse_path=warehouse, threads=threads, memory_limit=memory_limit, models_dir=models_dir
    )
    ctx.obj = settings.warehouse()


def warehouse_of(ctx: typer.Context, *, create: bool = False, analytics_ok: bool = False) -> Warehouse:
    """The `--warehouse`. Only the commands that make one (`ingest`, `generate --ingest`, `demo`)
    pass `create`: for every other command a path that does not exist is a typo, not a new
    warehouse, and a one-line error instead of an empty warehouse folder. Commands that can read
    the published analytics file alone (`sql`, `status`) pass `analytics_ok`: analysts may be given
    only that file."""
    wh: Warehouse = ctx.find_root().obj
    if analytics_ok and wh.analytics_path.exists():
        return wh
    if not create and not wh.exists():
        raise UserError(
            f"no warehouse at {wh.path}: check --warehouse / RECHUB_WAREHOUSE, or create one with "
            "`rechub-store ingest` or `rechub-store demo`"
        )
    return wh


def print_json(payload: Any) -> None:
    """Machine-readable output for `--json`: one JSON document on stdout."""
    sys.stdout.write(json.dumps(payload, default=str, indent=2) + "\n")


def parse_int_list(text: str, name: str) -> list[int]:
    """Parse `10,20,50` into [10, 20, 50], naming the option on error."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{name}: expected positive integers, got {text!r}")
    return values
