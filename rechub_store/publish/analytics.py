"""The published analytics file: a complete copy of the result tables that analysts open.

DuckDB allows one writer process or many readers per file, so analysts never open the
warehouse. Each publish writes a complete new database beside the old one
(`analytics.duckdb.tmp-<run>`), checkpoints and fsyncs it, then `os.replace`s it onto
`analytics.duckdb`: a reader holding the old file keeps reading the old inode (the old run,
whole), a new connection sees the new run, and a run killed before the rename leaves the
previous file untouched.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb

from rechub_store.results.tables import RESULT_TABLES, ensure_results_tables, utcnow
from rechub_store.warehouse import Warehouse, sql_literal, table_exists

log = logging.getLogger(__name__)

PUBLISHED_TABLE = "published"  # one row in the analytics file: which run it holds


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
        f"COPY ({select_sql}) TO {sql_literal(str(tmp))} "
        "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1000000)",
        params,
    )
    _fsync(tmp)
    os.replace(tmp, path)


def history_view_sql(files: list[str]) -> str:
    """The SELECT behind recommendations_history over these Parquet files (an empty result if none)."""
    if files:
        listing = ", ".join(sql_literal(f) for f in files)
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
        con.execute(f"ATTACH {sql_literal(str(tmp))} AS _publish")
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
