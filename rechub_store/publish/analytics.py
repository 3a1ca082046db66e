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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from rechub_store.warehouse import Warehouse, table_exists, transaction

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
    value DOUBLE, n_users BIGINT, "index" VARCHAR, created_at TIMESTAMP
);
"""

RESULT_TABLES = ("recommendations", "recommendations_history", "evaluation_metrics")
PUBLISHED_TABLE = "published"  # one row in the analytics file: which run it holds


def utcnow() -> dt.datetime:
    """Naive UTC timestamp (the TIMESTAMP columns are UTC by convention)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def ensure_results_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(RESULTS_DDL)


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
            con.execute("INSERT INTO main.evaluation_metrics SELECT * FROM _metrics_chunk")
    finally:
        con.unregister("_metrics_chunk")
    return len(rows)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


HISTORY_DIR = "analytics-history"  # per-run Parquet files behind the analytics file's history view
HISTORY_FILES_TABLE = "history_files"  # (run_id, path) the view reads; drives garbage collection


def _file_stem(run_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    if safe != run_id:
        safe += "-" + hashlib.sha1(run_id.encode()).hexdigest()[:8]
    return safe


def _previous_history_files(path: Path) -> dict[str, str]:
    """run_id -> Parquet file of the currently published analytics file (empty if none)."""
    if not path.exists():
        return {}
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return {}
    try:
        rows = con.execute(f"SELECT run_id, path FROM {HISTORY_FILES_TABLE}").fetchall()
        return {run_id: str(Path(file).resolve()) for run_id, file in rows}
    except duckdb.Error:
        return {}
    finally:
        con.close()


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


def _history_view_sql(files: list[str]) -> str:
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


def publish_analytics(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    run_id: str,
    before_replace: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Write the analyst database beside the old one and atomically rename it into place.

    `con` is the job's (writable) warehouse connection; the new file is ATTACHed to it so the
    copy runs inside DuckDB. Tables: recommendations (the current run), evaluation_metrics,
    model_runs, job_runs, items, item_attributes, item_tags, published, history_files;
    `recommendations_history` is a view over one immutable Parquet file per run
    (`analytics-history/`), so a publish writes only the new run instead of copying every kept
    run again. File names carry the publish time, so a rerun of a date never changes a file an
    older snapshot reads; files referenced by neither the new nor the previous analytics file
    are deleted afterwards. `before_replace` runs after the new
    file is complete and before the rename (the nightly job's fault-injection point).
    """
    ensure_results_tables(con)
    target = warehouse.analytics_path
    tmp = target.with_name(f"{target.name}.tmp-{_file_stem(run_id)}")
    for stale in (tmp, Path(f"{tmp}.wal")):
        stale.unlink(missing_ok=True)
    published_at = utcnow()
    stamp = f"{published_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"  # unique per publish
    # Absolute: the view's paths are resolved against each reader's working directory, not
    # against the analytics file's folder.
    history_dir = warehouse.root.resolve() / HISTORY_DIR
    history_dir.mkdir(parents=True, exist_ok=True)
    current = con.execute(
        "SELECT any_value(run_id), any_value(model_run_id) FROM main.recommendations"
    ).fetchone()
    current_run = current[0] if current else None
    previous = _previous_history_files(target)
    files: dict[str, str] = {}
    t0 = time.perf_counter()
    for (hist_run,) in con.execute(
        "SELECT DISTINCT run_id FROM main.recommendations_history ORDER BY run_id"
    ).fetchall():
        old = previous.get(hist_run)
        if hist_run != current_run and old and Path(old).exists():
            files[hist_run] = old  # immutable: reuse the file the last publish wrote
            continue
        path = history_dir / f"{_file_stem(hist_run)}.{stamp}.parquet"
        if hist_run == current_run:  # the current run: read the small table, not the whole history
            _write_parquet(con, "SELECT * FROM main.recommendations", [], path)
        else:
            _write_parquet(
                con, "SELECT * FROM main.recommendations_history WHERE run_id = ?", [hist_run], path
            )
        files[hist_run] = str(path)
    history_seconds = time.perf_counter() - t0
    counts: dict[str, int] = {}
    con.execute(f"ATTACH {_sql_literal(str(tmp))} AS _publish")
    try:
        for table in ("recommendations", "evaluation_metrics"):
            con.execute(f"CREATE TABLE _publish.main.{table} AS SELECT * FROM main.{table}")
        for table in ("model_runs", "job_runs"):
            if table_exists(con, f"meta.{table}"):
                con.execute(f"CREATE TABLE _publish.main.{table} AS SELECT * FROM meta.{table}")
        for table, sql in _catalogue_sql(con).items():
            con.execute(f"CREATE TABLE _publish.main.{table} AS {sql}")
        con.execute(
            f"CREATE TABLE _publish.main.{PUBLISHED_TABLE} AS SELECT ?::VARCHAR AS run_id, "
            "?::VARCHAR AS model_run_id, ?::TIMESTAMP AS published_at",
            [run_id, current[1] if current else None, published_at],
        )
        con.execute(f"CREATE TABLE _publish.main.{HISTORY_FILES_TABLE} (run_id VARCHAR, path VARCHAR)")
        if files:
            con.executemany(
                f"INSERT INTO _publish.main.{HISTORY_FILES_TABLE} VALUES (?, ?)", list(files.items())
            )
        con.execute(
            f"CREATE VIEW _publish.main.recommendations_history AS {_history_view_sql(list(files.values()))}"
        )
        for table in RESULT_TABLES:
            counts[table] = int(con.execute(f"SELECT count(*) FROM _publish.main.{table}").fetchone()[0])  # type: ignore[index]
        con.execute("CHECKPOINT _publish")
    finally:
        con.execute("DETACH _publish")
    if before_replace is not None:
        before_replace()
    _fsync(tmp)
    os.replace(tmp, target)
    _fsync(target.parent)
    # Old snapshots stay readable for one publish: keep what the previous file referenced.
    keep = set(files.values()) | set(previous.values())
    removed = 0
    for path in history_dir.glob("*.parquet"):
        if str(path) not in keep:
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


# ------------------------------------------------------------------------ read-only analyst queries
READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Reject anything but SELECT-like statements (SELECT/WITH/FROM/VALUES/SHOW/DESCRIBE/SUMMARIZE/EXPLAIN).

    The connection is read-only anyway; this also stops COPY ... TO, ATTACH, INSTALL, SET, PRAGMA.
    """
    from rechub_store.errors import UserError

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise UserError(f"sql: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise UserError("sql: empty query")
    for st in statements:
        if st.type not in READ_STATEMENTS:
            kind = str(st.type).rsplit(".", 1)[-1]
            raise UserError(
                f"sql: only read-only queries are allowed (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN); got {kind}"
            )
        if st.type == duckdb.StatementType.EXPLAIN and "copy" in st.query.lower():
            raise UserError("sql: EXPLAIN of a write is not allowed")


def query_readonly(
    warehouse: Warehouse, sql: str, limit: int | None = None
) -> tuple[list[str], list[tuple], str]:
    """Run analyst SQL read-only against analytics.duckdb (else the warehouse, read-only).

    Returns (column names, rows, the database file used). Writes are rejected before running.
    """
    from rechub_store.errors import UserError

    path = warehouse.analytics_path if warehouse.analytics_path.exists() else warehouse.path
    if not path.exists():
        raise UserError(
            f"nothing to query: no {warehouse.analytics_path} or {warehouse.path} (run `rechub-store demo`)"
        )
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise UserError(f"cannot open {path} read-only: {str(exc).splitlines()[0]}") from None
    try:
        check_read_only(con, sql)
        statements = con.extract_statements(sql)
        try:
            for st in statements[:-1]:
                con.execute(st)
            cur = con.execute(statements[-1])
            names = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchmany(limit) if limit else cur.fetchall()
        except duckdb.Error as exc:
            raise UserError(f"sql: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    return names, rows, str(path)
