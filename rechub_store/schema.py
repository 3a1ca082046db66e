"""The one schema source for the bookkeeping (`meta.*`) and result tables: columns, types, keys and
what each column means. The DuckDB DDL (`Warehouse.connect`, `results.tables`), the server tables
of `publish.server` (SQLAlchemy) and the column lists are all derived from it.

Types are logical: `id` (raw ids and run ids: text compared byte-wise on a server), `text`, `int`,
`bigint`, `double`, `timestamp` (UTC by convention), `json`. `nullable=False` marks columns that
are never NULL once published (enforced by the server tables). `key` is the table's unique key;
the warehouse enforces it only where `warehouse_key` is set (the others are replaced run by run).
"""

from __future__ import annotations

from dataclasses import dataclass

DUCKDB_TYPES = {
    "id": "VARCHAR",
    "text": "VARCHAR",
    "int": "INTEGER",
    "bigint": "BIGINT",
    "double": "DOUBLE",
    "timestamp": "TIMESTAMP",
    "json": "JSON",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True
    comment: str = ""


@dataclass(frozen=True)
class Table:
    schema: str  # in the warehouse (`main` for result tables)
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    warehouse_key: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def ddl(self) -> str:
        """`CREATE TABLE IF NOT EXISTS` for the warehouse (DuckDB), the comments kept."""
        inline = self.key[0] if self.warehouse_key and len(self.key) == 1 else None
        parts = [
            (f'"{c.name}" {DUCKDB_TYPES[c.type]}' + (" PRIMARY KEY" if c.name == inline else ""), c.comment)
            for c in self.columns
        ]
        if self.warehouse_key and inline is None:
            parts.append((f"PRIMARY KEY ({', '.join(self.key)})", ""))
        lines = [
            f"    {text}{',' if i < len(parts) - 1 else ''}" + (f"  -- {comment}" if comment else "")
            for i, (text, comment) in enumerate(parts)
        ]
        return f"CREATE TABLE IF NOT EXISTS {self.qualified} (\n" + "\n".join(lines) + "\n);"


_RECOMMENDATION_COLUMNS = (
    Column("user_id", "id", nullable=False, comment="raw id"),
    Column("item_id", "id", nullable=False, comment="raw id"),
    Column("rank", "int", nullable=False, comment="1..k"),
    Column("score", "double"),
    Column("run_id", "id", nullable=False),
    Column("model_run_id", "id"),
    Column("generated_at", "timestamp"),
)

RECOMMENDATIONS = Table("main", "recommendations", _RECOMMENDATION_COLUMNS, key=("user_id", "rank"))
RECOMMENDATIONS_HISTORY = Table(
    "main", "recommendations_history", _RECOMMENDATION_COLUMNS, key=("run_id", "user_id", "rank")
)
EVALUATION_METRICS = Table(
    "main",
    "evaluation_metrics",
    (
        Column("run_id", "text", nullable=False),
        Column("model_run_id", "text", nullable=False, comment="a model run, or a baseline's name"),
        Column("split", "text", nullable=False, comment="test | valid | production"),
        Column("metric", "text", nullable=False),
        Column("k", "int", nullable=False),
        Column("value", "double"),
        Column("n_users", "bigint"),
        Column("index", "text", nullable=False, comment="annoy | exact"),
        Column("created_at", "timestamp"),
        # the evaluation protocol (ranking.protocol); `legacy` = rows from before it was recorded
        Column("seen_filter", "text", comment="except-target | all | none | legacy"),
        Column("slice", "text", nullable=False, comment="all | cold | active | head | tail | repeat | new"),
        Column("n_repeat_targets", "bigint"),
    ),
    key=("run_id", "model_run_id", "split", "slice", "metric", "k", "index"),
)
EVALUATION_LISTS = Table(
    "main",
    "evaluation_lists",
    (
        Column("run_id", "text"),
        Column("source", "text", comment="model or a baseline's name"),
        Column("model_run_id", "text"),
        Column("index", "text"),
        Column("user_code", "int"),
        Column("rank", "int"),
        Column("item_code", "int"),
        Column("score", "double"),
        Column("created_at", "timestamp"),
    ),
)
BUILDS = Table(
    "meta",
    "builds",
    (
        Column("build_id", "text", nullable=False),
        Column("started_at", "timestamp"),
        Column("finished_at", "timestamp"),
        Column("status", "text", comment="running | success | failed"),
        Column("params", "json", comment="build parameters (max_seq_len, min_seq_len, neg_mode, ...)"),
        Column("models", "json", comment="per model: rows, seconds"),
        Column("report", "json", comment="users dropped, sample counts, ..."),
        Column("error", "text"),
    ),
    key=("build_id",),
    warehouse_key=True,
)
MODEL_RUNS = Table(
    "meta",
    "model_runs",
    (
        Column("model_run_id", "text", nullable=False),
        Column("model", "text"),
        Column("status", "text", comment="running | success | failed"),
        Column("params", "json"),
        Column("build_id", "text"),
        Column("vocab_sizes", "json"),
        Column("history", "json", comment="per epoch: train loss, validation metrics"),
        Column("best_epoch", "int"),
        Column("best_metric", "double", comment="validation NDCG@10 of the best epoch"),
        Column("artifact_path", "text"),
        Column("wall_seconds", "double"),
        Column("created_at", "timestamp"),
        Column("finished_at", "timestamp"),
        Column("error", "text"),
    ),
    key=("model_run_id",),
    warehouse_key=True,
)
JOB_RUNS = Table(
    "meta",
    "job_runs",
    (
        Column("run_id", "text", nullable=False),
        Column("job", "text"),
        Column("step", "text", comment="whole | ingest | build | train | score | evaluate | publish"),
        Column("status", "text", comment="running | success | failed | skipped"),
        Column("started_at", "timestamp"),
        Column("finished_at", "timestamp"),
        Column("seconds", "double"),
        Column("rows", "bigint"),
        Column("details", "json"),
        Column("error", "text"),
    ),
)

META = (BUILDS, MODEL_RUNS, JOB_RUNS)  # the warehouse's bookkeeping
RESULTS = (RECOMMENDATIONS, RECOMMENDATIONS_HISTORY, EVALUATION_METRICS, EVALUATION_LISTS)  # working copy


def ddl(tables: tuple[Table, ...]) -> str:
    return "\n".join(t.ddl() for t in tables) + "\n"
