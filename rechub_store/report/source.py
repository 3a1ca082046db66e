"""Where a report reads from: the warehouse, or the published analytics file when the warehouse is busy.

The report's queries (`report/sql/*.sql`) read a fixed set of temporary views, `rpt_*`, that this
module points at the real tables of one database: the warehouse (`meta.*`, `raw.*`, `features.*`,
the job's working copy of the results) or `analytics.duckdb` (the published copy, which a running
nightly job never locks). A table that is absent there becomes an empty view with the same columns,
and is listed in `Source.missing` so the page can say why a section is empty. Temporary views live
in the connection only: nothing is written to either database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from rechub_store.errors import UserError
from rechub_store.warehouse import Warehouse, table_exists

# Empty stand-ins (the columns the queries read), used when a table does not exist.
_EMPTY = {
    "rpt_job_runs": "SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS job, NULL::VARCHAR AS step, "
    "NULL::VARCHAR AS status, NULL::TIMESTAMP AS started_at, NULL::TIMESTAMP AS finished_at, "
    "NULL::DOUBLE AS seconds, NULL::BIGINT AS rows, NULL::JSON AS details, NULL::VARCHAR AS error",
    "rpt_model_runs": "SELECT NULL::VARCHAR AS model_run_id, NULL::VARCHAR AS model, "
    "NULL::VARCHAR AS status, NULL::JSON AS params, NULL::VARCHAR AS build_id, NULL::JSON AS history, "
    "NULL::INTEGER AS best_epoch, "
    "NULL::DOUBLE AS best_metric, NULL::VARCHAR AS artifact_path, NULL::DOUBLE AS wall_seconds, "
    "NULL::TIMESTAMP AS created_at, NULL::TIMESTAMP AS finished_at",
    "rpt_metrics": "SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS model_run_id, NULL::VARCHAR AS split, "
    "NULL::VARCHAR AS metric, NULL::INTEGER AS k, NULL::DOUBLE AS value, NULL::BIGINT AS n_users, "
    'NULL::VARCHAR AS "index", NULL::TIMESTAMP AS created_at',
    "rpt_recs": "SELECT NULL::VARCHAR AS user_id, NULL::VARCHAR AS item_id, NULL::INTEGER AS rank, "
    "NULL::VARCHAR AS run_id",
    "rpt_items": "SELECT NULL::INTEGER AS code, NULL::VARCHAR AS item_id, NULL::BIGINT AS n_train, "
    "NULL::BIGINT AS n_events",
    "rpt_item_attributes": "SELECT NULL::VARCHAR AS item_id, NULL::VARCHAR AS name, NULL::VARCHAR AS value",
    "rpt_item_tags": "SELECT NULL::VARCHAR AS item_id, NULL::VARCHAR AS tag",
    "rpt_batches": "SELECT NULL::VARCHAR AS batch_id, NULL::INTEGER AS batch_seq, NULL::VARCHAR AS kind, "
    "NULL::VARCHAR AS path, NULL::BIGINT AS rows_read, NULL::BIGINT AS rows_accepted, "
    "NULL::BIGINT AS rows_rejected, NULL::TIMESTAMP AS ingested_at",
    "rpt_rejects": "SELECT NULL::VARCHAR AS batch_id, NULL::VARCHAR AS path, NULL::BIGINT AS line, "
    "NULL::VARCHAR AS raw, NULL::VARCHAR AS reason",
    "rpt_builds": "SELECT NULL::VARCHAR AS build_id, NULL::TIMESTAMP AS started_at, "
    "NULL::TIMESTAMP AS finished_at, NULL::VARCHAR AS status, NULL::JSON AS models, NULL::JSON AS report",
}

# view -> (tables that must exist, the view's SELECT), per origin
_WAREHOUSE = {
    "rpt_job_runs": (["meta.job_runs"], "SELECT * FROM meta.job_runs"),
    "rpt_model_runs": (["meta.model_runs"], "SELECT * FROM meta.model_runs"),
    "rpt_metrics": (["main.evaluation_metrics"], "SELECT * FROM main.evaluation_metrics"),
    "rpt_recs": (["main.recommendations_history"], "SELECT * FROM main.recommendations_history"),
    "rpt_items": (
        ["features.vocab_item_id", "features.item_popularity"],
        "SELECT v.code, v.value AS item_id, p.n_train, p.n_events FROM features.vocab_item_id v "
        "LEFT JOIN features.item_popularity p ON p.item_code = v.code",
    ),
    "rpt_item_attributes": (
        ["staging.item_attributes"],
        "SELECT item_id, name, value FROM staging.item_attributes",
    ),
    "rpt_item_tags": (["raw.item_tags"], "SELECT DISTINCT item_id, tag FROM raw.item_tags"),
    "rpt_batches": (["raw.batches"], "SELECT * FROM raw.batches"),
    "rpt_rejects": (["raw.rejects"], "SELECT * FROM raw.rejects"),
    "rpt_builds": (["meta.builds"], "SELECT * FROM meta.builds"),
}
_ANALYTICS = {
    "rpt_job_runs": (["main.job_runs"], "SELECT * FROM main.job_runs"),
    "rpt_model_runs": (["main.model_runs"], "SELECT * FROM main.model_runs"),
    "rpt_metrics": (["main.evaluation_metrics"], "SELECT * FROM main.evaluation_metrics"),
    "rpt_recs": (["main.recommendations_history"], "SELECT * FROM main.recommendations_history"),
    "rpt_items": (
        ["main.items"],
        "SELECT NULL::INTEGER AS code, item_id, n_train, n_events FROM main.items",
    ),
    "rpt_item_attributes": (
        ["main.item_attributes"],
        "SELECT item_id, name, value FROM main.item_attributes",
    ),
    "rpt_item_tags": (["main.item_tags"], "SELECT item_id, tag FROM main.item_tags"),
}


@dataclass
class Source:
    """An open connection with the `rpt_*` views in place, and what they could not find."""

    con: duckdb.DuckDBPyConnection
    origin: str  # "warehouse" | "analytics"
    path: Path
    warehouse: Warehouse
    missing: set[str] = field(default_factory=set)  # views that are empty stand-ins
    note: str | None = None  # shown on the page (e.g. why the analytics file was read)

    def has(self, view: str) -> bool:
        return view not in self.missing


def create_views(con: duckdb.DuckDBPyConnection, origin: str) -> set[str]:
    """Point the `rpt_*` temporary views at `origin`'s tables; returns the views left empty."""
    mapping = _WAREHOUSE if origin == "warehouse" else _ANALYTICS
    missing: set[str] = set()
    for view, empty in _EMPTY.items():
        needs, select = mapping.get(view, ([], ""))
        if not select or not all(table_exists(con, t) for t in needs):
            select = f"{empty} WHERE false"
            missing.add(view)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {select}")
    return missing


def drop_views(con: duckdb.DuckDBPyConnection) -> None:
    for view in _EMPTY:
        with contextlib.suppress(duckdb.Error):
            con.execute(f"DROP VIEW IF EXISTS temp.{view}")


@contextlib.contextmanager
def attach(con: duckdb.DuckDBPyConnection, warehouse: Warehouse) -> Iterator[Source]:
    """Views over an already open warehouse connection (the nightly job's own)."""
    missing = create_views(con, "warehouse")
    try:
        yield Source(con, "warehouse", warehouse.path, warehouse, missing)
    finally:
        drop_views(con)


@contextlib.contextmanager
def open_source(warehouse: Warehouse) -> Iterator[Source]:
    """Open the warehouse read-only; while a job holds it, fall back to the published analytics file."""
    note = None
    try:
        con = warehouse.connect(read_only=True)
        origin, path = "warehouse", warehouse.path
    except UserError as exc:
        if not warehouse.analytics_path.exists():
            raise
        try:
            con = duckdb.connect(str(warehouse.analytics_path), read_only=True)
        except duckdb.Error as exc2:
            raise UserError(
                f"cannot read {warehouse.path} ({exc}) nor {warehouse.analytics_path}: "
                f"{str(exc2).splitlines()[0]}"
            ) from None
        origin, path = "analytics", warehouse.analytics_path
        note = (
            f"Built from the published {path.name} because the warehouse could not be opened ({exc}); "
            "ingest batches, rejects and feature builds are only in the warehouse."
        )
    try:
        missing = create_views(con, origin)
        yield Source(con, origin, path, warehouse, missing, note)
    finally:
        con.close()
