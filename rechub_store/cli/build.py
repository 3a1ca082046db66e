"""CLI: `rechub-store build-features` (parse options, call `build_features`, print the report)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rechub_store import api
from rechub_store.cli.app import app, print_json, warehouse_of
from rechub_store.cli.options import Engine, Json, Lake, SparkMaster, settings_from
from rechub_store.cli.spark import build_on_spark, check_engine
from rechub_store.config import NEG_MODES, NEG_SAMPLERS
from rechub_store.data.build import BuildParams, BuildReport
from rechub_store.errors import UserError

_DEFAULTS = BuildParams()


@app.command("build-features")
def build_features_command(
    ctx: typer.Context,
    max_seq_len: int = typer.Option(_DEFAULTS.max_seq_len, help="History window: most recent items kept."),
    min_seq_len: int = typer.Option(_DEFAULTS.min_seq_len, help="Users with fewer events leave the splits."),
    min_rating: float = typer.Option(None, help="Keep only events with rating >= this (implicit feedback)."),
    k_core: int = typer.Option(
        _DEFAULTS.k_core, help="Keep users and items with >= K events (iterated); 0 = off."
    ),
    validation: bool = typer.Option(
        _DEFAULTS.validation,
        "--validation/--no-validation",
        help="Hold out the second-to-last event per user.",
    ),
    neg_mode: str = typer.Option(
        _DEFAULTS.neg_mode, help=f"Negative sampling mode: {' | '.join(NEG_MODES)}."
    ),
    neg_ratio: int = typer.Option(_DEFAULTS.neg_ratio, help="Negatives per training sample (pairwise: 1)."),
    neg_sampler: str = typer.Option(
        _DEFAULTS.neg_sampler, help=f"Negative distribution: {' | '.join(NEG_SAMPLERS)} (popularity^alpha)."
    ),
    neg_alpha: float = typer.Option(_DEFAULTS.neg_alpha, help="Popularity exponent of the sampler."),
    neg_refresh_drift: float = typer.Option(
        _DEFAULTS.neg_refresh_drift,
        help="Refresh the sampler's item distribution when it drifts more than this (total variation) "
        "from the current counts; 0 = always current.",
    ),
    seed: int = typer.Option(_DEFAULTS.seed, help="Seed of the negative sampler."),
    select: str = typer.Option(
        None, "--select", help="Rebuild only this model and the models downstream of it."
    ),
    incremental: bool = typer.Option(
        False,
        "--incremental",
        help="Recompute only what the batches since the last build change (same result); "
        "a full build when parameters or SQL changed.",
    ),
    full_refresh: bool = typer.Option(
        False, "--full-refresh", help="Rebuild every table from all raw batches (the default)."
    ),
    engine: Engine = "duckdb",
    spark_master: SparkMaster = None,
    lake: Lake = None,
    as_json: Json = False,
) -> None:
    """Build the feature store (vocabularies, histories, splits, negatives) from raw.* in DuckDB.

    With --engine spark: the same SQL models on Spark SQL, from the lake's raw Parquet (the
    warehouse's new raw batches are exported there first) to Parquet tables under --lake.
    """
    if incremental and full_refresh:
        raise UserError("--incremental and --full-refresh exclude each other")
    spark = check_engine(engine, lake)
    if spark and (select is not None or incremental):
        raise UserError(
            "--select/--incremental: not available with --engine spark (the Spark build is whole)"
        )
    params = settings_from(ctx, BuildParams)
    console = Console(stderr=True)
    if spark:
        report = build_on_spark(ctx.find_root().obj, lake, spark_master, params, as_json)
        if as_json:
            print_json(report)
        return
    warehouse = warehouse_of(ctx)
    if as_json:
        report = api.build(warehouse, params, select=select, incremental=incremental)
    else:
        with Progress(
            TextColumn("[bold]build-features[/] {task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("", total=None)

            def progress(step: str, done: int, total: int) -> None:
                bar.update(task, description=step, completed=done, total=total)

            report = api.build(warehouse, params, select=select, progress=progress, incremental=incremental)
    if as_json:
        print_json(report.to_dict())
    else:
        _print_report(report)


def _print_report(report: BuildReport) -> None:
    console = Console()
    table = Table(
        title=f"build {report.build_id}" + (f" (--select {report.select})" if report.select else "")
    )
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("mode")
    for m in report.models:
        name = f"{m.model} (user)" if m.source == "user" else m.model
        table.add_row(name, f"{m.rows:,}", f"{m.seconds:.2f}", m.mode)
    console.print(table)
    console.print(f"{report.mode} build ({report.mode_reason}), raw batches up to {report.upto_batch_seq}")
    split = report.split
    if split:
        console.print(
            f"users: {split.get('users_total', 0):,} total, {split.get('users_kept', 0):,} kept, "
            f"{report.users_dropped_short:,} dropped (fewer than {report.params['min_seq_len']} events)"
        )
        s = report.samples
        console.print(
            f"samples: train {s['train']:,}, valid {s['valid']:,}, test {s['test']:,}; "
            f"negatives {split.get('negatives_train', 0):,}"
            + (
                f" ({split['train_samples_short_of_negatives']:,} training samples short of negatives)"
                if split.get("train_samples_short_of_negatives")
                else ""
            )
        )
    if split and not split.get("events"):
        console.print(
            "[yellow]no events left after the rating threshold / k-core filter: the feature store is empty[/]"
        )
    if report.skipped_views:
        console.print(
            f"[yellow]no vocab view for attribute names that are not identifiers:[/] {report.skipped_views}"
        )
    console.print(f"built in {report.seconds:.2f} s")
