"""Publish-test fixtures: one real PostgreSQL server per test session, a fresh database per test,
and a warehouse whose working-copy result tables are filled directly (tiny, deterministic)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa
import pytest
from pgserver import LocalPostgres, new_database

from rechub_store.warehouse import Warehouse


@pytest.fixture
def pg_url(pg_server: LocalPostgres) -> str:
    """A fresh, empty database on the session's server."""
    return new_database(pg_server, "t")


_REC_NAMES = ["user_id", "item_id", "rank", "score", "run_id", "model_run_id", "generated_at"]


@pytest.fixture
def fill_results():
    """`fill_results(warehouse, run_id, users, k=3, ...)`: write one run into the working copy."""
    return _fill_results


def _fill_results(
    warehouse: Warehouse,
    run_id: str,
    users: list[str],
    k: int = 3,
    *,
    model_run_id: str = "m1",
    day: int = 1,
    keep_history: bool = True,
) -> list[tuple]:
    """Write one run into the warehouse working copy as the scorer would: `recommendations` holds only
    this run, history gets it appended (replacing the same run_id), plus metrics, model and job rows.
    Returns the recommendation rows written."""
    generated = datetime(2026, 1, 1) + timedelta(days=day)
    rows = [
        (
            u,
            f"item-{(i * 7 + j) % 11}-{run_id}",
            j + 1,
            float(k - j) + i / 1000,
            run_id,
            model_run_id,
            generated,
        )
        for i, u in enumerate(users)
        for j in range(k)
    ]
    cols = (
        "user_id VARCHAR, item_id VARCHAR, rank INTEGER, score DOUBLE, run_id VARCHAR, "
        "model_run_id VARCHAR, generated_at TIMESTAMP"
    )
    with warehouse.session() as con:
        con.execute(f"CREATE TABLE IF NOT EXISTS main.recommendations ({cols})")
        con.execute(f"CREATE TABLE IF NOT EXISTS main.recommendations_history ({cols})")
        con.execute(
            "CREATE TABLE IF NOT EXISTS main.evaluation_metrics (run_id VARCHAR, model_run_id VARCHAR, "
            'split VARCHAR, metric VARCHAR, k INTEGER, value DOUBLE, n_users BIGINT, "index" VARCHAR, '
            "created_at TIMESTAMP)"
        )
        con.execute("DELETE FROM main.recommendations")
        if rows:  # through Arrow: executemany is slow for thousands of rows
            table = pa.table(list(zip(*rows, strict=True)), names=_REC_NAMES)
            con.register("_rows", table)
            con.execute("INSERT INTO main.recommendations SELECT * FROM _rows")
            con.unregister("_rows")
        if keep_history:
            con.execute("DELETE FROM main.recommendations_history WHERE run_id = ?", [run_id])
            con.execute("INSERT INTO main.recommendations_history SELECT * FROM main.recommendations")
        con.execute("DELETE FROM main.evaluation_metrics WHERE run_id = ?", [run_id])
        for metric in ("recall", "ndcg"):
            for index in ("annoy", "exact"):
                con.execute(
                    "INSERT INTO main.evaluation_metrics VALUES (?, ?, 'test', ?, ?, ?, ?, ?, ?)",
                    [run_id, model_run_id, metric, k, 0.5 + day / 100, len(users), index, generated],
                )
        con.execute("DELETE FROM meta.model_runs WHERE model_run_id = ?", [model_run_id])
        con.execute(
            "INSERT INTO meta.model_runs (model_run_id, model, status, params, created_at) "
            "VALUES (?, 'dssm', 'success', ?, ?)",
            [model_run_id, '{"epochs": 1}', generated],
        )
        con.execute(
            "INSERT INTO meta.job_runs (run_id, job, step, status, started_at, rows, details) "
            "VALUES (?, 'nightly', 'score', 'success', ?, ?, ?)",
            [run_id, generated, len(rows), '{"target": "postgresql://bob:hunter2@db/x"}'],
        )
    return rows
