"""CLI commands: nightly (what cron runs) and demo (synthetic data end to end)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from rechub_store import api
from rechub_store.cli.app import app, print_json, warehouse_of
from rechub_store.cli.options import Json
from rechub_store.errors import UserError
from rechub_store.jobs.config import JobConfig


def _run_date(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UserError(f"--run-date: expected YYYY-MM-DD, got {text!r}") from None


@app.command("nightly")
def nightly_command(
    ctx: typer.Context,
    job: Path = typer.Option(
        None,
        "--job",
        help="Job file, e.g. jobs/nightly.toml [default: warehouse data, "
        "latest model (trained if none), default settings]",
    ),
    run_date: str = typer.Option(
        None, "--run-date", help="YYYY-MM-DD; run id nightly-<date>; rerun replaces it [default: today, UTC]"
    ),
    full_refresh: bool = typer.Option(
        False,
        "--full-refresh",
        help="Rebuild every feature table and rescore every user (default: only what new data changes; "
        "same result)",
    ),
    backfill: bool = typer.Option(
        False,
        "--backfill",
        help="Reproduce --run-date's run from the batches ingested by the end of that date (UTC) and the "
        "model current then (no ingest, no training)",
    ),
    quiet: bool = typer.Option(
        False,
        "--quiet",
        "-q",
        help="Print nothing on success; log to the run's log file only (cron mails only failures)",
    ),
    as_json: Json = False,
) -> None:
    """ingest -> build-features -> train (per policy) -> score -> evaluate -> publish. 0 = success."""
    config = JobConfig.load(job) if job else None
    if backfill and run_date is None:
        raise UserError("--backfill needs --run-date (the date whose run to reproduce)")
    report = api.nightly(
        warehouse_of(ctx),
        config,
        _run_date(run_date),
        echo=not (quiet or as_json),
        full_refresh=full_refresh,
        backfill=backfill,
    )
    if as_json:
        print_json(report.as_dict())
        return
    if quiet:
        return
    for step in report.steps:
        rows = f", {step.rows:,} rows" if step.rows is not None else ""
        typer.echo(f"{step.step:<9} {step.status:<8} {step.seconds:7.1f}s{rows}")
    typer.echo(
        f"nightly {report.run_id}: {report.status} in {report.seconds:.1f}s (model {report.model_run_id}; "
        f"log {report.log_path})"
    )
    typer.echo(f"report: {report.report_path or 'not written (see the log)'}")


@app.command("demo")
def demo_command(
    ctx: typer.Context,
    users: int = typer.Option(2000, "--users", min=10, help="Synthetic users"),
    items: int = typer.Option(1000, "--items", min=10, help="Synthetic items"),
    events: int = typer.Option(60_000, "--events", min=100, help="Synthetic events"),
    model: str = typer.Option("sasrec", "--model", help="dssm, youtubednn, gru4rec or sasrec"),
    epochs: int = typer.Option(
        5, "--epochs", min=1, help="Training epochs (small: the demo takes well under a minute)"
    ),
    k: int = typer.Option(20, "--k", min=1, help="Recommendations per user"),
    seed: int = typer.Option(0, "--seed", help="Data and training seed"),
    as_json: Json = False,
) -> None:
    """Synthetic data end to end on this warehouse: generate, ingest, build, train, nightly; print results."""

    err = Console(stderr=True)
    report = api.demo(
        warehouse_of(ctx, create=True),
        n_users=users,
        n_items=items,
        n_events=events,
        model=model,
        epochs=epochs,
        k=k,
        seed=seed,
        progress=None if as_json else (lambda msg: err.print(f"[bold]demo[/] {msg}")),
    )
    if as_json:
        print_json(
            {
                "nightly": report.nightly.as_dict(),
                "metrics": report.metrics,
                "sample": report.sample,
                "seconds": report.seconds,
            }
        )
        return
    console = Console()
    model_id = report.nightly.model_run_id
    table = Table(title=f"test split, run {report.nightly.run_id} (model = {model_id})")
    for name in ("model", "index", "k", "recall@k", "ndcg@k", "mrr@k", "annoy_recall@k"):
        table.add_column(name, justify="left" if name in ("model", "index") else "right")
    for m in report.metrics:
        label = "model" if m["model_run_id"] == model_id else m["model_run_id"]
        cells = [m.get(x) for x in ("recall", "ndcg", "mrr", "annoy_recall")]
        table.add_row(label, m["index"], str(m["k"]), *["" if v is None else f"{v:.4f}" for v in cells])
    console.print(table)
    console.print("sample recommendations (top 5 of 2 users):")
    for row in report.sample:
        console.print(f"  user {row['user_id']}  #{row['rank']}  item {row['item_id']}  score {row['score']}")
    wh = warehouse_of(ctx, create=True)
    console.print(
        f"done in {report.seconds:.0f}s. Query the results: rechub-store --warehouse {wh.path} sql "
        '"SELECT * FROM recommendations LIMIT 10"  (or duckdb -readonly '
        f"{wh.analytics_path})"
    )
    typer.echo(f"report: {report.nightly.report_path or 'not written (see the log)'}")
