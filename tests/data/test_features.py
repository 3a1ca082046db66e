"""Feature tables: staging filters, stable vocabularies, attributes, dense scaling, point-in-time counts."""

from __future__ import annotations

import collections
import datetime as dt
import math
from collections.abc import Iterator, Sequence

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.ingest import ensure_raw_tables
from rechub_store.warehouse import Warehouse

T0 = dt.datetime(2024, 1, 1)


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    wh = Warehouse(tmp_path_factory.mktemp("features") / "rechub.duckdb", threads=2)
    connection = wh.connect()
    yield connection
    connection.close()


def reset(con: duckdb.DuckDBPyConnection) -> None:
    for schema in ("raw", "staging", "features"):
        con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        con.execute(f"CREATE SCHEMA {schema}")
    ensure_raw_tables(con)


def add_events(con: duckdb.DuckDBPyConnection, events: Sequence[tuple], batch: int = 1) -> None:
    """events: (user, item, minute[, rating]); line numbers continue the batch."""
    (start,) = con.execute(
        "SELECT coalesce(max(line), 0) FROM raw.interactions WHERE batch_seq = ?", [batch]
    ).fetchone()
    rows = [
        (e[0], e[1], T0 + dt.timedelta(minutes=e[2]), e[3] if len(e) > 3 else None, batch, start + k + 1)
        for k, e in enumerate(events)
    ]
    con.executemany("INSERT INTO raw.interactions VALUES (?, ?, ?, ?, ?, ?)", rows)


def table(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


# ------------------------------------------------------------------ staging


def test_duplicates_keep_the_first_occurrence(con: duckdb.DuckDBPyConnection) -> None:
    reset(con)
    add_events(con, [("u", "a", 0, 2.0), ("u", "b", 1, 5.0), ("u", "a", 0, 5.0), ("u", "c", 2, 5.0)])
    add_events(con, [("u", "a", 0, 4.0)], batch=2)
    build_features(con, BuildParams(min_rating=3.0, min_seq_len=2, validation=False))
    # (u, a, 0) first appeared with rating 2.0, so the threshold drops it
    assert table(con, "SELECT item_id, rating, event_order FROM staging.interactions ORDER BY ts") == [
        ("b", 5.0, 1 * 10**12 + 2),
        ("c", 5.0, 1 * 10**12 + 4),
    ]
    build_features(con, BuildParams(min_seq_len=2, validation=False))
    assert table(con, "SELECT count(*) FROM staging.interactions WHERE item_id = 'a'") == [(1,)]


def k_core_reference(pairs: list[tuple[str, str, int]], k: int) -> set[tuple[str, str, int]]:
    events = set(pairs)
    while k > 0:
        users = collections.Counter(u for u, _, _ in events)
        items = collections.Counter(i for _, i, _ in events)
        kept = {e for e in events if users[e[0]] >= k and items[e[1]] >= k}
        if kept == events:
            break
        events = kept
    return events


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(
        st.tuples(st.sampled_from("uvwxyz"), st.sampled_from("abcdefg"), st.integers(0, 5)),
        min_size=1,
        max_size=60,
    ),
    k=st.integers(0, 4),
)
def test_k_core_equals_reference(con: duckdb.DuckDBPyConnection, events: list[tuple], k: int) -> None:
    reset(con)
    add_events(con, events)
    build_features(con, BuildParams(k_core=k))
    got = set(
        table(
            con,
            "SELECT user_id, item_id, datediff('minute', TIMESTAMP '2024-01-01', ts) "
            "FROM staging.interactions",
        )
    )
    assert got == k_core_reference(events, k)


# ------------------------------------------------------------------ vocabularies


def test_vocabularies_are_stable_across_builds(con: duckdb.DuckDBPyConnection) -> None:
    reset(con)
    add_events(con, [("u2", "b", 0), ("u2", "c", 1), ("u2", "a", 2), ("u1", "b", 0), ("u1", "d", 3)])
    con.execute("INSERT INTO raw.item_tags VALUES ('b', 'rock', 1, 1), ('c', 'jazz', 1, 2)")
    con.execute("INSERT INTO raw.user_attributes VALUES ('u1', 'city', 'Oslo', 'sparse', 1, 1)")
    build_features(con, BuildParams())
    before = {
        t: set(table(con, f"SELECT * FROM features.{t}"))
        for t in ("vocab_user_id", "vocab_item_id", "vocab_tag", "vocab_attribute")
    }
    assert sorted(before["vocab_item_id"]) == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]

    # new users and items, some sorting before the old ones; one old item disappears from the data
    con.execute("DELETE FROM raw.interactions WHERE item_id = 'd'")
    add_events(con, [("u0", "0", 5), ("u0", "b", 6), ("u3", "zz", 7)], batch=2)
    con.execute("INSERT INTO raw.item_tags VALUES ('0', 'ambient', 2, 1)")
    con.execute("INSERT INTO raw.user_attributes VALUES ('u0', 'city', 'Bergen', 'sparse', 2, 1)")
    build_features(con, BuildParams())
    for name, old in before.items():
        now = set(table(con, f"SELECT * FROM features.{name}"))
        assert old <= now, name  # every old (value, code) kept, including item d
        new_codes = sorted(r[-1] for r in now - old)
        old_max = max((r[-1] for r in old), default=0)
        assert all(c > old_max for c in new_codes), name
    assert sorted(set(table(con, "SELECT * FROM features.vocab_item_id")) - before["vocab_item_id"]) == [
        ("0", 5),
        ("zz", 6),
    ]
    assert table(con, "SELECT value, code FROM features.vocab_city ORDER BY code") == [
        ("Oslo", 1),
        ("Bergen", 2),
    ]


def test_a_store_from_before_the_single_vocabulary_keeps_its_codes(con: duckdb.DuckDBPyConnection) -> None:
    """Stores built when each vocabulary table numbered its own values have no features.vocabulary:
    the first build seeds it from those tables (sql/seeds/vocabulary.sql), so no code moves."""
    reset(con)
    add_events(con, [("u1", "a", 0), ("u1", "b", 1), ("u2", "b", 2)])
    con.execute("INSERT INTO raw.item_tags VALUES ('a', 'rock', 1, 1), ('b', 'jazz', 1, 2)")
    con.execute("INSERT INTO raw.user_attributes VALUES ('u1', 'city', 'Oslo', 'sparse', 1, 1)")
    build_features(con, BuildParams())
    # the older layout, with codes that value order would not give (appended over several builds)
    con.execute("DROP TABLE features.vocabulary")
    for t in ("vocab_user_id", "vocab_item_id", "vocab_tag", "vocab_attribute"):
        con.execute(f"UPDATE features.{t} SET code = code + 10")
    old = {t: set(table(con, f"SELECT * FROM features.{t}")) for t in ("vocab_item_id", "vocab_attribute")}
    add_events(con, [("u3", "0", 5)], batch=2)
    con.execute("INSERT INTO raw.user_attributes VALUES ('u3', 'city', 'Bergen', 'sparse', 2, 1)")
    build_features(con, BuildParams())
    assert set(table(con, "SELECT * FROM features.vocab_item_id")) == old["vocab_item_id"] | {("0", 13)}
    assert set(table(con, "SELECT * FROM features.vocab_attribute")) == old["vocab_attribute"] | {
        ("user", "city", "Bergen", 12)
    }
    assert sorted(table(con, "SELECT * FROM features.vocab_tag")) == [("jazz", 11), ("rock", 12)]
    assert sorted(table(con, "SELECT * FROM features.vocab_user_id")) == [("u1", 11), ("u2", 12), ("u3", 13)]


def test_interactions_only_data(con: duckdb.DuckDBPyConnection) -> None:
    reset(con)
    add_events(con, [("u", i, m) for m, i in enumerate("abcd")])
    report = build_features(con, BuildParams())
    assert report.vocab_views == []
    assert table(con, "SELECT count(*) FROM features.user_sparse") == [(0,)]
    assert table(con, "SELECT count(*) FROM features.item_tags") == [(0,)]
    assert table(con, "SELECT DISTINCT name FROM features.user_dense") == [("event_count",)]


# ------------------------------------------------------------------ attributes, dense, tags


def test_attributes_latest_value_scaling_and_views(con: duckdb.DuckDBPyConnection) -> None:
    reset(con)
    add_events(con, [("u1", "a", 0), ("u1", "b", 1), ("u1", "c", 2), ("u2", "a", 3)])
    con.execute(
        """INSERT INTO raw.user_attributes VALUES
        ('u1', 'gender', 'F', 'sparse', 1, 1), ('u1', 'age', '20', 'dense', 1, 2),
        ('u2', 'gender', 'M', 'sparse', 1, 3), ('u2', 'age', '60', 'dense', 1, 4),
        ('u1', 'age', '30', 'dense', 2, 1),             -- a later batch wins
        ('u1', 'category', 'x', 'sparse', 1, 5),        -- same name as an item attribute
        ('nobody', 'age', '99', 'dense', 1, 6),         -- no interactions: not a user of the store
        ('u2', 'bad-name', 'q', 'sparse', 1, 7)"""
    )
    con.execute(
        """INSERT INTO raw.item_attributes VALUES
        ('a', 'category', 'book', 'sparse', 1, 1), ('b', 'category', 'film', 'sparse', 1, 2),
        ('a', 'price', '10', 'dense', 1, 3), ('b', 'price', '30', 'dense', 1, 4),
        ('c', 'price', 'n/a', 'dense', 1, 5),
        ('a', 'title', 'Some title', 'text', 1, 6)"""
    )
    con.execute(
        "INSERT INTO raw.item_tags VALUES "
        "('a', 'y', 1, 1), ('a', 'x', 1, 2), ('a', 'y', 2, 1), ('b', 'x', 1, 3)"
    )
    report = build_features(con, BuildParams())

    assert table(
        con, "SELECT entity, name, transform, min_value, max_value FROM features.dense_scaling ORDER BY ALL"
    ) == [
        ("item", "popularity", "log1p", 0.0, math.log(1 + 2)),
        ("item", "price", "identity", 10.0, 30.0),
        ("user", "age", "identity", 30.0, 60.0),
        ("user", "event_count", "log1p", 0.0, math.log(1 + 3)),
    ]
    dense = dict(
        ((u, n), v)
        for u, n, v in table(
            con,
            "SELECT u.value, d.name, d.value FROM features.user_dense d "
            "JOIN features.vocab_user_id u ON u.code = d.user_code",
        )
    )
    assert dense[("u1", "age")] == 0.0 and dense[("u2", "age")] == 1.0
    assert dense[("u1", "event_count")] == pytest.approx(1.0)
    assert dense[("u2", "event_count")] == pytest.approx(math.log(2) / math.log(4))
    assert table(
        con,
        "SELECT i.value, d.value FROM features.item_dense d "
        "JOIN features.vocab_item_id i ON i.code = d.item_code WHERE name = 'price' ORDER BY 1",
    ) == [("a", 0.0), ("b", 1.0)]

    assert report.vocab_views == ["vocab_gender", "vocab_item_category", "vocab_user_category"]
    assert report.skipped_views == ["user.bad-name"]
    assert table(con, "SELECT * FROM features.vocab_gender ORDER BY code") == [("F", 1), ("M", 2)]
    assert table(con, "SELECT * FROM features.vocab_item_category ORDER BY code") == [
        ("book", 1),
        ("film", 2),
    ]
    sparse = table(
        con,
        "SELECT u.value, s.name, s.code FROM features.user_sparse s "
        "JOIN features.vocab_user_id u ON u.code = s.user_code ORDER BY ALL",
    )
    assert ("u1", "gender", 1) in sparse and ("u2", "gender", 2) in sparse

    assert table(
        con,
        "SELECT i.value, t.tag_codes FROM features.item_tags t "
        "JOIN features.vocab_item_id i ON i.code = t.item_code ORDER BY 1",
    ) == [
        ("a", [1, 2]),
        ("b", [1]),
    ]
    # a view of an attribute that vanished is dropped by the next build
    con.execute("DELETE FROM raw.user_attributes WHERE name = 'gender'")
    con.execute("DELETE FROM features.vocabulary WHERE name = 'gender'")  # simulate a fresh store
    build_features(con, BuildParams())
    views = {r[0] for r in table(con, "SELECT view_name FROM duckdb_views() WHERE schema_name = 'features'")}
    assert "vocab_gender" not in views and "vocab_user_category" in views


def test_item_popularity_excludes_held_out_targets(con: duckdb.DuckDBPyConnection) -> None:
    reset(con)
    add_events(
        con, [("u1", "a", 0), ("u1", "b", 1), ("u1", "c", 2), ("u1", "d", 3), ("u2", "d", 0), ("u2", "c", 1)]
    )
    build_features(con, BuildParams())
    got = table(
        con,
        "SELECT i.value, n_events, n_train FROM features.item_popularity p "
        "JOIN features.vocab_item_id i ON i.code = p.item_code ORDER BY 1",
    )
    # u1: c is the validation target, d the test target; u2 is too short, its events all count
    assert got == [("a", 1, 1), ("b", 1, 1), ("c", 2, 1), ("d", 2, 1)]


# ------------------------------------------------------------------ point-in-time


def test_point_in_time_counts_only_strictly_earlier_events(con: duckdb.DuckDBPyConnection) -> None:
    reset(con)
    # u1's events at minutes 0, 5, 5, 9, 9; item b is also consumed by u2 at minutes 5 (tie) and 20 (later)
    add_events(
        con,
        [
            ("u1", "a", 0),
            ("u1", "b", 5),
            ("u1", "c", 5),
            ("u1", "d", 9),
            ("u1", "b", 9),
            ("u2", "b", 5),
            ("u2", "b", 20),
            ("u2", "x", 1),
            ("u2", "y", 2),
        ],
    )
    build_features(con, BuildParams(validation=False, min_seq_len=2))
    rows = table(
        con,
        """
        SELECT i.value, s.pos, s.user_event_count, s.item_popularity,
               s.user_event_count_scaled, s.item_popularity_scaled
        FROM features.samples s JOIN features.vocab_user_id u ON u.code = s.user_code
        JOIN features.vocab_item_id i ON i.code = s.target_item_code WHERE u.value = 'u1' ORDER BY s.pos""",
    )
    counts = [(item, pos, uc, ip) for item, pos, uc, ip, _, _ in rows]
    assert counts == [("b", 1, 1, 0), ("c", 2, 1, 0), ("d", 3, 3, 0), ("b", 4, 3, 2)]
    for *_, us, ips in rows:
        assert 0.0 <= us <= 1.0 and 0.0 <= ips <= 1.0


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(
        st.tuples(st.sampled_from("uvw"), st.sampled_from("abcd"), st.integers(0, 4)), min_size=1, max_size=40
    )
)
def test_point_in_time_never_counts_the_sample_or_later(
    con: duckdb.DuckDBPyConnection, events: list[tuple]
) -> None:
    reset(con)
    add_events(con, events)
    build_features(con, BuildParams(validation=False, min_seq_len=2))
    distinct = set(events)
    for user, item, minute, uc, ip in table(
        con,
        """
        SELECT u.value, i.value, datediff('minute', TIMESTAMP '2024-01-01', s.event_ts),
               s.user_event_count, s.item_popularity
        FROM features.samples s JOIN features.vocab_user_id u ON u.code = s.user_code
        JOIN features.vocab_item_id i ON i.code = s.target_item_code""",
    ):
        assert uc == sum(1 for u, _, m in distinct if u == user and m < minute)
        assert ip == sum(1 for _, i, m in distinct if i == item and m < minute)
