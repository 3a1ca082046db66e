"""Publishing to a real PostgreSQL server: schema, contents, swap, history, retention, no-op, failures."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.errors import UserError
from rechub_store.faults import PUBLISH_FAULT_ENV as FAULT_ENV
from rechub_store.publish.server import mask_url, publish_to_url

pytestmark = pytest.mark.postgres

ODD_USERS = ["u1", "o'brien", 'say "hi", then; go', "tab\there", "nl\nuser", "ünï-çødé ✓", "", "1" * 30]


def _rows(url: str, sql: str, **params: object) -> list[tuple]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def _pk(url: str, table: str) -> list[str]:
    return [
        r[0]
        for r in _rows(
            url,
            """
        SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = CAST(:t AS regclass) AND i.indisprimary
        ORDER BY array_position(i.indkey, a.attnum)""",
            t=table,
        )
    ]


def _live_tables(url: str) -> list[str]:
    return [
        r[0]
        for r in _rows(url, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'recommendations\\_\\_r%'")
    ]


def test_publish_creates_keyed_tables_with_matching_rows(warehouse, pg_url, fill_results):
    written = fill_results(warehouse, "run-1", ODD_USERS, k=4)
    result = publish_to_url(warehouse, pg_url, retries=0)

    assert result.status == "published" and result.run_id == "run-1"
    assert result.rows == {
        "recommendations": 32,
        "recommendations_history": 32,
        "evaluation_metrics": 4,
        "model_runs": 1,
        "job_runs": 1,
    }
    served = _rows(pg_url, "SELECT * FROM recommendations ORDER BY user_id, rank")
    assert served == sorted(written, key=lambda r: (r[0], r[2]))
    assert _rows(pg_url, "SELECT * FROM recommendations_history ORDER BY user_id, rank") == served
    # proper types, keys and indexes
    types = dict(
        _rows(
            pg_url,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = :t",
            t=result.table,
        )
    )
    assert types == {
        "user_id": "text",
        "item_id": "text",
        "rank": "integer",
        "score": "double precision",
        "run_id": "text",
        "model_run_id": "text",
        "generated_at": "timestamp without time zone",
    }
    # the table behind the view is the run's history partition: key (run_id, user_id, rank), and
    # (user_id, rank) unique; history itself is keyed (run_id, user_id, rank)
    assert _pk(pg_url, result.table) == ["run_id", "user_id", "rank"]
    assert _rows(
        pg_url,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
        "AND contype = 'u'",
        t=result.table,
    ) == [("UNIQUE (user_id, rank)",)]
    assert _pk(pg_url, "recommendations_history") == ["run_id", "user_id", "rank"]
    assert _pk(pg_url, "evaluation_metrics") == [
        "run_id",
        "model_run_id",
        "split",
        "slice",
        "metric",
        "k",
        "index",
    ]
    assert _pk(pg_url, "model_runs") == ["model_run_id"]
    indexes = {r[0] for r in _rows(pg_url, "SELECT indexdef FROM pg_indexes")}
    assert any(f"ON public.{result.table} USING btree (item_id)" in d for d in indexes)
    assert _rows(
        pg_url, "SELECT table_type FROM information_schema.tables WHERE table_name = 'recommendations'"
    ) == [("VIEW",)]
    # metadata arrives, JSON as jsonb, passwords masked on the way
    assert _rows(pg_url, "SELECT params->>'epochs' FROM model_runs") == [("1",)]
    details = _rows(pg_url, "SELECT details->>'target' FROM job_runs")
    assert details == [("postgresql://bob:***@db/x",)]
    with warehouse.session() as con:
        meta = con.execute(
            "SELECT status, details, error FROM meta.job_runs WHERE job = 'publish'"
        ).fetchall()
    assert meta[0][0] == "success" and "127.0.0.1" in meta[0][1]


def test_next_run_replaces_current_and_history_keeps_last_n(warehouse, pg_url, fill_results):
    for day, run in enumerate(["run-1", "run-2", "run-3"], start=1):
        fill_results(warehouse, run, [f"u{i}" for i in range(day * 5)], k=3, day=day, model_run_id=f"m{day}")
        result = publish_to_url(warehouse, pg_url, retries=0, retention=2)
        assert _rows(pg_url, "SELECT run_id, count(*) FROM recommendations GROUP BY run_id") == [
            (run, day * 15)
        ]

    assert result.dropped_runs == ["run-1"]
    history = dict(_rows(pg_url, "SELECT run_id, count(*) FROM recommendations_history GROUP BY run_id"))
    assert history == {"run-2": 30, "run-3": 45}
    # each kept run is one partition of history; the view shows the newest; run-1's was dropped
    partitions = _rows(
        pg_url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = CAST('recommendations_history' AS regclass)",
    )
    assert sorted(_live_tables(pg_url)) == sorted(p[0] for p in partitions) and len(partitions) == 2
    assert result.table in _live_tables(pg_url)
    # metrics of every run stay (small; analysts chart them over time), once per run
    assert dict(_rows(pg_url, "SELECT run_id, count(*) FROM evaluation_metrics GROUP BY run_id")) == {
        "run-1": 4,
        "run-2": 4,
        "run-3": 4,
    }
    assert sorted(r[0] for r in _rows(pg_url, "SELECT model_run_id FROM model_runs")) == ["m1", "m2", "m3"]


def test_same_run_again_is_a_noop_and_a_rerun_replaces_it(warehouse, pg_url, fill_results):
    fill_results(warehouse, "nightly-2026-01-02", ["a", "b"], day=1)
    first = publish_to_url(warehouse, pg_url, retries=0)
    again = publish_to_url(warehouse, pg_url, retries=0)
    assert again.status == "unchanged" and _live_tables(pg_url) == [first.table]

    # the same run date scored again (new content): replaces the run, never duplicates it
    fill_results(warehouse, "nightly-2026-01-02", ["a", "b", "c"], day=2)
    rerun = publish_to_url(warehouse, pg_url, retries=0)
    assert rerun.status == "published"
    assert _rows(pg_url, "SELECT run_id, count(*) FROM recommendations_history GROUP BY run_id") == [
        ("nightly-2026-01-02", 9)
    ]
    assert _rows(pg_url, "SELECT count(*) FROM evaluation_metrics") == [(4,)]
    assert _rows(pg_url, "SELECT count(*) FROM rechub_publish_log") == [(1,)]
    assert _live_tables(pg_url) == [rerun.table]  # the run's previous partition is gone


@pytest.mark.parametrize("point", ["loaded", "before-swap"])
def test_failure_mid_load_leaves_the_server_as_it_was(warehouse, pg_url, fill_results, monkeypatch, point):
    fill_results(warehouse, "run-1", ["a", "b"], day=1)
    first = publish_to_url(warehouse, pg_url, retries=0)
    before = {
        t: _rows(pg_url, f"SELECT * FROM {t} ORDER BY 1, 2, 3")
        for t in (
            "recommendations",
            "recommendations_history",
            "evaluation_metrics",
            "job_runs",
            "rechub_publish_log",
        )
    }

    fill_results(warehouse, "run-2", ["a", "b", "c"], day=2)
    monkeypatch.setenv(FAULT_ENV, point)
    with pytest.raises(RuntimeError, match="fault injected at"):
        publish_to_url(warehouse, pg_url, retries=0)
    after = {t: _rows(pg_url, f"SELECT * FROM {t} ORDER BY 1, 2, 3") for t in before}
    assert after == before
    assert _live_tables(pg_url) == [first.table]  # no half-loaded table left behind

    monkeypatch.delenv(FAULT_ENV)
    assert publish_to_url(warehouse, pg_url, retries=0).status == "published"
    assert _rows(pg_url, "SELECT DISTINCT run_id FROM recommendations") == [("run-2",)]


def test_readers_see_old_or_new_and_are_not_held_up(warehouse, pg_url, fill_results):
    fill_results(warehouse, "run-1", [f"u{i}" for i in range(400)], k=5, day=1)
    publish_to_url(warehouse, pg_url, retries=0)
    fill_results(warehouse, "run-2", [f"u{i}" for i in range(600)], k=5, day=2)
    complete = {("run-1", 2000), ("run-2", 3000)}

    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    seen: list[tuple] = []
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with engine.connect() as conn:
            while not stop.is_set():
                t0 = time.perf_counter()
                rows = conn.execute(
                    sa.text("SELECT run_id, count(*) FROM recommendations GROUP BY run_id")
                ).all()
                conn.commit()
                latencies.append(time.perf_counter() - t0)
                seen.append(tuple(tuple(r) for r in rows))

    # A long analyst transaction that already read the table: it keeps seeing run-1, and it delays
    # the swap without making other readers queue behind the publish for long.
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as analyst:
        first = analyst.execute(sa.text("SELECT run_id, count(*) FROM recommendations GROUP BY run_id")).all()
        poller = threading.Thread(target=poll)
        poller.start()
        outcome: dict = {}
        publisher = threading.Thread(
            target=lambda: outcome.update(r=publish_to_url(warehouse, pg_url, retries=0))
        )
        publisher.start()
        time.sleep(2.0)
        assert publisher.is_alive()  # waiting for the analyst, not swapping under it
        again = analyst.execute(sa.text("SELECT run_id, count(*) FROM recommendations GROUP BY run_id")).all()
        assert first == again == [("run-1", 2000)]
        analyst.rollback()
    publisher.join(30)
    time.sleep(0.3)
    stop.set()
    poller.join(10)
    engine.dispose()

    assert outcome["r"].status == "published"
    assert seen and all(len(s) == 1 and s[0] in complete for s in seen)  # never a mix, never partial
    assert seen[-1] == (("run-2", 3000),)
    assert max(latencies) < 1.5, max(latencies)
    assert outcome["r"].swap_seconds < 1.0


def test_mask_url_hides_passwords():
    assert mask_url("postgresql://bob:s3cr%40t@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("postgresql+psycopg://bob:p@ss:w0rd@db/x") == "postgresql+psycopg://bob:***@db/x"
    assert "hunter2" not in mask_url("postgresql://db/x?user=bob&password=hunter2")
    assert mask_url("postgresql://bob@db/x") == "postgresql://bob@db/x"
    assert mask_url("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"


def test_unreachable_server_is_one_masked_line_and_non_zero_exit(warehouse, fill_results, pg_server):
    fill_results(warehouse, "run-1", ["a"], day=1)
    from pgserver import free_port

    url = f"postgresql://rechub:topsecret@127.0.0.1:{free_port()}/rechub"
    res = CliRunner().invoke(
        app, ["--warehouse", str(warehouse.path), "publish", "--to", url, "--retries", "1"]
    )
    assert res.exit_code == 2
    out = res.output.strip()
    assert (
        out.startswith("error: cannot publish to postgresql://rechub:***@127.0.0.1")
        and "gave up after 2 tries" in out
    )
    assert "topsecret" not in out and "Traceback" not in out and len(out.splitlines()) == 1
    with warehouse.session() as con:
        status, details, error = con.execute(
            "SELECT status, CAST(details AS VARCHAR), error FROM meta.job_runs WHERE job = 'publish'"
        ).fetchall()[0]
    assert status == "failed" and "topsecret" not in details + error and "***" in error


def test_retry_with_backoff_succeeds_when_the_server_comes_back(warehouse, fill_results, pg_server):
    from pgserver import LocalPostgres

    fill_results(warehouse, "run-1", ["a", "b"], day=1)
    server = LocalPostgres().start()
    try:
        server.stop()
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["r"] = publish_to_url(warehouse, server.url, retries=6, backoff_s=0.25)
            except Exception as exc:  # surfaced by the assertion below
                outcome["e"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(1.0)
        server.start()
        thread.join(60)
        assert "e" not in outcome, outcome.get("e")
        assert outcome["r"].status == "published" and outcome["r"].attempts > 1
        assert _rows(server.url, "SELECT count(*) FROM recommendations") == [(6,)]
    finally:
        server.destroy()


def test_server_restart_during_publish_is_retried(warehouse, fill_results, pg_url, pg_server, monkeypatch):
    fill_results(warehouse, "run-1", ["a", "b"], day=1)
    monkeypatch.setenv(FAULT_ENV, "loaded:sleep=1.5")  # pause after COPY so the restart hits mid-publish
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.update(r=publish_to_url(warehouse, pg_url, retries=5, backoff_s=0.5))
    )
    thread.start()
    time.sleep(0.7)
    pg_server.stop("fast")
    pg_server.start()
    thread.join(60)
    assert outcome["r"].status == "published" and outcome["r"].attempts >= 2
    assert _rows(pg_url, "SELECT run_id, count(*) FROM recommendations_history GROUP BY run_id") == [
        ("run-1", 6)
    ]


def test_schema_and_prefix_are_validated_and_used(warehouse, pg_url, fill_results):
    fill_results(warehouse, "run-1", ["a"], day=1)
    with pytest.raises(UserError, match="invalid identifier"):
        publish_to_url(warehouse, pg_url, schema="x; DROP TABLE y", retries=0)
    with pytest.raises(UserError, match="invalid identifier"):
        publish_to_url(warehouse, pg_url, prefix="bad-prefix", retries=0)
    result = publish_to_url(warehouse, pg_url, schema="recs", prefix="rh_", retries=0)
    assert _rows(pg_url, "SELECT count(*) FROM recs.rh_recommendations") == [(3,)]
    assert _rows(pg_url, "SELECT count(*) FROM recs.rh_rechub_publish_log") == [(1,)]
    assert result.table.startswith("rh_recommendations__r")


def test_cli_publish_json_and_sqlite_target(warehouse, fill_results, tmp_path):
    fill_results(warehouse, "run-1", ODD_USERS, day=1)
    url = f"sqlite:///{tmp_path / 'served.db'}"
    res = CliRunner().invoke(app, ["--warehouse", str(warehouse.path), "publish", "--to", url, "--json"])
    assert res.exit_code == 0, res.output
    assert '"status": "published"' in res.output
    res = CliRunner().invoke(app, ["--warehouse", str(warehouse.path), "publish", "--to", url])
    assert res.exit_code == 0 and "nothing to do" in res.output
    fill_results(warehouse, "run-2", ["x"], day=2)
    res = CliRunner().invoke(
        app, ["--warehouse", str(warehouse.path), "publish", "--to", url, "--retention", "1"]
    )
    assert res.exit_code == 0, res.output
    assert _rows(url, "SELECT run_id, count(*) FROM recommendations GROUP BY run_id") == [("run-2", 3)]
    assert _rows(url, "SELECT DISTINCT run_id FROM recommendations_history") == [("run-2",)]


def test_nothing_to_publish_is_a_clear_error(warehouse, pg_url):
    res = CliRunner().invoke(app, ["--warehouse", str(warehouse.path), "publish", "--to", pg_url])
    assert res.exit_code == 2 and "no warehouse at" in res.output, "a --warehouse typo is not a new warehouse"
    warehouse.connect().close()
    res = CliRunner().invoke(app, ["--warehouse", str(warehouse.path), "publish", "--to", pg_url])
    assert res.exit_code == 2 and "nothing to publish" in res.output


def test_data_the_server_rejects_is_a_one_line_error_and_changes_nothing(warehouse, pg_url, fill_results):
    fill_results(warehouse, "run-1", ["a"], day=1)
    publish_to_url(warehouse, pg_url, retries=0)
    before = _rows(pg_url, "SELECT * FROM recommendations_history ORDER BY 1, 2, 3")
    fill_results(warehouse, "run-2", ["ok", "nul\x00byte"], day=2)  # PostgreSQL text cannot hold NUL
    with pytest.raises(UserError, match=r"publish to .* failed: .*0x00") as info:
        publish_to_url(warehouse, pg_url, retries=3, backoff_s=5.0)  # data errors are not retried
    assert "\n" not in str(info.value)
    assert _rows(pg_url, "SELECT * FROM recommendations_history ORDER BY 1, 2, 3") == before


def test_schema_on_sqlite_is_not_retried_as_a_connection_error(warehouse, fill_results, tmp_path):
    fill_results(warehouse, "run-1", ["a"], day=1)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"failed: .*unknown database"):
        publish_to_url(warehouse, f"sqlite:///{tmp_path / 'x.db'}", schema="nope", retries=3, backoff_s=2.0)
    assert time.perf_counter() - t0 < 2.0


def test_a_duckdb_file_through_duckdb_engine_works_too(warehouse, fill_results, tmp_path):
    import duckdb

    served = tmp_path / "served.duckdb"
    fill_results(warehouse, "run-1", ["a", "b"], day=1)
    publish_to_url(warehouse, f"duckdb:///{served}", retries=0)
    fill_results(warehouse, "run-2", ["a", "b", "c"], day=2)
    publish_to_url(warehouse, f"duckdb:///{served}", retries=0)
    con = duckdb.connect(str(served), read_only=True)
    try:
        assert con.execute("SELECT run_id, count(*) FROM recommendations GROUP BY 1").fetchall() == [
            ("run-2", 9)
        ]
        assert con.execute(
            "SELECT run_id, count(*) FROM recommendations_history GROUP BY 1 ORDER BY 1"
        ).fetchall() == [("run-1", 6), ("run-2", 9)]
    finally:
        con.close()
