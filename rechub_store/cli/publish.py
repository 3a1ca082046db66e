"""CLI commands: publish (the current run to a server database through SQLAlchemy)."""

from __future__ import annotations

import typer

from rechub_store import api
from rechub_store.cli.app import app, print_json, warehouse_of
from rechub_store.cli.options import Json


@app.command("publish")
def publish(
    ctx: typer.Context,
    to: str = typer.Option(
        ...,
        "--to",
        envvar="RECHUB_PUBLISH_URL",
        show_envvar=True,
        help="SQLAlchemy URL, e.g. postgresql://user@host:5432/db (password from the URL or PGPASSWORD)",
    ),
    run_id: str = typer.Option(None, "--run-id", help="Run to publish [default: the current run]"),
    retention: int = typer.Option(30, "--retention", min=1, help="Runs kept in recommendations_history"),
    schema: str = typer.Option(None, "--schema", help="Server schema [default: public on PostgreSQL]"),
    table_prefix: str = typer.Option("", "--table-prefix", help="Prefix for every server table name"),
    retries: int = typer.Option(
        None, "--retries", min=0, help="Retries on connection errors, backoff 1s, 2s, 4s... [default: 5]"
    ),
    json_out: Json = False,
) -> None:
    """Copy the run's recommendations, metrics and run metadata to a server database, atomically."""
    result = api.publish(
        warehouse_of(ctx),
        to,
        run_id=run_id,
        retention=retention,
        retries=retries,
        schema=schema,
        prefix=table_prefix,
    )
    if json_out:
        print_json(result.as_dict())
    elif result.status == "unchanged":
        typer.echo(f"run {result.run_id} is already published to {result.target}: nothing to do")
    else:
        typer.echo(
            f"published run {result.run_id} to {result.target}: {result.rows.get('recommendations', 0):,} "
            f"recommendations ({result.rows_per_second:,.0f} rows/s), "
            f"{result.rows.get('evaluation_metrics', 0)} metric rows; "
            f"swap {result.swap_seconds * 1000:.0f} ms"
            + (f"; dropped from history: {', '.join(result.dropped_runs)}" if result.dropped_runs else "")
        )
