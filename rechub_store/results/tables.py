"""The job's working copy of the result tables in the warehouse: recommendations (+ history),
evaluation metrics and evaluation lists, and the writers that scoring and evaluation use.

Write-back is columnar: scorers hand numpy code arrays in chunks, they land in a temporary
table through Arrow, and one SQL statement maps codes to raw ids by joining the vocabularies.
Publishing copies these tables out (`publish.analytics`, `publish.server`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from rechub_store.schema import RESULTS, ddl
from rechub_store.warehouse import column_names, table_exists, transaction

log = logging.getLogger(__name__)

RESULTS_DDL = ddl(RESULTS)  # the working copy's tables (`rechub_store.schema`)

RESULT_TABLES = ("recommendations", "recommendations_history", "evaluation_metrics")

# Columns evaluation_metrics gained with the explicit evaluation protocol, and the value rows written
# before it get: `legacy` = the history was removed INCLUDING a repeated target and ties fell in
# torch.topk's order; those rows are not comparable with the others (NULL n_repeat_targets: unknown).
METRIC_COLUMNS_ADDED = (
    ("seen_filter", "VARCHAR", "'legacy'"),
    ("slice", "VARCHAR", "'all'"),
    ("n_repeat_targets", "BIGINT", None),
)
LEGACY_SEEN_FILTER = "legacy"


def utcnow() -> dt.datetime:
    """Naive UTC timestamp (the TIMESTAMP columns are UTC by convention)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def ensure_results_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the result tables; an evaluation_metrics from an older version gains the protocol
    columns (its rows marked `legacy`, see METRIC_COLUMNS_ADDED)."""
    con.execute(RESULTS_DDL)
    have = column_names(con, "main.evaluation_metrics")
    missing = [c for c in METRIC_COLUMNS_ADDED if c[0] not in have]
    if missing:
        with transaction(con):
            for name, kind, old_rows in missing:
                con.execute(f"ALTER TABLE main.evaluation_metrics ADD COLUMN {name} {kind}")
                if old_rows is not None:
                    con.execute(f"UPDATE main.evaluation_metrics SET {name} = {old_rows}")


class RecommendationWriter:
    """Collect top-k code arrays chunk by chunk, then replace the current run in one transaction.

    Memory stays at one chunk of numpy arrays; DuckDB holds the staged codes (spilling to the
    warehouse's tmp folder if needed).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, run_id: str, model_run_id: str) -> None:
        self.con = con
        self.run_id = run_id
        self.model_run_id = model_run_id
        self.rows = 0
        ensure_results_tables(con)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _recs_codes "
            "(user_code INTEGER, item_code INTEGER, rank INTEGER, score FLOAT)"
        )

    def add(self, user_codes: np.ndarray, codes: np.ndarray, scores: np.ndarray) -> int:
        """Stage one chunk: user_codes [U], codes/scores [U, k] best first, 0 = no item (dropped)."""
        n_users, k = codes.shape
        keep = (codes > 0).ravel()
        table = pa.table(
            {
                "user_code": np.repeat(np.asarray(user_codes, dtype=np.int32), k)[keep],
                "item_code": codes.astype(np.int32, copy=False).ravel()[keep],
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n_users)[keep],
                "score": scores.astype(np.float32, copy=False).ravel()[keep],
            }
        )
        self.con.register("_recs_chunk", table)
        try:
            self.con.execute("INSERT INTO _recs_codes SELECT * FROM _recs_chunk")
        finally:
            self.con.unregister("_recs_chunk")
        self.rows += table.num_rows
        return table.num_rows

    def commit(self, keep_runs: int = 30, generated_at: dt.datetime | None = None) -> int:
        """Replace `recommendations` with this run and store it in the history (same run_id replaced)."""
        generated_at = generated_at or utcnow()
        con = self.con
        try:
            with transaction(con):
                con.execute(
                    """
                    CREATE OR REPLACE TABLE main.recommendations AS
                    SELECT u.value AS user_id, i.value AS item_id,
                           r.rank::INTEGER AS rank, r.score::DOUBLE AS score,
                           $run_id::VARCHAR AS run_id, $model_run_id::VARCHAR AS model_run_id,
                           $generated_at::TIMESTAMP AS generated_at
                    FROM _recs_codes r
                    JOIN features.vocab_user_id u ON u.code = r.user_code
                    JOIN features.vocab_item_id i ON i.code = r.item_code
                    """,
                    {"run_id": self.run_id, "model_run_id": self.model_run_id, "generated_at": generated_at},
                )
                con.execute("DELETE FROM main.recommendations_history WHERE run_id = ?", [self.run_id])
                con.execute("INSERT INTO main.recommendations_history SELECT * FROM main.recommendations")
                apply_retention(con, keep_runs)
                (rows,) = con.execute("SELECT count(*) FROM main.recommendations").fetchone()  # type: ignore[misc]
                if rows != self.rows:  # a code without a vocabulary entry would silently vanish in the join
                    raise RuntimeError(
                        f"joined {rows} recommendations but staged {self.rows}: vocabulary mismatch"
                    )
        finally:
            con.execute("DROP TABLE IF EXISTS _recs_codes")
        return int(rows)


def apply_retention(con: duckdb.DuckDBPyConnection, keep_runs: int) -> int:
    """Delete history runs beyond the newest `keep_runs` (by generated_at). Returns runs dropped."""
    old = con.execute(
        """
        SELECT run_id FROM (
            SELECT run_id, row_number() OVER (ORDER BY max(generated_at) DESC, run_id DESC) AS rn
            FROM main.recommendations_history GROUP BY run_id
        ) WHERE rn > ?
        """,
        [keep_runs],
    ).fetchall()
    if old:
        con.execute(
            "DELETE FROM main.recommendations_history WHERE list_contains(?, run_id)", [[r[0] for r in old]]
        )
    return len(old)


def write_metrics(con: duckdb.DuckDBPyConnection, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert metric rows; they replace everything recorded earlier for the same (run, split).

    The unit is the run and split, not the model or index: a rerun of a date that retrained
    (another model run) or evaluates fewer indexes must not leave the old rows beside the new.
    """
    rows = list(rows)
    if not rows:
        return 0
    ensure_results_tables(con)
    created_at = utcnow()
    table = pa.table(
        {
            "run_id": [r["run_id"] for r in rows],
            "model_run_id": [r["model_run_id"] for r in rows],
            "split": [r["split"] for r in rows],
            "metric": [r["metric"] for r in rows],
            "k": pa.array([int(r["k"]) for r in rows], pa.int32()),
            "value": pa.array([float(r["value"]) for r in rows], pa.float64()),
            "n_users": pa.array([int(r["n_users"]) for r in rows], pa.int64()),
            "index": [r["index"] for r in rows],
            "created_at": pa.array([created_at] * len(rows), pa.timestamp("us")),
            "seen_filter": pa.array([r.get("seen_filter") for r in rows], pa.string()),
            "slice": [r.get("slice", "all") for r in rows],
            "n_repeat_targets": pa.array([r.get("n_repeat_targets") for r in rows], pa.int64()),
        }
    )
    keys = sorted({(r["run_id"], r["split"]) for r in rows})
    con.register("_metrics_chunk", table)
    try:
        with transaction(con):
            for run_id, split in keys:
                con.execute(
                    "DELETE FROM main.evaluation_metrics WHERE run_id = ? AND split = ?", [run_id, split]
                )
            con.execute("INSERT INTO main.evaluation_metrics BY NAME SELECT * FROM _metrics_chunk")
    finally:
        con.unregister("_metrics_chunk")
    return len(rows)


LIST_RUNS_KEPT = 3  # evaluation_lists keeps the newest runs (and the previous published one) for churn


def previous_list_run(con: duckdb.DuckDBPyConnection, run_id: str) -> str | None:
    """The run the churn metrics compare `run_id` with: the newest other run with evaluation lists
    that was published by the nightly job (meta.job_runs), else the newest other run with lists."""
    ensure_results_tables(con)
    published = (
        "SELECT DISTINCT run_id FROM meta.job_runs WHERE step = 'publish' AND status = 'success'"
        if table_exists(con, "meta.job_runs")
        else "SELECT NULL::VARCHAR AS run_id WHERE false"
    )
    row = con.execute(
        f"""
        SELECT l.run_id FROM main.evaluation_lists l
        WHERE l.run_id <> ?
        GROUP BY l.run_id
        ORDER BY bool_or(l.run_id IN ({published})) DESC, max(l.created_at) DESC, l.run_id DESC
        LIMIT 1
        """,
        [run_id],
    ).fetchone()
    return None if row is None else str(row[0])


def write_evaluation_lists(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    lists: Iterable[tuple[str, str, str, np.ndarray, np.ndarray, np.ndarray]],
    keep: str | None = None,
) -> int:
    """Replace run `run_id`'s rows of `evaluation_lists` with `lists`: (source, model_run_id, index,
    user codes [U], item codes [U, k] best first (0 = none), scores [U, k]). Keeps the newest
    LIST_RUNS_KEPT runs and `keep` (the run churn is measured against); older runs are deleted."""
    ensure_results_tables(con)
    parts = []
    for source, model_run_id, index, users, codes, scores in lists:
        n_users, k = codes.shape
        real = (codes > 0).ravel()
        n = int(real.sum())
        parts.append(
            pa.table(
                {
                    "run_id": pa.array([run_id] * n, pa.string()),
                    "source": pa.array([source] * n, pa.string()),
                    "model_run_id": pa.array([model_run_id] * n, pa.string()),
                    "index": pa.array([index] * n, pa.string()),
                    "user_code": np.repeat(np.asarray(users, dtype=np.int32), k)[real],
                    "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n_users)[real],
                    "item_code": codes.astype(np.int32).ravel()[real],
                    "score": scores.astype(np.float64).ravel()[real],
                    "created_at": pa.array([utcnow()] * n, pa.timestamp("us")),
                }
            )
        )
    rows = 0
    with transaction(con):
        con.execute("DELETE FROM main.evaluation_lists WHERE run_id = ?", [run_id])
        for table in parts:
            con.register("_lists_chunk", table)
            try:
                con.execute("INSERT INTO main.evaluation_lists BY NAME SELECT * FROM _lists_chunk")
            finally:
                con.unregister("_lists_chunk")
            rows += table.num_rows
        con.execute(
            """
            DELETE FROM main.evaluation_lists WHERE run_id NOT IN (
                SELECT run_id FROM (
                    SELECT run_id, row_number() OVER (ORDER BY max(created_at) DESC, run_id DESC) AS rn
                    FROM main.evaluation_lists GROUP BY run_id
                ) WHERE rn <= ?
            ) AND run_id IS DISTINCT FROM ?
            """,
            [LIST_RUNS_KEPT, keep],
        )
    return rows
