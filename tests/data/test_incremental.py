"""Incremental builds equal full builds: the same raw batches appended one at a time, built
incrementally in one warehouse and fully in another, give the same tables row for row."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rechub_store.data import sqlmodels
from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.ingest import ensure_raw_tables
from rechub_store.errors import UserError
from rechub_store.warehouse import Warehouse

T0 = dt.datetime(2024, 1, 1)
SCHEMAS = ("raw", "staging", "features")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[duckdb.DuckDBPyConnection, ...]]:
    """Two warehouses: one built incrementally, one fully; emptied before each example."""
    root = tmp_path_factory.mktemp("incremental")
    cons = tuple(Warehouse(root / f"{name}.duckdb", threads=1).connect() for name in ("inc", "full"))
    yield cons
    for con in cons:
        con.close()


def reset(con: duckdb.DuckDBPyConnection) -> None:
    for schema in SCHEMAS:
        con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        con.execute(f"CREATE SCHEMA {schema}")
    con.execute("DELETE FROM meta.builds")
    ensure_raw_tables(con)


def add_batch(con: duckdb.DuckDBPyConnection, seq: int, batch: dict[str, list[tuple]]) -> None:
    lines = iter(range(1, 10_000))
    rows = {
        "interactions": [
            (u, i, T0 + dt.timedelta(hours=h), r, seq, next(lines)) for u, i, h, r in batch["events"]
        ],
        "user_attributes": [(u, n, v, k, seq, next(lines)) for u, n, v, k in batch["user_attrs"]],
        "item_tags": [(i, t, seq, next(lines)) for i, t in batch["tags"]],
    }
    for table, values in rows.items():
        if values:
            marks = ", ".join("?" * len(values[0]))
            con.executemany(f"INSERT INTO raw.{table} VALUES ({marks})", values)


def tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        f"{s}.{t}"
        for s, t in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() "
            "WHERE schema_name IN ('staging', 'features') ORDER BY 1, 2"
        ).fetchall()
    ]


def contents(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    """Every staging and feature table, sorted; features.changed_users (what this build recomputed,
    empty in a full build) is the one table that differs by design."""
    return {
        t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
        for t in tables(con)
        if t != "features.changed_users"
    }


users = st.sampled_from([f"u{k}" for k in range(6)] + ["ü,'x"])
items = st.sampled_from([f"i{k}" for k in range(9)])
event = st.tuples(users, items, st.integers(0, 40), st.sampled_from([None, 1.0, 4.0, 5.0]))
batch = st.fixed_dictionaries(
    {
        "events": st.lists(event, min_size=0, max_size=25),
        "user_attrs": st.lists(
            st.tuples(
                users,
                st.sampled_from(["age", "country"]),
                st.sampled_from(["1", "7", "33", "x"]),
                st.just("dense"),
            ).map(lambda a: a if a[1] == "age" else (a[0], a[1], a[2], "sparse")),
            max_size=3,
        ),
        "tags": st.lists(st.tuples(items, st.sampled_from(["drama", "pop", "jazz"])), max_size=3),
    }
)
params = st.builds(
    BuildParams,
    min_seq_len=st.sampled_from([3, 4]),
    min_rating=st.sampled_from([None, 4.0]),
    neg_mode=st.sampled_from(["pointwise", "pairwise", "listwise"]),
    neg_ratio=st.sampled_from([1, 3]),
    neg_sampler=st.sampled_from(["uniform", "popularity"]),
    neg_refresh_drift=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 3),
)


# 6 examples keep CI's budget (each step is two builds); RECHUB_INCREMENTAL_EXAMPLES=100 to search harder
@settings(
    max_examples=int(os.environ.get("RECHUB_INCREMENTAL_EXAMPLES", "6")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=list(Phase)[:4],  # no shrinking: a failing example is printed as found
)
@given(first=batch, more=st.lists(batch, min_size=1, max_size=2), p=params)
def test_incremental_build_equals_full_build(
    pair: tuple[duckdb.DuckDBPyConnection, ...], first: dict, more: list[dict], p: BuildParams
) -> None:
    inc, full = pair
    for con in pair:
        reset(con)
    first["events"].append(("u0", "i0", 0, 5.0))  # never an empty first build
    for seq, b in enumerate([first, *more], start=1):
        for con in pair:
            add_batch(con, seq, b)
        done = []
        for con, incremental in ((inc, True), (full, False)):
            try:
                done.append(build_features(con, p, incremental=incremental))
            except UserError as exc:  # e.g. nothing left after the rating threshold: both must agree
                done.append(str(exc))
        report_inc, report_full = done
        assert isinstance(report_inc, str) == isinstance(report_full, str), done
        if isinstance(report_inc, str):
            return
        assert report_inc.mode == ("full" if seq == 1 else "incremental"), report_inc.mode_reason
        assert report_full.mode == "full"
        got, want = contents(inc), contents(full)
        assert got.keys() == want.keys()
        for table in want:
            assert got[table] == want[table], f"{table} after batch {seq} ({p})"


def test_incremental_keeps_other_users_rows_and_falls_back(tmp_path: Path) -> None:
    """A batch of one user's events rebuilds that user's rows only; what forbids an incremental
    build (changed parameters, k-core, --select) falls back to a full build and says why."""
    con = Warehouse(tmp_path / "w.duckdb", threads=1).connect()
    ensure_raw_tables(con)
    first = {
        "events": [
            (u, f"i{(k * 7 + n) % 20}", k, 5.0) for n, u in enumerate(["a", "b", "c"]) for k in range(12)
        ],
        "user_attrs": [],
        "tags": [],
    }
    add_batch(con, 1, first)
    p = BuildParams(neg_refresh_drift=1.0)
    assert build_features(con, p, incremental=True).mode == "full"
    before = con.execute("SELECT * FROM features.negatives_train ORDER BY ALL").fetchall()
    add_batch(con, 2, {"events": [("a", "i8", 50, 5.0), ("a", "i1", 51, 5.0)], "user_attrs": [], "tags": []})
    report = build_features(con, p, incremental=True)
    assert report.mode == "incremental" and report.mode_reason == "new batches 2..2"
    modes = {m.model: m.mode for m in report.models}
    assert modes["features.negatives_train"] == modes["features.events"] == "incremental"
    assert modes["features.samples"] == "full"
    (a,) = con.execute("SELECT code FROM features.vocab_user_id WHERE value = 'a'").fetchone()  # type: ignore[misc]
    assert con.execute("SELECT * FROM features.changed_users").fetchall() == [("a", a)]
    after = con.execute("SELECT * FROM features.negatives_train ORDER BY ALL").fetchall()
    assert [r for r in after if r[0] != a] == [r for r in before if r[0] != a]
    assert [r for r in after if r[0] == a] != [r for r in before if r[0] == a]

    assert build_features(con, BuildParams(neg_refresh_drift=0.5), incremental=True).mode_reason == (
        "build parameters changed: neg_refresh_drift"
    )
    assert "k-core" in build_features(con, BuildParams(k_core=2), incremental=True).mode_reason
    build_features(con, BuildParams(k_core=2), select="item_popularity")
    assert build_features(con, BuildParams(k_core=2), incremental=True).mode_reason.startswith("k-core")
    con.close()


def test_cli_incremental_and_full_refresh(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rechub_store.cli import app

    wh = Warehouse(tmp_path / "w.duckdb", threads=1)
    con = wh.connect()
    ensure_raw_tables(con)
    add_batch(
        con,
        1,
        {"events": [(u, f"i{k % 5}", k, 5.0) for u in "ab" for k in range(6)], "user_attrs": [], "tags": []},
    )
    con.close()
    runner = CliRunner()
    cli = ["--warehouse", str(wh.path), "--threads", "1", "build-features"]
    first = runner.invoke(app, [*cli, "--incremental", "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["mode_reason"] == "no previous build"
    again = runner.invoke(app, [*cli, "--incremental", "--json"])
    assert (json.loads(again.output)["mode"], json.loads(again.output)["mode_reason"]) == (
        "incremental",
        "no new batches",
    )
    both = runner.invoke(app, [*cli, "--incremental", "--full-refresh"])
    assert both.exit_code == 2 and "exclude each other" in both.output


def _leftovers(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        n
        for (n,) in con.execute(
            "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views() "
            "WHERE NOT internal"
        ).fetchall()
        if n.startswith(sqlmodels.TMP_PREFIX)
    ]


FIRST = {
    "events": [
        (u, f"i{(k * 5 + n) % 15}", k, 5.0) for n, u in enumerate(["a", "b", "c", "d"]) for k in range(10)
    ],
    "user_attrs": [],
    "tags": [],
}
SECOND = {
    "events": [("b", "i3", 60, 5.0), ("e", "i4", 61, 5.0), ("e", "i2", 62, 5.0)],
    "user_attrs": [],
    "tags": [],
}


def _full_build(path: Path, p: BuildParams) -> duckdb.DuckDBPyConnection:
    """FIRST then SECOND, fully built after each (the vocabularies are stable across builds)."""
    full = Warehouse(path, threads=1).connect()
    ensure_raw_tables(full)
    for seq, b in ((1, FIRST), (2, SECOND)):
        add_batch(full, seq, b)
        build_features(full, p)
    return full


def _built_first_then_second_added(path: Path, p: BuildParams) -> duckdb.DuckDBPyConnection:
    """FIRST built (the first build is full), SECOND ingested: the next build is incremental."""
    con = Warehouse(path, threads=1).connect()
    ensure_raw_tables(con)
    add_batch(con, 1, FIRST)
    build_features(con, p, incremental=True)
    add_batch(con, 2, SECOND)
    return con


def test_a_table_with_many_deleted_rows_is_rewritten_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past REWRITE_DEAD_SHARE an incremental model is copied into a new table instead of changed
    in place (nothing is applied in the swap), with the same rows."""
    p = BuildParams(neg_refresh_drift=1.0)
    con = _built_first_then_second_added(tmp_path / "inc.duckdb", p)
    applied: list[str] = []
    apply = sqlmodels._apply_delta
    monkeypatch.setattr(sqlmodels, "REWRITE_DEAD_SHARE", -1.0)  # every table counts as fragmented
    monkeypatch.setattr(sqlmodels, "_apply_delta", lambda c, m, t: applied.append(m.name) or apply(c, m, t))
    report = build_features(con, p, incremental=True)
    assert {m.model for m in report.models if m.mode == "incremental"} >= {
        "staging.interactions",
        "features.events",
    }
    assert applied == []
    full = _full_build(tmp_path / "full.duckdb", p)
    assert contents(con) == contents(full)
    con.close()
    full.close()


@pytest.mark.parametrize("fails", ["audit", "swap"])
def test_a_failed_incremental_build_keeps_the_previous_tables_and_a_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """An incremental build stores its incremental models as recomputed rows plus a view and
    changes their tables in place in the swap: a failure before the swap (an audit) or inside it
    (after two tables were already changed in place) leaves every table as the previous build
    left it, and no temporary table or view; the next build equals a full build."""
    p = BuildParams(neg_refresh_drift=1.0)
    con = _built_first_then_second_added(tmp_path / "inc.duckdb", p)
    before = contents(con)
    if fails == "audit":
        monkeypatch.setattr(
            sqlmodels, "discover_audits", lambda *a, **k: {"never": (tmp_path / "never.sql", "SELECT 1 AS v")}
        )
    else:
        applied: list[str] = []
        apply = sqlmodels._apply_delta

        def fail_third(
            con: duckdb.DuckDBPyConnection, model: sqlmodels.Model, targets: dict[str, str]
        ) -> None:
            if len(applied) == 2:
                raise duckdb.IOException("No space left on device")
            apply(con, model, targets)
            applied.append(model.name)

        monkeypatch.setattr(sqlmodels, "_apply_delta", fail_third)
    with pytest.raises(UserError):
        build_features(con, p, incremental=True)
    assert contents(con) == before
    assert _leftovers(con) == []
    monkeypatch.undo()
    report = build_features(con, p, incremental=True)
    assert report.mode == "incremental"
    assert {m.model for m in report.models if m.mode == "incremental"} >= {
        "staging.interactions",
        "features.events",
    }
    assert _leftovers(con) == []
    full = _full_build(tmp_path / "full.duckdb", p)
    assert contents(con) == contents(full)
    con.close()
    full.close()
