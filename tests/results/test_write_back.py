"""Write-back and publish: raw ids via the vocabularies, replace-by-run, retention, atomic publish."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from rechub_store.errors import UserError
from rechub_store.publish.analytics import publish_analytics, published_run
from rechub_store.publish.readonly import check_read_only, query_readonly
from rechub_store.results.tables import RecommendationWriter, write_metrics
from rechub_store.warehouse import Warehouse

ODD_USERS = ["u1", "O'Brien", "名前", 'a,"b"', "18446744073709551616", " spaced "]
ODD_ITEMS = [f"i{i}" for i in range(1, 9)] + ["it's", "ä|b;c"]


@pytest.fixture
def con(warehouse: Warehouse):
    con = warehouse.connect()
    con.execute(
        "CREATE TABLE features.vocab_user_id AS SELECT unnest(?) AS value, "
        "(generate_subscripts(?, 1))::INTEGER AS code",
        [ODD_USERS, ODD_USERS],
    )
    con.execute(
        "CREATE TABLE features.vocab_item_id AS SELECT unnest(?) AS value, "
        "(generate_subscripts(?, 1))::INTEGER AS code",
        [ODD_ITEMS, ODD_ITEMS],
    )
    yield con
    con.close()


def write_run(
    con, run_id: str, seed: int, keep_runs: int = 30, k: int = 4, at: dt.datetime | None = None
) -> int:
    rng = np.random.default_rng(seed)
    users = np.arange(1, len(ODD_USERS) + 1)
    codes = np.stack([rng.choice(np.arange(1, len(ODD_ITEMS) + 1), size=k, replace=False) for _ in users])
    codes[0, -1] = 0  # a user with fewer than k candidates: the padding is dropped
    scores = -np.sort(-rng.random(codes.shape).astype(np.float32), axis=1)
    writer = RecommendationWriter(con, run_id, "m1")
    writer.add(users[:3], codes[:3], scores[:3])  # chunked staging
    writer.add(users[3:], codes[3:], scores[3:])
    return writer.commit(keep_runs=keep_runs, generated_at=at)


def test_recommendations_have_raw_ids_ranks_and_replace_by_run(con) -> None:
    assert write_run(con, "r1", 0) == 6 * 4 - 1
    rows = con.execute(
        "SELECT user_id, item_id, rank, score, run_id, model_run_id FROM recommendations"
    ).fetchall()
    assert {r[0] for r in rows} == set(ODD_USERS)
    assert {r[1] for r in rows} <= set(ODD_ITEMS)
    per_user = con.execute(
        "SELECT user_id, list(rank ORDER BY rank), bool_and(score IS NOT NULL) "
        "FROM recommendations GROUP BY 1"
    ).fetchall()
    for user, ranks, _ in per_user:
        assert ranks == ([1, 2, 3] if user == "u1" else [1, 2, 3, 4])
    assert {(r[4], r[5]) for r in rows} == {("r1", "m1")}
    write_run(con, "r2", 1)
    write_run(con, "r1", 2)  # rerun of r1: replaces it in the history, no duplicates
    hist = dict(con.execute("SELECT run_id, count(*) FROM recommendations_history GROUP BY 1").fetchall())
    assert hist == {"r1": 23, "r2": 23}
    assert con.execute("SELECT DISTINCT run_id FROM recommendations").fetchall() == [("r1",)]
    assert con.execute(
        "SELECT typeof(rank), typeof(score), typeof(generated_at) FROM recommendations LIMIT 1"
    ).fetchone() == ("INTEGER", "DOUBLE", "TIMESTAMP")


def test_a_code_missing_from_the_vocabulary_rolls_back(con) -> None:
    write_run(con, "r1", 0)
    writer = RecommendationWriter(con, "r2", "m1")
    writer.add(np.array([1, 99]), np.array([[1, 2], [3, 4]]), np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(RuntimeError, match="vocabulary mismatch"):
        writer.commit()
    assert con.execute("SELECT DISTINCT run_id FROM recommendations").fetchall() == [("r1",)]
    assert con.execute("SELECT DISTINCT run_id FROM recommendations_history").fetchall() == [("r1",)]


def test_history_retention_keeps_newest_runs(con) -> None:
    for i in [0, 1, 4, 2, 3]:  # generated_at decides, not the order of writing
        write_run(con, f"r{i}", i, keep_runs=3, at=dt.datetime(2026, 1, 1 + i))
    runs = [
        r[0] for r in con.execute("SELECT DISTINCT run_id FROM recommendations_history ORDER BY 1").fetchall()
    ]
    assert runs == ["r2", "r3", "r4"]


def test_metrics_of_a_rerun_replace_the_whole_run_split(con) -> None:
    """A rerun that retrained (another model run) or evaluates fewer indexes leaves no stale rows;
    other splits and other runs are untouched."""
    row = {
        "run_id": "r1",
        "model_run_id": "m1",
        "split": "test",
        "metric": "recall",
        "k": 10,
        "value": 0.5,
        "n_users": 6,
        "index": "exact",
    }
    write_metrics(con, [row, {**row, "index": "annoy"}, {**row, "split": "valid"}, {**row, "run_id": "r0"}])
    write_metrics(con, [{**row, "model_run_id": "m2", "value": 0.7}])
    got = con.execute(
        'SELECT run_id, split, model_run_id, "index", value FROM evaluation_metrics ORDER BY ALL'
    ).fetchall()
    assert got == [
        ("r0", "test", "m1", "exact", 0.5),
        ("r1", "test", "m2", "exact", 0.7),
        ("r1", "valid", "m1", "exact", 0.5),
    ]


class Analyst:
    """A reader in another process (as analysts are) holding the analytics file open."""

    def __init__(self, path: Path, mode: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ANALYST), str(path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.first = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, "analyst process died"
        return json.loads(line)

    def query(self) -> dict:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


ANALYST = Path(__file__).resolve().parents[1] / "jobs" / "analyst.py"


@pytest.mark.parametrize("mode", ["duckdb", "sqlalchemy"])
def test_publish_is_atomic_for_open_readers(con, warehouse: Warehouse, mode: str) -> None:
    write_run(con, "r1", 0)
    publish_analytics(con, warehouse, "r1")
    path = warehouse.analytics_path
    analyst = Analyst(path, mode)
    try:
        assert analyst.first == {"rows": 23, "runs": ["r1"]}
        write_run(con, "r2", 1, k=2)
        seen: list[str] = []
        publish_analytics(con, warehouse, "r2", before_replace=lambda: seen.append("ready"))
        assert seen == ["ready"]
        assert not list(path.parent.glob("analytics.duckdb.tmp-*")), "no temporary file left behind"
        # the reader holding the old file keeps reading the old run, whole
        assert analyst.query() == {"rows": 23, "runs": ["r1"]}
        fresh = Analyst(path, mode)  # a new connection sees the new run
        assert fresh.first == {"rows": 11, "runs": ["r2"]}
        fresh.close()
    finally:
        analyst.close()
    assert published_run(path)["run_id"] == "r2"


def test_a_publish_failing_before_the_rename_leaves_the_old_file(con, warehouse: Warehouse) -> None:
    write_run(con, "r1", 0)
    publish_analytics(con, warehouse, "r1")
    write_run(con, "r2", 1)

    def boom() -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        publish_analytics(con, warehouse, "r2", before_replace=boom)
    assert published_run(warehouse.analytics_path)["run_id"] == "r1"
    publish_analytics(con, warehouse, "r2")  # the leftover temporary file does not get in the way
    assert published_run(warehouse.analytics_path)["run_id"] == "r2"


def test_history_view_reads_from_any_working_directory(
    warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative warehouse path (the default) must not leave relative Parquet paths in the view:
    analysts open the analytics file from wherever they are."""
    monkeypatch.chdir(warehouse.root.parent)
    relative = Warehouse(Path(warehouse.root.name) / warehouse.path.name, threads=2)
    con = relative.connect()
    try:
        for name, values in (("user", ODD_USERS), ("item", ODD_ITEMS)):
            con.execute(
                f"CREATE TABLE features.vocab_{name}_id AS SELECT unnest(?) AS value, "
                "(generate_subscripts(?, 1))::INTEGER AS code",
                [values, values],
            )
        rows = write_run(con, "r1", 0)
        publish_analytics(con, relative, "r1")
    finally:
        con.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    reader = duckdb.connect(str(warehouse.analytics_path), read_only=True)
    try:
        assert reader.execute("SELECT count(*) FROM recommendations_history").fetchone() == (rows,)
    finally:
        reader.close()


def test_history_files_are_written_once_and_collected_a_publish_later(con, warehouse: Warehouse) -> None:
    def files_of_published() -> dict[str, str]:
        """run_id -> file; the stored paths are relative to the warehouse folder."""
        reader = duckdb.connect(str(warehouse.analytics_path), read_only=True)
        try:
            rows = reader.execute("SELECT run_id, path FROM history_files").fetchall()
        finally:
            reader.close()
        assert all(not Path(path).is_absolute() for _, path in rows)
        return {run_id: str(warehouse.root / path) for run_id, path in rows}

    history = warehouse.root / "analytics-history"
    write_run(con, "r1", 0)
    publish_analytics(con, warehouse, "r1")
    first = files_of_published()
    write_run(con, "r2", 1)
    publish_analytics(con, warehouse, "r2")
    second = files_of_published()
    assert second["r1"] == first["r1"], "an earlier run's file is reused, not rewritten"
    write_run(con, "r2", 2)  # rerun: a new file; the old snapshot's file survives one publish
    publish_analytics(con, warehouse, "r2")
    third = files_of_published()
    assert third["r2"] != second["r2"] and Path(second["r2"]).exists()
    write_run(con, "r2", 3)
    publish_analytics(con, warehouse, "r2")
    fourth = files_of_published()
    assert not Path(second["r2"]).exists() and Path(third["r2"]).exists()
    assert sorted(str(p) for p in history.glob("*.parquet")) == sorted({*fourth.values(), *third.values()})
    fresh = duckdb.connect(str(warehouse.analytics_path), read_only=True)
    by_run = dict(fresh.execute("SELECT run_id, count(*) FROM recommendations_history GROUP BY 1").fetchall())
    assert by_run == {"r1": 23, "r2": 23}
    joined = fresh.execute(
        "SELECT count(*) FROM recommendations_history h "
        "JOIN recommendations r USING (user_id, item_id, rank, run_id)"
    ).fetchone()
    assert joined == (23,)
    fresh.close()


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM recommendations",
        "SELECT 1; DROP TABLE recommendations",
        "COPY recommendations TO '/tmp/x.csv'",
        "ATTACH '/tmp/other.duckdb'",
        "PRAGMA version",
        "SET threads = 1",
        "CREATE TABLE t AS SELECT 1",
        "INSTALL httpfs",
        "CHECKPOINT",
    ],
)
def test_sql_rejects_writes(sql: str) -> None:
    with pytest.raises(UserError, match="read-only"):
        check_read_only(duckdb.connect(), sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "SHOW TABLES",
        "DESCRIBE SELECT 1",
        "FROM (SELECT 1)",
        "EXPLAIN SELECT 1",
        "SUMMARIZE SELECT 1",
    ],
)
def test_sql_allows_reads(sql: str) -> None:
    check_read_only(duckdb.connect(), sql)


def test_query_readonly_prefers_the_analytics_file(con, warehouse: Warehouse) -> None:
    write_run(con, "r1", 0)
    con.close()
    names, rows, path = query_readonly(warehouse, "SELECT count(*) AS n FROM recommendations")
    assert path == str(warehouse.path) and names == ["n"] and rows == [(23,)]  # nothing published yet
    con2 = warehouse.connect()
    publish_analytics(con2, warehouse, "r1")
    con2.close()
    _, rows, path = query_readonly(warehouse, "SELECT run_id FROM published")
    assert path == str(warehouse.analytics_path) and rows == [("r1",)]
    with pytest.raises(UserError, match="sql:"):
        query_readonly(warehouse, "SELECT * FROM no_such_table")
