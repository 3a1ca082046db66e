"""Results tables: the job's working copy in the warehouse, and the published analytics file.

DuckDB allows one writer process or many readers per file, so analysts never open the
warehouse. Each publish writes a complete new database beside the old one
(`analytics.duckdb.tmp-<run>`), checkpoints and fsyncs it, then `os.replace`s it onto
`analytics.duckdb`: a reader holding the old file keeps reading the old inode (the old run,
whole), a new connection sees the new run, and a run killed before the rename leaves the
previous file untouched.

Write-back is columnar: scorers hand numpy code arrays in chunks, they land in a temporary
table through Arrow, and one SQL statement maps codes to raw ids by joining the vocabularies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from rechub_store.warehouse import Warehouse, column_names, table_exists, transaction

log = logging.getLogger(__name__)

RESULTS_DDL = """
CREATE TABLE IF NOT EXISTS main.recommendations (
    user_id VARCHAR, item_id VARCHAR, rank INTEGER, score DOUBLE,
    run_id VARCHAR, model_run_id VARCHAR, generated_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS main.recommendations_history (
    user_id VARCHAR, item_id VARCHAR, rank INTEGER, score DOUBLE,
    run_id VARCHAR, model_run_id VARCHAR, generated_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS main.evaluation_metrics (
    run_id VARCHAR, model_run_id VARCHAR, split VARCHAR, metric VARCHAR, k INTEGER,
    value DOUBLE, n_users BIGINT, "index" VARCHAR, created_at TIMESTAMP,
    seen_filter VARCHAR, slice VARCHAR, n_repeat_targets BIGINT
);
CREATE TABLE IF NOT EXISTS main.evaluation_lists (
    run_id VARCHAR, source VARCHAR, model_run_id VARCHAR, "index" VARCHAR,
    user_code INTEGER, rank INTEGER, item_code INTEGER, score DOUBLE, created_at TIMESTAMP
);
"""

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
PUBLISHED_TABLE = "published"  # one row in the analytics file: which run it holds


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


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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

    def keep_previous(self, user_codes: np.ndarray) -> int:
        """Stage these users' rows of the current `recommendations` again (incremental scoring:
        their lists cannot have changed); returns the rows staged."""
        if len(user_codes) == 0:
            return 0
        self.con.register("_recs_kept", pa.table({"user_code": np.asarray(user_codes, dtype=np.int32)}))
        try:
            (n,) = self.con.execute(  # type: ignore[misc]
                """
                INSERT INTO _recs_codes
                SELECT u.code, i.code, r.rank, r.score::FLOAT
                FROM main.recommendations r
                JOIN features.vocab_user_id u ON u.value = r.user_id
                JOIN features.vocab_item_id i ON i.value = r.item_id
                SEMI JOIN _recs_kept k ON k.user_code = u.code
                """
            ).fetchone()
        finally:
            self.con.unregister("_recs_kept")
        self.rows += int(n)
        return int(n)

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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


HISTORY_DIR = "analytics-history"  # per-run Parquet files behind the analytics file's history view
HISTORY_FILES_TABLE = "history_files"  # (run_id, path, published_at): the view's files, GC and retention
HISTORY_VIEW = "recommendations_history"


def _file_stem(run_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    if safe != run_id:
        safe += "-" + hashlib.sha1(run_id.encode()).hexdigest()[:8]
    return safe


def _resolve_history_file(folder: Path, stored: str) -> Path:
    """Where a history file is now. Paths are stored relative to the warehouse folder (the
    analytics file's folder), so a moved or restored warehouse finds its own files; an absolute
    path (older publishes) that no longer exists falls back to the same name in this folder."""
    path = Path(stored)
    if not path.is_absolute():
        return folder / path
    if path.exists():
        return path
    return folder / HISTORY_DIR / path.name


def _published_history(path: Path) -> dict[str, tuple[Path, dt.datetime | None]]:
    """run_id -> (Parquet file, published_at) of the analytics file at `path` (empty if none)."""
    if not path.exists():
        return {}
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return {}
    try:
        columns = {r[0] for r in con.execute(f"DESCRIBE {HISTORY_FILES_TABLE}").fetchall()}
        published = "published_at" if "published_at" in columns else "NULL::TIMESTAMP"
        rows = con.execute(f"SELECT run_id, path, {published} FROM {HISTORY_FILES_TABLE}").fetchall()
    except duckdb.Error:
        return {}
    finally:
        con.close()
    folder = path.resolve().parent
    return {run_id: (_resolve_history_file(folder, file), at) for run_id, file, at in rows}


def history_paths(path: Path) -> list[Path]:
    """The Parquet files behind the history view of the analytics file at `path`, where they are now."""
    return [file for file, _ in _published_history(path).values()]


def _write_parquet(con: duckdb.DuckDBPyConnection, select_sql: str, params: list[Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    con.execute(
        f"COPY ({select_sql}) TO {_sql_literal(str(tmp))} "
        "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1000000)",
        params,
    )
    _fsync(tmp)
    os.replace(tmp, path)


def history_view_sql(files: list[str]) -> str:
    """The SELECT behind recommendations_history over these Parquet files (an empty result if none)."""
    if files:
        listing = ", ".join(_sql_literal(f) for f in files)
        return f"SELECT * FROM read_parquet([{listing}])"
    return (
        "SELECT NULL::VARCHAR AS user_id, NULL::VARCHAR AS item_id, NULL::INTEGER AS rank, "
        "NULL::DOUBLE AS score, NULL::VARCHAR AS run_id, NULL::VARCHAR AS model_run_id, "
        "NULL::TIMESTAMP AS generated_at WHERE false"
    )


def _catalogue_sql(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Item tables analysts join recommendations with (titles, tags, popularity), where they exist."""
    out = {}
    if table_exists(con, "features.vocab_item_id"):
        pop = table_exists(con, "features.item_popularity")
        out["items"] = "SELECT v.value AS item_id, " + (
            "p.n_events, p.n_train FROM features.vocab_item_id v "
            "LEFT JOIN features.item_popularity p ON p.item_code = v.code"
            if pop
            else "NULL::BIGINT AS n_events, NULL::BIGINT AS n_train FROM features.vocab_item_id v"
        )
    if table_exists(con, "raw.item_attributes"):  # the latest value of each attribute
        out["item_attributes"] = (
            "SELECT item_id, name, arg_max(value, (batch_seq, line)) AS value "
            "FROM raw.item_attributes GROUP BY ALL"
        )
    if table_exists(con, "raw.item_tags"):
        out["item_tags"] = "SELECT DISTINCT item_id, tag FROM raw.item_tags"
    return out


def _job_runs_sql(
    run_id: str, published_at: dt.datetime, pending: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    """meta.job_runs as the analytics file shows it. The publishing run's own rows still `running`
    (its `whole` and `publish` rows) are shown as they stand once this file is in place: `success`,
    finished at the publish time, with `details.recorded_at_publish` and the server targets still to
    come (`details.targets_pending`, masked URLs; their outcome is in the warehouse's meta.job_runs
    and each server's rechub_publish_log). Every other row is copied as it is."""
    note = json.dumps({"recorded_at_publish": True, "targets_pending": list(pending)})
    mine = "(run_id = $run AND status = 'running')"
    sql = f"""
        SELECT run_id, job, step,
               CASE WHEN {mine} THEN 'success' ELSE status END AS status,
               started_at,
               CASE WHEN {mine} THEN $at ELSE finished_at END AS finished_at,
               CASE WHEN {mine} THEN round(greatest(epoch($at) - epoch(started_at), 0), 3)
                    ELSE seconds END AS seconds,
               rows,
               CASE WHEN {mine} THEN json_merge_patch(coalesce(details, '{{}}'), $note)::JSON
                    ELSE details END AS details,
               error
        FROM meta.job_runs"""
    return sql, {"run": run_id, "at": published_at, "note": note}


def publish_analytics(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    run_id: str,
    before_replace: Callable[[], None] | None = None,
    *,
    keep_runs: int = 30,
    pending_targets: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the analyst database beside the old one and atomically rename it into place.

    `con` is the job's (writable) warehouse connection; the new file is ATTACHed to it so the
    copy runs inside DuckDB. Tables: recommendations (the current run), evaluation_metrics,
    model_runs, job_runs, items, item_attributes, item_tags, published, history_files;
    `recommendations_history` is a view over one immutable Parquet file per PUBLISHED run
    (`analytics-history/`): the runs the previous analytics file held plus this one, the newest
    `keep_runs` by publish time (runs scored but never published, e.g. a failed nightly or a manual
    `score`, stay in the warehouse's working copy only). A publish writes only the new run's file.
    File names carry the publish time, so a rerun of a date never changes a file an older snapshot
    reads; files referenced by neither the new nor the previous analytics file are deleted
    afterwards. `history_files.path` is relative to the warehouse folder; the view itself names
    the files by absolute path (DuckDB resolves a view's relative paths against each reader's
    working directory) and is rewritten at every publish. `before_replace` runs after the new file
    is complete and before the rename (the nightly job's fault-injection point). On any failure
    the temporary file (and its .wal) and the new Parquet file are removed; the old file stays.
    """
    ensure_results_tables(con)
    target = warehouse.analytics_path
    tmp = target.with_name(f"{target.name}.tmp-{_file_stem(run_id)}")
    for stale in target.parent.glob(f"{target.name}.tmp-*"):  # left by killed runs (we hold the lock)
        stale.unlink(missing_ok=True)
    published_at = utcnow()
    stamp = f"{published_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"  # unique per publish
    root = warehouse.root.resolve()
    history_dir = root / HISTORY_DIR
    history_dir.mkdir(parents=True, exist_ok=True)
    current = con.execute(
        "SELECT any_value(run_id), any_value(model_run_id) FROM main.recommendations"
    ).fetchone()
    current_run = current[0] if current else None
    previous = _published_history(target)
    files: dict[str, tuple[Path, dt.datetime | None]] = {}
    written: list[Path] = []
    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    try:
        for hist_run, (old, at) in previous.items():
            if hist_run == current_run:
                continue
            if old.exists():
                files[hist_run] = (old, at)  # immutable: reuse the file the last publish wrote
                continue
            n = con.execute(
                "SELECT count(*) FROM main.recommendations_history WHERE run_id = ?", [hist_run]
            ).fetchone()[0]  # type: ignore[index]
            if not n:
                log.warning("history file %s of published run %s is gone; run dropped", old, hist_run)
                continue
            path = history_dir / f"{_file_stem(hist_run)}.{stamp}.parquet"
            _write_parquet(
                con, "SELECT * FROM main.recommendations_history WHERE run_id = ?", [hist_run], path
            )
            written.append(path)
            files[hist_run] = (path, at)
        if current_run is not None:
            path = history_dir / f"{_file_stem(current_run)}.{stamp}.parquet"
            _write_parquet(con, "SELECT * FROM main.recommendations", [], path)  # the small table
            written.append(path)
            files[current_run] = (path, published_at)
        newest = sorted(files, key=lambda r: (files[r][1] or dt.datetime.min, r), reverse=True)
        files = {r: files[r] for r in newest[:keep_runs]}
        history_seconds = time.perf_counter() - t0
        con.execute(f"ATTACH {_sql_literal(str(tmp))} AS _publish")
        try:
            for table in ("recommendations", "evaluation_metrics"):
                con.execute(f"CREATE TABLE _publish.main.{table} AS SELECT * FROM main.{table}")
            if table_exists(con, "meta.model_runs"):
                con.execute("CREATE TABLE _publish.main.model_runs AS SELECT * FROM meta.model_runs")
            if table_exists(con, "meta.job_runs"):
                sql, params = _job_runs_sql(run_id, published_at, pending_targets)
                con.execute(f"CREATE TABLE _publish.main.job_runs AS {sql}", params)
            for table, sql in _catalogue_sql(con).items():
                con.execute(f"CREATE TABLE _publish.main.{table} AS {sql}")
            con.execute(
                f"CREATE TABLE _publish.main.{PUBLISHED_TABLE} AS SELECT ?::VARCHAR AS run_id, "
                "?::VARCHAR AS model_run_id, ?::TIMESTAMP AS published_at",
                [run_id, current[1] if current else None, published_at],
            )
            con.execute(
                f"CREATE TABLE _publish.main.{HISTORY_FILES_TABLE} "
                "(run_id VARCHAR, path VARCHAR, published_at TIMESTAMP)"
            )
            if files:
                con.executemany(
                    f"INSERT INTO _publish.main.{HISTORY_FILES_TABLE} VALUES (?, ?, ?)",
                    [(r, _relative(path, root), at) for r, (path, at) in files.items()],
                )
            listing = [str(path) for path, _ in files.values()]
            con.execute(f"CREATE VIEW _publish.main.{HISTORY_VIEW} AS {history_view_sql(listing)}")
            for table in RESULT_TABLES:
                counts[table] = int(con.execute(f"SELECT count(*) FROM _publish.main.{table}").fetchone()[0])  # type: ignore[index]
            con.execute("CHECKPOINT _publish")
        finally:
            con.execute("DETACH _publish")
        if before_replace is not None:
            before_replace()
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        for leftover in (tmp, Path(f"{tmp}.wal"), *written):
            leftover.unlink(missing_ok=True)
        raise
    _fsync(target.parent)
    # Old snapshots stay readable for one publish: keep what the previous file referenced.
    keep = {path.resolve() for path, _ in files.values()} | {path.resolve() for path, _ in previous.values()}
    removed = 0
    for path in history_dir.glob("*.parquet"):
        if path.resolve() not in keep:
            path.unlink(missing_ok=True)
            removed += 1
    log.info("published %s to %s (%s)", run_id, target, json.dumps(counts))
    return {
        "path": str(target),
        "run_id": run_id,
        "published_at": published_at.isoformat(),
        "rows": counts,
        "history_files": len(files),
        "history_seconds": round(history_seconds, 3),
        "history_files_removed": removed,
    }


def _relative(path: Path, root: Path) -> str:
    """`path` relative to the warehouse folder when it lies inside it (it always does for files we write)."""
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def published_run(path: Path) -> dict[str, Any] | None:
    """What the analytics file at `path` holds (run_id, model_run_id, published_at), None if absent."""
    if not path.exists():
        return None
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None
    try:
        row = con.execute(f"SELECT run_id, model_run_id, published_at FROM {PUBLISHED_TABLE}").fetchone()
    except duckdb.Error:
        return None
    finally:
        con.close()
    return None if row is None else {"run_id": row[0], "model_run_id": row[1], "published_at": row[2]}
