"""The set-wise audits (sql/audits/) pass on a clean build and catch each fault injected into it.

Each audit is run as the build runs it (its SQL over the feature tables), after one table was
broken on purpose, in a transaction that is rolled back: a rewritten audit that stopped seeing
a fault fails here.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import duckdb
import pytest

from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.ingest import ensure_raw_tables
from rechub_store.data.sqlmodels import SQL_DIR
from rechub_store.warehouse import Warehouse

T0 = dt.datetime(2024, 1, 1)


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    """A small built feature store: 6 users, ties in time, a repeated item, a short user."""
    wh = Warehouse(tmp_path_factory.mktemp("audits") / "rechub.duckdb", threads=1)
    connection = wh.connect()
    ensure_raw_tables(connection)
    rows = []
    line = 0
    for u, items in enumerate(["ABCDE", "ABAB", "CDEFGH", "AC", "EDCBA", "FFGA"]):
        for k, item in enumerate(items):
            line += 1
            hours = k - (k % 2) if u == 2 else k  # user 2: pairs of equal times
            rows.append((f"u{u}", item, T0 + dt.timedelta(hours=hours + u), 4.0, 1, line))
    connection.executemany("INSERT INTO raw.interactions VALUES (?, ?, ?, ?, ?, ?)", rows)
    report = build_features(connection, BuildParams(neg_ratio=2))
    assert set(report.audits) >= {"point_in_time", "sample_positions", "history_matches_events"}
    yield connection
    connection.close()


def violations(con: duckdb.DuckDBPyConnection, audit: str, fault: str) -> int:
    """Rows the audit returns after `fault` (SQL) is applied; the fault is rolled back after."""
    con.execute("BEGIN")
    try:
        if fault:
            con.execute(fault)
        sql = (SQL_DIR / "audits" / f"{audit}.sql").read_text()
        (n,) = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()  # type: ignore[misc]
    finally:
        con.execute("ROLLBACK")
    return int(n)


FAULTS = {
    "point_in_time": [
        # counts its own event (or a later one)
        "UPDATE features.samples SET user_event_count = user_event_count + 1 WHERE pos = 3",
        # counts one event too few: the event before the count is not the last one before event_ts
        "UPDATE features.samples SET user_event_count = user_event_count - 1 "
        "WHERE user_event_count > 0 "
        "AND user_code = (SELECT code FROM features.vocab_user_id WHERE value = 'u0')",
        "UPDATE features.samples SET user_event_count = -1 WHERE pos = 1",
        # the item's popularity reaches its total: it counted the sample itself
        "UPDATE features.samples SET item_popularity = item_popularity + 10 WHERE pos = 2",
        # the event times moved: the sample's count no longer matches them
        "UPDATE features.events SET ts = ts + INTERVAL 1 DAY WHERE seq = 0",
    ],
    "sample_positions": [
        "UPDATE features.samples_train SET pos = pos + 1 WHERE pos = 1",
        "UPDATE features.samples_test SET target_item_code = target_item_code % 8 + 1",
        "UPDATE features.samples_valid SET pos = pos - 1",
        "UPDATE features.samples_train SET pos = 0 WHERE pos = 1",
        "INSERT INTO features.samples_test SELECT * FROM features.samples_valid",
        "DELETE FROM features.user_history "
        "WHERE user_code = (SELECT min(user_code) FROM features.samples_test)",
        "UPDATE features.events SET item_code = item_code % 8 + 1 WHERE seq = 2",
    ],
    "negatives_not_positive": [
        # a negative that is the sample's own target, or an item of its history
        "UPDATE features.negatives_train n SET neg_item_code = s.target_item_code "
        "FROM features.samples_train s "
        "WHERE s.user_code = n.user_code AND s.pos = n.pos AND n.neg_rank = 1 AND s.pos = 2",
        "UPDATE features.negatives_train n SET neg_item_code = e.item_code FROM features.events e "
        "WHERE e.user_code = n.user_code AND e.seq = 0 AND n.neg_rank = 1",
        # a negative whose sample is not a training sample (past the range, or in a hole of it)
        "UPDATE features.negatives_train SET pos = pos + 10 WHERE neg_rank = 2",
        "DELETE FROM features.samples_train WHERE pos = 2",
        "DELETE FROM features.samples_train "
        "WHERE user_code = (SELECT min(user_code) FROM features.negatives_train)",
    ],
    "history_matches_events": [
        "UPDATE features.user_history SET item_codes = list_reverse(item_codes)",
        "UPDATE features.user_history SET ts_list = list_transform(ts_list, lambda t: t + INTERVAL 1 SECOND) "
        "WHERE n_events > 4",
        "UPDATE features.user_history SET n_events = n_events + 1 WHERE n_events = 2",
        "UPDATE features.user_history SET item_codes = item_codes[2:], ts_list = ts_list[2:] "
        "WHERE n_events = 4",
        "DELETE FROM features.events WHERE seq = 1",
        "INSERT INTO features.events SELECT * REPLACE (seq + 100 AS seq) FROM features.events WHERE seq = 0",
    ],
}


@pytest.mark.parametrize("audit", sorted(FAULTS))
def test_audit_passes_on_a_clean_build_and_catches_every_fault(
    con: duckdb.DuckDBPyConnection, audit: str
) -> None:
    assert violations(con, audit, "") == 0
    for fault in FAULTS[audit]:
        assert violations(con, audit, fault) > 0, fault


def test_every_built_in_audit_is_timed_in_the_build_report(con: duckdb.DuckDBPyConnection) -> None:
    (report,) = con.execute("SELECT report FROM meta.builds ORDER BY started_at DESC LIMIT 1").fetchone()  # type: ignore[misc]
    files = {p.stem for p in (SQL_DIR / "audits").glob("*.sql")}
    assert files <= set(json.loads(report)["audit_seconds"])
