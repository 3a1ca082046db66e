"""`rechub-store sql` against hostile queries: every one fails with one `error:` line and leaves every
file byte-identical (the warehouse, the analytics file, its history files, a canary file), and no new
file appears. Analysts' ordinary read queries keep working, from the published history included."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.publish.analytics import publish_analytics
from rechub_store.results.tables import RecommendationWriter
from rechub_store.warehouse import Warehouse

HOSTILE = [
    # writes hidden where the top-level statement type says SELECT
    "WITH x AS (COPY (SELECT 'junk') TO '{wh}/rechub.duckdb' (HEADER false)) SELECT 42",
    "WITH x AS (COPY (SELECT 'junk') TO '{wh}/analytics.duckdb' (HEADER false)) SELECT 42",
    "WITH x AS (COPY (SELECT '#!/bin/sh' AS l) TO '{tmp}/planted.sh' (HEADER false)) SELECT 42",
    "with x as (copy (select 1 as a) to '{history_file}' (format parquet)) select 1",
    "/* hi */ WiTh x AS (CoPy (SELECT 1) TO '{tmp}/p2.csv') SELECT 1 -- trailing",
    "WITH a AS (SELECT 1), b AS (COPY (SELECT 2) TO '{tmp}/p3.csv') SELECT * FROM a",
    "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3), "
    "w AS (COPY (SELECT * FROM r) TO '{tmp}/p4.csv') SELECT * FROM r",
    "SELECT * FROM (WITH y AS (COPY (SELECT 1) TO '{tmp}/p5.csv') SELECT 1)",
    "WITH x AS (INSERT INTO recommendations SELECT * FROM recommendations RETURNING *) SELECT 1",
    "WITH x AS (DELETE FROM recommendations RETURNING *) SELECT 1",
    "WITH x AS (UPDATE recommendations SET score = 0 RETURNING *) SELECT 1",
    # plain writes
    "COPY recommendations TO '{tmp}/dump.csv'",
    "COPY (SELECT * FROM recommendations) TO '{history_dir}/evil.parquet'",
    "EXPORT DATABASE '{tmp}/export'",
    "INSERT INTO recommendations SELECT * FROM recommendations",
    "UPDATE recommendations SET score = 0",
    "DELETE FROM recommendations",
    "DROP TABLE recommendations",
    "CREATE TABLE t AS SELECT 1",
    "CREATE TEMP TABLE t AS SELECT 1",
    "SELECT 1; DROP TABLE recommendations",
    "SELECT 1; COPY recommendations TO '{tmp}/dump2.csv'",
    "CHECKPOINT",
    "VACUUM",
    "CALL force_checkpoint()",
    # reading other files
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_text('/proc/self/environ')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/hosts')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM read_json_auto('/etc/passwd')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "FROM read_text(['/etc/passwd', '/etc/hosts'])",
    "SELECT * FROM read_text('file:///etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM glob('/root/*')",
    "SELECT * FROM glob('{wh}/*')",
    "SELECT * FROM glob('{history_dir}/*')",
    "SELECT * FROM read_text('{canary}')",
    "SELECT * FROM read_text('{history_dir}/../rechub.duckdb')",
    "SELECT * FROM read_parquet('{wh}/rechub.duckdb')",
    "SELECT * FROM parquet_metadata('{wh}/rechub.duckdb')",
    "SELECT * FROM read_blob('{wh}/rechub.duckdb')",
    "ATTACH '{wh}/rechub.duckdb' AS w",
    "ATTACH '{tmp}/new.duckdb' AS n",
    "SELECT 1; ATTACH '{wh}/rechub.duckdb' AS w (READ_ONLY); SELECT count(*) FROM w.raw.interactions",
    "SELECT * FROM query('SELECT * FROM read_text(''/etc/passwd'')')",
    # remote files and extensions
    "SELECT * FROM 'https://example.com/data.csv'",
    "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
    "SELECT * FROM read_csv('http://127.0.0.1:1/x.csv')",
    "INSTALL httpfs",
    "LOAD httpfs",
    "FORCE INSTALL httpfs FROM 'http://127.0.0.1:1'",
    "LOAD '{tmp}/evil.duckdb_extension'",
    "CREATE SECRET (TYPE s3, KEY_ID 'a', SECRET 'b')",
    # settings
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET lock_configuration = false",
    "SET allowed_directories = ['/']",
    "SET temp_directory = '{tmp}/spill'",
    "PRAGMA threads = 1",
    "SET VARIABLE x = 1",
    "PREPARE p AS SELECT 1",
    "DETACH analytics",
    # EXPLAIN of writes
    "EXPLAIN COPY recommendations TO '{tmp}/p6.csv'",
    "EXPLAIN ANALYZE WITH x AS (COPY (SELECT 1) TO '{tmp}/p7.csv') SELECT 1",
    "EXPLAIN (ANALYZE, FORMAT json) WITH x AS (COPY (SELECT 1) TO '{tmp}/p8.csv') SELECT 1",
    "EXPLAIN ANALYZE SELECT * FROM read_text('/etc/passwd')",
]

ALLOWED = [
    "SELECT count(*) FROM recommendations",
    "EXPLAIN SELECT 'copy'",
    "EXPLAIN ANALYZE SELECT count(*) FROM recommendations_history",
    "SELECT 'COPY x TO y' AS s, 'ATTACH' AS t",
    "/* COPY */ WITH a AS (SELECT 1 AS x) SELECT * FROM a -- INSERT",
    "FROM recommendations_history SELECT run_id, count(*) GROUP BY run_id",
    "DESCRIBE recommendations",
    "SHOW TABLES",
    "SUMMARIZE recommendations",
    "VALUES (1, 'a')",
    "SELECT 1 UNION ALL SELECT 2",
    "SELECT 1; SELECT 2",
]


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse with two published runs (no training needed), a canary file beside it."""
    root = tmp_path_factory.mktemp("gate")
    wh = Warehouse(root / "wh" / "rechub.duckdb", threads=1)
    con = wh.connect()
    try:
        con.execute(
            "CREATE TABLE features.vocab_user_id AS SELECT 'u' || i AS value, i::INTEGER AS code "
            "FROM range(1, 6) t(i)"
        )
        con.execute(
            "CREATE TABLE features.vocab_item_id AS SELECT 'i' || i AS value, i::INTEGER AS code "
            "FROM range(1, 9) t(i)"
        )
        con.execute("CREATE TABLE raw.interactions AS SELECT 'u1' AS user_id")
        for run in ("r1", "r2"):
            writer = RecommendationWriter(con, run, "m1")
            writer.add(np.arange(1, 6), np.tile(np.arange(1, 4), (5, 1)), np.ones((5, 3), np.float32))
            writer.commit()
            publish_analytics(con, wh, run)
    finally:
        con.close()
    (root / "canary.txt").write_text("do not touch\n")
    return root


def _sql(root: Path, query: str):
    return CliRunner().invoke(app, ["--warehouse", str(root / "wh" / "rechub.duckdb"), "sql", query])


def test_hostile_queries_fail_with_one_line_and_touch_no_file(published: Path, tally) -> None:
    wh = published / "wh"
    history = sorted((wh / "analytics-history").glob("*.parquet"))
    names = {
        "wh": wh,
        "tmp": published,
        "canary": published / "canary.txt",
        "history_dir": wh / "analytics-history",
        "history_file": history[0],
    }
    before = _files(published)
    failures = []
    for template in HOSTILE:
        query = template.format(**names)
        result = _sql(published, query)
        lines = [line for line in result.output.splitlines() if line.strip()]
        with contextlib.suppress(AssertionError), tally.case("hostile_queries"):
            assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
            assert "Traceback" not in result.output and _files(published) == before
            continue
        failures.append((query, result.exit_code, result.output[-500:]))
    assert not failures, failures
    assert _files(published) == before


def test_ordinary_reads_still_work(published: Path) -> None:
    for query in ALLOWED:
        result = _sql(published, query)
        assert result.exit_code == 0, (query, result.output)
    result = CliRunner().invoke(
        app,
        [
            "--warehouse",
            str(published / "wh" / "rechub.duckdb"),
            "sql",
            "SELECT run_id, count(*) AS n FROM recommendations_history GROUP BY 1 ORDER BY 1",
            "--json",
        ],
    )
    assert result.exit_code == 0 and '"r1"' in result.output and '"r2"' in result.output, result.output
