"""CLI commands: score, evaluate, sql, status (parse options, call one core function, print)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from rechub_store import api
from rechub_store.cli.app import app, parse_int_list, print_json, warehouse_of
from rechub_store.cli.options import Engine, Json, RunId, SparkMaster, settings_from
from rechub_store.cli.spark import check_engine, score_on_spark
from rechub_store.config import (
    BASELINE_NAMES,
    INDEXES,
    SEEN_FILTERS,
    SLICES,
    AnnoySettings,
    as_choice,
)
from rechub_store.jobs.config import EvaluateSettings

INDEX_HELP = "annoy (approximate, auto-tuned to recall 0.95 vs exact) or exact (brute force)"
SCORE_INDEX_HELP = INDEX_HELP + ", or auto (whichever scores a sample of this run's users faster)"


def _print_rows(title: str, names: list[str], rows: list, console: Console | None = None) -> None:
    table = Table(title=title)
    for name in names:
        table.add_column(str(name))
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    (console or Console()).print(table)


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


ACCURACY = ["recall", "hit", "ndcg", "mrr", "precision", "annoy_recall"]
BEYOND = ["coverage", "gini", "popularity_percentile", "novelty", "diversity", "personalisation", "overlap"]


def print_metrics(rows: list[dict], title: str) -> None:
    """The metrics tables: one line per (model run, split, index, slice, k), metrics as columns;
    accuracy and beyond-accuracy (split `production`) apart."""
    for part, metrics in ((" accuracy", ACCURACY), (" beyond accuracy", BEYOND)):
        chosen = [r for r in rows if any(m in r for m in metrics)]
        if not chosen:
            continue
        shown = [m for m in metrics if any(m in r for r in chosen)]
        names = ["model_run_id", "split", "index", "slice", "k", *shown, "n_users"]
        _print_rows(title + part, names, [[r.get(n) for n in names] for r in chosen])


@app.command("score")
def score_command(
    ctx: typer.Context,
    model_run: str = typer.Option(
        None, "--model-run", help="Model run to score with [default: latest successful]"
    ),
    k: int = typer.Option(100, "--k", min=1, help="Recommendations per user"),
    index: str = typer.Option("annoy", "--index", help=SCORE_INDEX_HELP),
    run_id: RunId = None,
    target_recall: float = typer.Option(
        0.95, "--target-recall", help="annoy auto-tuning target (recall@k vs exact)"
    ),
    keep_runs: int = typer.Option(30, "--keep-runs", min=1, help="Runs kept in recommendations_history"),
    exclude_seen: bool = typer.Option(
        True,
        "--exclude-seen/--include-seen",
        help="Remove items the user interacted with (--include-seen: re-consumption domains)",
    ),
    engine: Engine = "duckdb",
    spark_master: SparkMaster = None,
    lake: Path = typer.Option(
        None,
        "--lake",
        envvar="RECHUB_LAKE",
        help="--engine spark: job files go to <lake>/scratch [env RECHUB_LAKE]",
    ),
    as_json: Json = False,
) -> None:
    """Write every user's top-k items to the warehouse's `recommendations` (working copy).

    With --engine spark the top-k search runs as a Spark job over user partitions (same results).
    """
    options = dict(
        model_run_id=model_run,
        run_id=run_id,
        k=k,
        index=as_choice(index, "--index", (*INDEXES, "auto")),
        annoy_settings=AnnoySettings(target_recall=target_recall),
        keep_runs=keep_runs,
        exclude_seen=exclude_seen,
    )
    if check_engine(engine, lake, needs_lake=False):
        report = score_on_spark(warehouse_of(ctx), spark_master, lake, **options)
    else:
        report = api.score(warehouse_of(ctx), **options)
    if as_json:
        print_json(report.as_dict())
        return
    typer.echo(
        f"run {report.run_id}: {report.rows:,} recommendations for {report.users:,} users "
        f"(model {report.model_run_id}, {report.index}, k={report.k}) in {report.seconds:.1f}s"
    )
    if report.annoy:
        a = report.annoy
        typer.echo(
            f"annoy: {a['metric']}, n_trees={a['n_trees']}, search_k={a['search_k']} (for k={a['tuned_k']}), "
            f"recall@{a['measured_k']} vs exact this run {a['measured_recall']:.4f} "
            f"(at tuning: recall@{a['tuned_k']} {a['recall']:.4f}, target {a['target_recall']})"
        )
    if report.auto:
        c = report.auto
        annoy = c["annoy_users_per_second"]
        annoy_rate = "annoy not timed" if annoy is None else f"annoy {annoy:,.0f} users/s"
        typer.echo(
            f"index auto: {c['index']} ({c['reason']}; exact {c['exact_users_per_second']:,.0f} users/s, "
            f"{annoy_rate} on {c['sample_users']:,} sampled users)"
        )
    typer.echo(
        "publish to analysts with `rechub-store nightly` (or copy to a server with `rechub-store publish`)"
    )


@app.command("evaluate")
def evaluate_command(
    ctx: typer.Context,
    model_run: str = typer.Option(
        None, "--model-run", help="Model run to evaluate [default: latest successful]"
    ),
    k: str = typer.Option("10,20,50", "--k", help="Cut-offs, comma-separated"),
    index: str = typer.Option(None, "--index", help=INDEX_HELP + " [default: both, plus annoy_recall]"),
    split: str = typer.Option("test", "--split", help="test, valid, or test,valid"),
    run_id: RunId = None,
    seen_filter: str = typer.Option(
        "except-target",
        "--seen-filter",
        help=f"What is removed from the ranking before the target is ranked: {' | '.join(SEEN_FILTERS)}",
    ),
    baselines: str = typer.Option(
        ",".join(BASELINE_NAMES),
        "--baselines",
        help="Baselines beside the model, comma-separated ('' = none)",
    ),
    popularity: bool = typer.Option(
        True, "--popularity/--no-popularity", help="--no-popularity: leave popularity out of --baselines"
    ),
    max_users: int = typer.Option(
        None,
        "--max-users",
        min=1,
        help="Evaluate a seeded sample of this many users per split [default: all]",
    ),
    list_users: int = typer.Option(
        10_000, "--list-users", min=0, help="Users whose lists get beyond-accuracy metrics (0 = none)"
    ),
    exclude_seen: bool = typer.Option(
        True, "--exclude-seen/--include-seen", help="The production rule of those lists (as `score`)"
    ),
    slices: bool = typer.Option(False, "--slices", help="Print every slice, not only `all`"),
    as_json: Json = False,
) -> None:
    """Leave-one-out Recall/Hit/NDCG/MRR/Precision@k (and beyond-accuracy metrics of production lists)
    into the warehouse's `evaluation_metrics`, with every baseline beside the model."""
    settings = settings_from(
        ctx,
        EvaluateSettings,
        renamed={"ks": "k", "splits": "split", "indexes": "index"},
        ks=parse_int_list(k, "--k"),
        splits=[s.strip() for s in split.split(",") if s.strip()],
        indexes=[index] if index else list(INDEXES),
        baselines=[b.strip() for b in baselines.split(",") if b.strip()],
    )
    report = api.evaluate(
        warehouse_of(ctx),
        model_run_id=model_run,
        run_id=run_id,
        ks=list(settings.ks),
        splits=list(settings.splits),
        indexes=list(settings.indexes),
        baselines=list(settings.baselines),
        seen_filter=settings.seen_filter,
        max_users=settings.max_users,
        list_users=settings.list_users,
        exclude_seen=exclude_seen,
    )
    if as_json:
        print_json(report.as_dict())
        return
    title = f"evaluation {report.run_id}, seen filter {report.seen_filter} ({report.seconds:.1f}s)"
    print_metrics(report.table(SLICES if slices else ("all",)), title)


@app.command("sql")
def sql_command(
    ctx: typer.Context,
    query: str = typer.Argument(..., help='Read-only SQL, e.g. "SELECT * FROM evaluation_metrics"'),
    limit: int = typer.Option(1000, "--limit", min=1, help="Rows to print at most"),
    as_json: Json = False,
) -> None:
    """Query the published analytics database read-only (the warehouse if nothing is published yet)."""
    names, rows, path = api.query(warehouse_of(ctx, analytics_ok=True), query, limit=limit)
    if as_json:
        print_json([dict(zip(names, row, strict=True)) for row in rows])
        return
    _print_rows(path, names, rows)


@app.command("status")
def status_command(ctx: typer.Context, as_json: Json = False) -> None:
    """Last nightly runs, the latest model run, the published run, and whether a job is running now."""
    status = api.status(warehouse_of(ctx, analytics_ok=True))
    if as_json:
        print_json(status)
        return
    console = Console()
    lock = status["lock"]
    if lock:
        state = "STALE (process gone; the next run recovers it)" if lock["stale"] else "running"
        console.print(
            f"nightly lock: {state}: pid {lock.get('pid')} on {lock.get('host')}, run {lock.get('run_id')}, "
            f"since {lock.get('started_at')}"
        )
    else:
        console.print("nightly lock: free")
    pub = status["published"]
    console.print(
        f"published: {pub['run_id']} (model {pub['model_run_id']}, at {pub['published_at']})"
        if pub
        else "published: nothing yet"
    )
    model = status["latest_model_run"]
    console.print(
        f"latest model run: {model['model_run_id']} ({model['model']}, finished {model['finished_at']})"
        if model
        else "latest model run: none"
    )
    for note in status.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    if status["job_runs"]:
        names = list(status["job_runs"][0].keys())
        _print_rows(
            f"job runs (from {status['source']})",
            names,
            [list(r.values()) for r in status["job_runs"]],
            console,
        )
