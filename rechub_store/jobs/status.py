"""`rechub-store status`: the last job runs, the latest model run, the published run, the lock."""

from __future__ import annotations

from typing import Any

import duckdb

from rechub_store.jobs.lock import lock_status
from rechub_store.publish.analytics import published_run
from rechub_store.warehouse import Warehouse, table_exists


def job_status(warehouse: Warehouse, limit: int = 10) -> dict[str, Any]:
    """Last job runs, latest model run, the published run and the lock, for `rechub-store status`.

    Reads the warehouse read-only; while a job holds it (DuckDB's single-writer lock) falls back
    to the copies in analytics.duckdb and says so.
    """
    out: dict[str, Any] = {
        "warehouse": str(warehouse.path),
        "analytics": str(warehouse.analytics_path),
        "published": published_run(warehouse.analytics_path),
        "lock": lock_status(warehouse),
        "source": None,
        "job_runs": [],
        "latest_model_run": None,
    }
    con = None
    for path in (warehouse.path, warehouse.analytics_path):
        if not path.exists():
            continue
        try:
            con = duckdb.connect(str(path), read_only=True)
            out["source"] = str(path)
            break
        except duckdb.Error as exc:
            out.setdefault("notes", []).append(f"{path}: {str(exc).splitlines()[0]}")
    if con is None:
        return out
    schema = "meta" if out["source"] == str(warehouse.path) else "main"
    try:
        if table_exists(con, f"{schema}.job_runs"):
            cur = con.execute(
                "SELECT run_id, job, status, started_at, finished_at, seconds, rows, error "
                f"FROM {schema}.job_runs WHERE step = 'whole' ORDER BY started_at DESC LIMIT ?",
                [limit],
            )
            names = [d[0] for d in cur.description]
            out["job_runs"] = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        if table_exists(con, f"{schema}.model_runs"):
            cur = con.execute(
                f"SELECT model_run_id, model, status, best_metric, finished_at FROM {schema}.model_runs "
                "WHERE status = 'success' ORDER BY finished_at DESC NULLS LAST LIMIT 1"
            )
            row = cur.fetchone()
            if row:
                out["latest_model_run"] = dict(zip([d[0] for d in cur.description], row, strict=True))
    finally:
        con.close()
    return out
