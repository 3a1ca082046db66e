"""evaluation_metrics written by an older version (no protocol columns) keeps working: the warehouse
working copy and server tables (PostgreSQL and the generic path) gain the columns in place, old rows
marked `legacy` so they are never silently compared with rows of the explicit protocol."""

from __future__ import annotations

import duckdb
import pytest
import sqlalchemy as sa

from rechub_store.publish.analytics import publish_analytics
from rechub_store.publish.server import publish_to_url
from rechub_store.results.tables import ensure_results_tables, write_metrics

OLD_DUCKDB = (
    "CREATE TABLE main.evaluation_metrics (run_id VARCHAR, model_run_id VARCHAR, split VARCHAR, "
    'metric VARCHAR, k INTEGER, value DOUBLE, n_users BIGINT, "index" VARCHAR, created_at TIMESTAMP)'
)
# what the previous version's SQLAlchemy metadata created on a server
OLD_SERVER = (
    "CREATE TABLE evaluation_metrics (run_id TEXT NOT NULL, model_run_id TEXT NOT NULL, "
    "split TEXT NOT NULL, metric TEXT NOT NULL, k INTEGER NOT NULL, value DOUBLE PRECISION, "
    'n_users BIGINT, "index" TEXT NOT NULL, created_at TIMESTAMP, '
    "CONSTRAINT evaluation_metrics_pkey PRIMARY KEY "
    '(run_id, model_run_id, split, metric, k, "index"))'
)
OLD_ROW = (
    "INSERT INTO evaluation_metrics VALUES ('run-0', 'm0', 'test', 'ndcg', 10, 0.09, 300, 'exact', NULL)"
)


def new_rows(run_id: str) -> list[dict]:
    """Two slices of the same (model, split, metric, k, index): only a key with `slice` holds both."""
    return [
        {"run_id": run_id, "model_run_id": "m1", "split": "test", "metric": "ndcg", "k": 10, "value": v,
         "n_users": n, "index": "exact", "seen_filter": "except-target", "slice": s, "n_repeat_targets": 102}
        for s, v, n in (("all", 0.245, 300), ("repeat", 0.61, 102))
    ]  # fmt: skip


def fetch(url: str, sql: str) -> list[tuple]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def test_working_copy_and_analytics_file_are_migrated(warehouse, fill_results) -> None:
    fill_results(warehouse, "run-1", ["a", "b"])  # an old-format working copy, as the last version left it
    with warehouse.session() as con:
        ensure_results_tables(con)
        old = con.execute(
            "SELECT DISTINCT seen_filter, slice, n_repeat_targets FROM main.evaluation_metrics"
        ).fetchall()
        assert old == [("legacy", "all", None)]
        write_metrics(con, new_rows("run-2"))
        publish_analytics(con, warehouse, "run-1")
    con = duckdb.connect(str(warehouse.analytics_path), read_only=True)
    try:
        got = con.execute(
            "SELECT run_id, seen_filter, slice, n_repeat_targets FROM evaluation_metrics "
            "WHERE metric = 'ndcg' AND \"index\" = 'exact' ORDER BY run_id, slice"
        ).fetchall()
    finally:
        con.close()
    assert got == [
        ("run-1", "legacy", "all", None),
        ("run-2", "except-target", "all", 102),
        ("run-2", "except-target", "repeat", 102),
    ]


def _publish_new_run(warehouse, fill_results, url: str) -> None:
    fill_results(warehouse, "run-1", ["a", "b"])
    with warehouse.session() as con:
        write_metrics(con, new_rows("run-1"))  # replaces run-1's old-format rows of the split
    result = publish_to_url(warehouse, url, retries=0)
    assert result.status == "published" and result.rows["evaluation_metrics"] == 2


@pytest.mark.postgres
def test_postgres_table_from_an_older_version_is_altered_in_place(warehouse, fill_results, pg_url) -> None:
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(OLD_SERVER))
        conn.execute(sa.text(OLD_ROW))
        conn.execute(sa.text("CREATE ROLE metrics_reader_t NOLOGIN"))
        conn.execute(sa.text("GRANT SELECT ON evaluation_metrics TO metrics_reader_t"))
    engine.dispose()
    _publish_new_run(warehouse, fill_results, pg_url)
    rows = fetch(
        pg_url,
        "SELECT run_id, model_run_id, seen_filter, slice, n_repeat_targets FROM evaluation_metrics "
        "WHERE metric = 'ndcg' AND \"index\" = 'exact' ORDER BY run_id, model_run_id, slice",
    )
    assert rows == [
        ("run-0", "m0", "legacy", "all", None),  # kept, marked
        ("run-1", "m1", "except-target", "all", 102),
        ("run-1", "m1", "except-target", "repeat", 102),
    ]
    key = fetch(
        pg_url,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'evaluation_metrics'::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
    )
    assert [k for (k,) in key] == ["run_id", "model_run_id", "split", "slice", "metric", "k", "index"]
    assert fetch(
        pg_url, "SELECT has_table_privilege('metrics_reader_t', 'evaluation_metrics', 'SELECT')"
    ) == [(True,)], "an ALTER keeps the analysts' grants"


def test_generic_server_table_from_an_older_version_is_rebuilt(warehouse, fill_results, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'served.db'}"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(OLD_SERVER))
        conn.execute(sa.text(OLD_ROW))
    engine.dispose()
    _publish_new_run(warehouse, fill_results, url)
    rows = fetch(
        url,
        "SELECT run_id, seen_filter, slice FROM evaluation_metrics "
        "WHERE metric = 'ndcg' AND \"index\" = 'exact' ORDER BY run_id, slice",
    )
    assert rows == [
        ("run-0", "legacy", "all"),
        ("run-1", "except-target", "all"),
        ("run-1", "except-target", "repeat"),
    ]


def test_an_old_format_working_copy_is_published_as_legacy_rows(warehouse, fill_results, tmp_path) -> None:
    fill_results(warehouse, "run-1", ["a", "b"])  # evaluation_metrics without the protocol columns
    url = f"sqlite:///{tmp_path / 'served.db'}"
    assert publish_to_url(warehouse, url, retries=0).rows["evaluation_metrics"] == 4
    assert fetch(url, "SELECT DISTINCT seen_filter, slice, n_repeat_targets FROM evaluation_metrics") == [
        ("legacy", "all", None)
    ]
