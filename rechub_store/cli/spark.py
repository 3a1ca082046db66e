"""CLI glue for `--engine spark` (build-features, score): shared options and the calls into
`rechub_store.spark`. PySpark is imported only when a command asks for the Spark engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rechub_store.errors import UserError
from rechub_store.spark.lake import export_raw
from rechub_store.warehouse import Warehouse

ENGINES = ("duckdb", "spark")


def check_engine(engine: str, lake: Path | None, needs_lake: bool = True) -> bool:
    """True for spark; a one-line error for an unknown engine, a missing --lake or a missing extra."""
    if engine not in ENGINES:
        raise UserError(f"--engine: expected duckdb or spark, got {engine!r}")
    if engine == "spark" and needs_lake and lake is None:
        raise UserError("--engine spark needs --lake DIR (where raw batches and feature tables live)")
    if engine == "spark":
        missing = [name for name in ("pyspark", "sqlglot") if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(
                "--engine spark needs the spark extra: pip install 'rechub-store[spark]' "
                f"({missing[0]} is missing)"
            )
    return engine == "spark"


def sync_lake(warehouse: Warehouse, lake: Path) -> list[int]:
    """Export the warehouse's raw batches the lake lacks (none when there is no warehouse)."""
    if not warehouse.exists():
        return []
    with warehouse.session(read_only=True) as con:
        return export_raw(con, lake)


def build_on_spark(warehouse: Warehouse, lake: Path, master: str | None, params, as_json: bool) -> dict:
    from rechub_store.spark import engine, session  # PySpark loads only for --engine spark

    exported = sync_lake(warehouse, lake)
    with Console(stderr=True).status("build-features on Spark ...", spinner="dots"):
        result = engine.build_features_spark(
            session.spark_session(master, threads=warehouse.threads),
            lake,
            params,
            user_dir=warehouse.user_sql_dir,
        )
    report = {**result.to_dict(), "exported_batches": exported}
    if not as_json:
        table = Table(title=f"spark build {result.build_id} -> {lake}")
        for col in ("table", "rows", "files", "seconds"):
            table.add_column(col, justify="left" if col == "table" else "right")
        for m in result.models:
            table.add_row(m["model"], f"{m['rows']:,}", str(m["files"]), f"{m['seconds']:.2f}")
        console = Console()
        console.print(table)
        console.print(
            f"audits passed: {', '.join(result.audits)}; published in {lake}/features/_manifest.json"
        )
        console.print(f"built in {result.seconds:.2f} s")
    return report


def score_on_spark(
    warehouse: Warehouse, master: str | None, lake: Path | None, *, model_run_id, run_id, **options
):
    """`score --engine spark`: the driver's part in the warehouse, the search on Spark."""
    from rechub_store.spark import scoring, session  # PySpark loads only for --engine spark

    spark = session.spark_session(master, threads=warehouse.threads)
    work_dir = lake / "scratch" if lake is not None else warehouse.tmp_dir
    with warehouse.session() as con:
        return scoring.score_model_run(spark, con, model_run_id, run_id, work_dir=work_dir, **options)
