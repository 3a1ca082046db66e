"""CLI command: report (a run's static HTML page, and the index of runs)."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import typer

from rechub_store import api
from rechub_store.cli.app import app, print_json, warehouse_of
from rechub_store.cli.options import Json


@app.command("report")
def report_command(
    ctx: typer.Context,
    run: str = typer.Option(None, "--run", help="Run id, e.g. nightly-2026-11-28 [default: the newest run]"),
    out: Path = typer.Option(
        None,
        "--out",
        help="File or existing folder to write [default: <warehouse folder>/reports/<run>.html, "
        "which also refreshes reports/index.html]",
    ),
    open_page: bool = typer.Option(False, "--open", help="Open the page in the default web browser"),
    as_json: Json = False,
) -> None:
    """Write a run's HTML report: metrics vs baselines, trends, training, retrieval, pipeline, embeddings."""
    result = api.report(warehouse_of(ctx), run, out)
    if as_json:
        print_json(result.as_dict())
    else:
        typer.echo(f"report for {result.run_id} ({result.status}): {result.path}")
        if result.index:
            typer.echo(f"index of runs: {result.index}")
    if open_page:
        webbrowser.open(Path(result.path).resolve().as_uri())
