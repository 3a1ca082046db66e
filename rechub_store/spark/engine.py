"""`build-features --engine spark`: the `sql/` models on Spark SQL, from the lake's raw Parquet to a
published set of feature tables.

The same model files, discovery and dependency order as the DuckDB runner
(`rechub_store.data.sqlmodels`); each model is translated by `dialect` and run step by step. Every
table is written under `features/builds/<build_id>/` (tables with a `user_code` column hash-
partitioned by it into one file per partition), then the audits run over the new tables, and only
if all pass does the lake's manifest switch to the build. A failed model or audit leaves the
published build untouched. Stable vocabularies read the published build's tables, as the DuckDB
runner reads its live tables.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlglot import exp

from rechub_store.data import sqlmodels
from rechub_store.data.build import BuildParams
from rechub_store.data.incremental import FULL_BUILD_VARIABLES
from rechub_store.errors import UserError
from rechub_store.paths import SQL_DIR
from rechub_store.spark import dialect, lake, manifest
from rechub_store.spark.session import sql_path

MAX_ROUNDS = 10_000  # iterations of a recursive CTE before the build gives up


@dataclass
class SparkBuild:
    """What `build_features_spark` did: the published build and its tables."""

    build_id: str
    lake: str
    models: list[dict[str, Any]] = field(default_factory=list)  # model, rows, seconds, files
    audits: dict[str, int] = field(default_factory=dict)
    split_report: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    raw_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": "spark",
            "build_id": self.build_id,
            "lake": self.lake,
            "raw_batches": self.raw_batches,
            "seconds": self.seconds,
            "models": self.models,
            "audits": self.audits,
            "split_report": self.split_report,
        }


def view_name(table: str) -> str:
    """A Spark temporary view for `schema.table` (temporary views have no schema)."""
    return table.replace(".", "__")


def _spark_type(duckdb_type: str) -> str:
    return exp.DataType.build(duckdb_type, dialect="duckdb").sql("spark")


def _empty(spark, self_columns: str):
    """An empty DataFrame with the columns of a `-- self: (...)` header."""
    cols = [c.strip().split(None, 1) for c in self_columns.strip()[1:-1].split(",")]
    return spark.createDataFrame([], ", ".join(f"{name} {_spark_type(kind)}" for name, kind in cols))


def previous_version(spark, lake_dir: Path, previous: dict | None, model, variables, scratch: Path):
    """A `-- self:` model's published version; before its first build, its seed's rows over the
    published tables the seed reads (when all are there), else an empty table."""
    tables = previous["tables"] if previous else {}
    if model.name in tables:
        return spark.read.parquet(sql_path(manifest.table_path(lake_dir, previous, model.name)))
    reads = sqlmodels.seed_tables(model)
    if model.seed is None or not all(t in tables for t in reads):
        return _empty(spark, model.self_columns)
    views = {}
    for table in reads:
        views[table] = f"seed__{view_name(table)}"
        spark.read.parquet(sql_path(manifest.table_path(lake_dir, previous, table))).createOrReplaceTempView(
            views[table]
        )
    sql = sqlmodels._rewrite(model.seed, sqlmodels._references(model.seed, reads), views)
    return _run_steps(spark, dialect.steps(sql, variables), scratch / f"seed-{model.name}")


def _run_steps(spark, steps: list[dialect.Step], scratch: Path):
    """Run a translated model's steps; returns the DataFrame of its final query."""
    for i, step in enumerate(steps):
        if step.view is None:
            return spark.sql(step.sql)
        if step.recursive_step is not None:
            _iterate(spark, step, scratch / f"{i}-{step.view}")
            continue
        df = spark.sql(step.sql)
        if step.materialize:  # computed once, like DuckDB's AS MATERIALIZED
            path = scratch / f"{i}-{step.view}"
            df.write.mode("overwrite").parquet(sql_path(path))
            df = spark.read.parquet(sql_path(path))
        df.createOrReplaceTempView(step.view)
    raise AssertionError("a model's last step is its query")


def _iterate(spark, step: dialect.Step, folder: Path) -> None:
    """WITH RECURSIVE, as SQL defines it: the anchor, then the step over the previous round's rows
    until a round adds none; the CTE is every round's rows (UNION ALL)."""
    rounds = []
    df = spark.sql(step.sql).toDF(*step.columns)
    for n in range(MAX_ROUNDS):
        path = sql_path(folder / f"round-{n}")
        df.write.mode("overwrite").parquet(path)
        current = spark.read.parquet(path)
        if current.isEmpty():
            break
        rounds.append(current)
        current.createOrReplaceTempView(step.view)
        df = spark.sql(step.recursive_step).toDF(*step.columns)  # type: ignore[arg-type]
    else:
        raise UserError(f"recursive CTE {step.view}: still adding rows after {MAX_ROUNDS} rounds")
    union = rounds[0] if rounds else current
    for more in rounds[1:]:
        union = union.unionByName(more)
    union.createOrReplaceTempView(step.view)


def _rows(path: Path) -> int:
    """Rows of a written table, from the Parquet footers (no Spark job)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in path.glob("*.parquet"))


def _write(df, path: Path, partitions: int) -> int:
    """Write a table; rows with a user_code are hash-partitioned by it (one file per partition),
    other tables keep at most `partitions` files."""
    df = df.repartition(partitions, "user_code") if "user_code" in df.columns else df.coalesce(partitions)
    df.write.mode("errorifexists").parquet(sql_path(path))
    return len(list(path.glob("*.parquet")))


def build_features_spark(
    spark,
    lake_dir: Path | str,
    params: BuildParams | None = None,
    *,
    sql_dir: Path = SQL_DIR,
    user_dir: Path | None = None,
    partitions: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> SparkBuild:
    """Build every model on Spark from `<lake>/raw`, audit, and publish the build in the manifest.

    `partitions`: files per user-partitioned table (default: Spark's default parallelism).
    """
    params = params or BuildParams()
    lake_dir = Path(lake_dir)
    if user_dir is not None:
        user_dir = sqlmodels.user_models_folder(user_dir)
    models = sqlmodels.discover(sql_dir, user_dir)
    todo = sqlmodels.order(models)
    audits = sqlmodels.discover_audits(sql_dir, user_dir)
    raw = lake.raw_tables(lake_dir)
    if "raw.interactions" not in raw:
        raise UserError(f"{lake_dir}: no raw interactions in the lake (ingest with --lake {lake_dir} first)")
    partitions = partitions or spark.sparkContext.defaultParallelism

    with manifest.build_lock(lake_dir):
        return _build(spark, lake_dir, params, models, todo, audits, raw, partitions, progress)


def _build(spark, lake_dir, params, models, todo, audits, raw, partitions, progress) -> SparkBuild:
    started = time.perf_counter()
    variables: Mapping[str, Any] = {
        **params.variables(),
        **FULL_BUILD_VARIABLES,
        "partition": 0,
        "n_partitions": 1,
    }
    previous = manifest.read(lake_dir)
    build_id = f"b{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    out = manifest.build_dir(lake_dir, build_id)
    scratch = lake_dir / "scratch" / build_id
    batches = len(list((lake_dir / "raw" / "batches").glob("*.parquet")))
    result = SparkBuild(build_id, str(lake_dir), raw_batches=batches)

    for fn in dialect.SPARK_FUNCTIONS:
        spark.sql(f"CREATE OR REPLACE TEMPORARY FUNCTION {fn}")
    for table, folder in raw.items():
        spark.read.parquet(sql_path(folder)).createOrReplaceTempView(view_name(table))
    names = [*models, *raw]
    targets = {name: view_name(name) for name in names}
    current = "setup"
    try:
        for i, model in enumerate(todo):
            current = f"model {model.name} ({model.path.name})"
            if progress:
                progress(model.name, i, len(todo))
            t0 = time.perf_counter()
            mine = dict(targets)
            if model.self_columns:  # reads its own published version (stable codes)
                prev_view = f"previous__{view_name(model.name)}"
                before = previous_version(spark, lake_dir, previous, model, variables, scratch)
                before.createOrReplaceTempView(prev_view)
                mine[model.name] = prev_view
            sql = sqlmodels._rewrite(model.sql, sqlmodels._references(model.sql, names), mine)
            df = _run_steps(spark, dialect.steps(sql, variables), scratch / model.name)
            path = out / model.name
            files = _write(df, path, partitions)
            spark.read.parquet(sql_path(path)).createOrReplaceTempView(view_name(model.name))
            result.models.append(
                {
                    "model": model.name,
                    "rows": _rows(path),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "files": files,
                }
            )
        if progress:
            progress("audits", len(todo), len(todo))
        for audit, (path, text) in audits.items():
            current = f"audit {audit} ({path.name})"
            sql = sqlmodels._rewrite(text, sqlmodels._references(text, names), targets)
            bad = _run_steps(spark, dialect.steps(sql, variables), scratch / f"audit-{audit}")
            n = bad.count()
            result.audits[audit] = n
            if n:
                example = bad.limit(1).collect()[0]
                raise UserError(
                    f"audit {audit} failed ({path.name}): {n} rows violate it, e.g. {tuple(example)}"
                )
        if "features.split_report" in models:
            rows = spark.read.parquet(sql_path(out / "features.split_report")).collect()
            result.split_report = {r["name"]: int(r["value"]) for r in rows}
        result.seconds = round(time.perf_counter() - started, 3)
        manifest.publish(
            lake_dir,
            {
                "build_id": build_id,
                "previous_build_id": previous["build_id"] if previous else None,
                "created_at": datetime.now(UTC).isoformat(),
                "engine": "spark",
                "spark_version": spark.version,
                "params": params.to_dict(),
                "tables": {m.name: str((out / m.name).relative_to(lake_dir)) for m in todo},
                "models": result.models,
                "audits": result.audits,
            },
        )
    except UserError:
        manifest.discard(lake_dir, build_id)
        raise
    except Exception as exc:
        manifest.discard(lake_dir, build_id)
        if type(exc).__module__.startswith(("pyspark", "py4j")) or isinstance(exc, dialect.UnportableSQL):
            raise UserError(f"{current} failed on Spark: {str(exc).strip().splitlines()[0]}") from exc
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result
