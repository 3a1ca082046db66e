"""The SQL model runner: discovery, dependency order, atomic swap, audits, --select, meta.builds, CLI."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data import sqlmodels
from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.ingest import ensure_raw_tables
from rechub_store.errors import UserError
from rechub_store.paths import SQL_DIR
from rechub_store.warehouse import Warehouse

T0 = dt.datetime(2024, 1, 1)


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def seed_events(con: duckdb.DuckDBPyConnection, users: int = 4, per_user: int = 5, batch: int = 1) -> None:
    ensure_raw_tables(con)
    rows = [
        (f"u{u}", f"i{(u + k) % 7}", T0 + dt.timedelta(hours=k), 4.0, batch, u * per_user + k + 1)
        for u in range(users)
        for k in range(per_user)
    ]
    con.executemany("INSERT INTO raw.interactions VALUES (?, ?, ?, ?, ?, ?)", rows)


def snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    tables = con.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
        "WHERE schema_name IN ('staging', 'features')"
    ).fetchall()
    return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for (t,) in tables}


# ------------------------------------------------------------------ discovery and order


def test_references_ignore_comments_and_strings() -> None:
    sql = """
    -- reads features.c in a comment only
    /* and staging.b in a block comment */
    select 'features.c' as s, x.y from staging.a x join "features"."d" on true
    """
    refs = [r[2] for r in sqlmodels._references(sql, ["staging.a", "staging.b", "features.c", "features.d"])]
    assert refs == ["staging.a", "features.d"]


def test_order_follows_references_and_detects_cycles(tmp_path: Path) -> None:
    write(tmp_path, "staging/a.sql", "select 1 as x")
    write(tmp_path, "features/c.sql", "select * from features.b join staging.a using (x)")
    write(tmp_path, "features/sub/b.sql", "-- one row = x\nselect x from staging.a;\n")
    models = sqlmodels.discover(tmp_path)
    assert [m.name for m in sqlmodels.order(models)] == ["staging.a", "features.b", "features.c"]
    assert [m.name for m in sqlmodels.plan(models, "b")] == ["features.b", "features.c"]
    with pytest.raises(UserError, match="unknown model"):
        sqlmodels.plan(models, "nope")
    write(tmp_path, "staging/a.sql", "select x from features.c")
    with pytest.raises(UserError, match="cycle"):
        sqlmodels.order(sqlmodels.discover(tmp_path))


def test_model_must_be_one_select_and_self_reads_need_a_header(tmp_path: Path) -> None:
    write(tmp_path, "staging/a.sql", "select 1; select 2")
    with pytest.raises(UserError, match="one SELECT"):
        sqlmodels.discover(tmp_path)
    write(tmp_path, "staging/a.sql", "select * from staging.a")
    with pytest.raises(UserError, match="self"):
        sqlmodels.discover(tmp_path)
    write(
        tmp_path, "staging/a.sql", "-- self: (n INTEGER)\nselect coalesce(max(n), 0) + 1 as n from staging.a"
    )
    assert sqlmodels.discover(tmp_path)["staging.a"].refs == frozenset()


def test_self_model_reads_its_previous_version(tmp_path: Path, warehouse: Warehouse) -> None:
    write(
        tmp_path,
        "staging/counter.sql",
        "-- self: (n INTEGER)\nselect (coalesce(max(n), 0) + 1)::INTEGER as n from staging.counter",
    )
    with warehouse.session() as con:
        for expected in (1, 2, 3):
            sqlmodels.run(con, variables={}, sql_dir=tmp_path)
            assert con.execute("SELECT n FROM staging.counter").fetchall() == [(expected,)]


def test_seed_is_the_first_version_only_when_its_tables_exist(tmp_path: Path, warehouse: Warehouse) -> None:
    counter = (
        "-- self: (n INTEGER)\n-- seed: seeds/counter.sql\n"
        "select (max(n) + 1)::INTEGER as n from staging.counter"
    )
    write(tmp_path, "staging/counter.sql", counter)
    write(tmp_path, "seeds/counter.sql", "select n from legacy.counter")  # not a model itself
    with warehouse.session() as con:
        sqlmodels.run(con, variables={}, sql_dir=tmp_path)  # legacy.counter missing: starts empty
        assert con.execute("SELECT n FROM staging.counter").fetchall() == [(None,)]
        con.execute("DROP TABLE staging.counter")
        con.execute("CREATE SCHEMA legacy; CREATE TABLE legacy.counter AS SELECT 41 AS n")
        sqlmodels.run(con, variables={}, sql_dir=tmp_path)
        assert con.execute("SELECT n FROM staging.counter").fetchall() == [(42,)]
        con.execute("UPDATE legacy.counter SET n = 0")  # read once: the model's own table exists now
        sqlmodels.run(con, variables={}, sql_dir=tmp_path)
        assert con.execute("SELECT n FROM staging.counter").fetchall() == [(43,)]
        # a seed that fails fails the build and leaves no empty table to be taken as the seeded one
        con.execute("DROP TABLE staging.counter; CREATE OR REPLACE TABLE legacy.counter AS SELECT 'x' AS n")
        with pytest.raises(UserError, match="counter"):
            sqlmodels.run(con, variables={}, sql_dir=tmp_path)
        assert not con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'staging' AND table_name = 'counter'"
        ).fetchone()[0]
    write(tmp_path, "staging/counter.sql", counter.replace("seeds/counter", "staging/counter"))
    with pytest.raises(UserError, match=r"must be a \.sql file in seeds/"):
        sqlmodels.discover(tmp_path)
    write(tmp_path, "staging/counter.sql", counter.replace("seeds/counter", "seeds/../../x"))
    with pytest.raises(UserError, match=r"must be a \.sql file in seeds/"):
        sqlmodels.discover(tmp_path)
    write(tmp_path, "staging/counter.sql", counter.replace("seeds/counter", "seeds/missing"))
    with pytest.raises(UserError, match="not found"):
        sqlmodels.discover(tmp_path)
    write(tmp_path, "staging/counter.sql", "-- seed: seeds/counter.sql\nselect 1 as n")
    with pytest.raises(UserError, match="needs a `-- self:"):
        sqlmodels.discover(tmp_path)


# ------------------------------------------------------------------ failures leave the previous build


def test_failed_model_leaves_previous_tables_unchanged(tmp_path: Path, warehouse: Warehouse) -> None:
    broken = tmp_path / "sql"
    shutil.copytree(SQL_DIR, broken)
    write(broken, "features/splits/samples_test.sql", "-- boom\nselect error('deliberate failure') as x")
    with warehouse.session() as con:
        seed_events(con)
        first = build_features(con, BuildParams())
        before = snapshot(con)
        seed_events(con, users=2, per_user=6, batch=2)  # new data that the failed build would have used
        with pytest.raises(UserError) as info:
            build_features(con, BuildParams(), sql_dir=broken)
        message = str(info.value)
        assert "samples_test.sql" in message and "deliberate failure" in message and "\n" not in message
        assert snapshot(con) == before
        assert not con.execute("SELECT * FROM duckdb_tables() WHERE table_name LIKE '__tmp_%'").fetchall()
        status = con.execute("SELECT build_id, status, error FROM meta.builds ORDER BY started_at").fetchall()
        assert status[0][:2] == (first.build_id, "success")
        assert status[1][1] == "failed" and "deliberate failure" in status[1][2]
        json.loads(con.execute("SELECT models FROM meta.builds WHERE status = 'failed'").fetchone()[0])
        # later models were not run: the failed build recorded only the models before samples_test
        failed_models = json.loads(
            con.execute("SELECT models FROM meta.builds WHERE status = 'failed'").fetchone()[0]
        )
        assert "features.samples_test" not in failed_models and "features.split_report" not in failed_models
        # and the store still builds from the real models
        build_features(con, BuildParams())
        assert snapshot(con) != before


def test_failed_audit_fails_the_build(tmp_path: Path, warehouse: Warehouse) -> None:
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)
    write(
        sql, "audits/always_fails.sql", "-- must return no rows\nselect user_code from features.samples_test"
    )
    with warehouse.session() as con:
        seed_events(con)
        build_features(con, BuildParams())
        before = snapshot(con)
        with pytest.raises(UserError, match="audit always_fails failed"):
            build_features(con, BuildParams(neg_ratio=2), sql_dir=sql)
        assert snapshot(con) == before


def test_build_without_interactions_is_a_user_error(warehouse: Warehouse) -> None:
    with warehouse.session() as con, pytest.raises(UserError, match="ingest"):
        build_features(con, BuildParams())


# ------------------------------------------------------------------ --select


def test_select_rebuilds_the_model_and_downstream_only(warehouse: Warehouse) -> None:
    with warehouse.session() as con:
        seed_events(con)
        build_features(con, BuildParams(neg_ratio=2))
        vocab = con.execute("SELECT * FROM features.vocab_item_id ORDER BY code").fetchall()
        negatives = con.execute("SELECT * FROM features.negatives_train ORDER BY ALL").fetchall()
        seed_events(con, users=2, per_user=6, batch=2)  # staging would change, but it is upstream
        report = build_features(con, BuildParams(neg_ratio=3), select="negatives_train")
        assert [m.model for m in report.models] == ["features.negatives_train", "features.split_report"]
        assert con.execute("SELECT * FROM features.vocab_item_id ORDER BY code").fetchall() == vocab
        assert con.execute("SELECT count(*) FROM features.negatives_train").fetchone() == (
            3 * len(negatives) // 2,
        )
        (params,) = con.execute("SELECT params FROM meta.builds ORDER BY started_at DESC LIMIT 1").fetchone()
        assert json.loads(params)["select"] == "negatives_train"
        report = build_features(con, BuildParams(), select="features.samples")
        assert next(m.model for m in report.models) == "features.samples"
        assert "features.events" not in [m.model for m in report.models]


# ------------------------------------------------------------------ partitioned models


def test_partitioned_model_is_built_in_passes(tmp_path: Path, warehouse: Warehouse) -> None:
    write(tmp_path, "staging/a.sql", "select range::INTEGER as x from range(10)")
    write(
        tmp_path,
        "staging/b.sql",
        "-- partition: x, one per 3 rows of staging.a\n"
        "select x, getvariable('partition') as part, getvariable('n_partitions') as n from staging.a\n"
        "where x % getvariable('n_partitions') in (getvariable('partition'))",
    )
    write(tmp_path, "staging/c.sql", "select getvariable('n_partitions') as n from staging.b limit 1")
    models = sqlmodels.discover(tmp_path)
    assert models["staging.b"].partition == sqlmodels.Partitioning("x", 3, "staging.a")
    with warehouse.session() as con:
        result = sqlmodels.run(con, variables={}, sql_dir=tmp_path)
        assert {m.model: m.partitions for m in result.models} == {
            "staging.a": 1,
            "staging.b": 4,
            "staging.c": 1,
        }
        rows = con.execute("SELECT x, part, n FROM staging.b ORDER BY x").fetchall()
        assert rows == [(x, x % 4, 4) for x in range(10)]
        assert con.execute("SELECT n FROM staging.c").fetchall() == [(1,)]  # reset after the passes
        (models_json,) = con.execute("SELECT models FROM meta.builds WHERE status = 'success'").fetchone()
        assert json.loads(models_json)["staging.b"]["partitions"] == 4
        sqlmodels.run(con, variables={}, sql_dir=tmp_path, partitions={"b": 1})
        assert con.execute("SELECT DISTINCT n FROM staging.b").fetchall() == [(1,)]
        with pytest.raises(UserError, match="no `-- partition:` header"):
            sqlmodels.run(con, variables={}, sql_dir=tmp_path, partitions={"staging.a": 2})


def test_partition_header_must_be_well_formed_and_used(tmp_path: Path) -> None:
    write(tmp_path, "staging/a.sql", "select 1 as x")
    write(tmp_path, "staging/b.sql", "-- partition: x\nselect * from staging.a")
    with pytest.raises(UserError, match="bad partition header"):
        sqlmodels.discover(tmp_path)
    write(tmp_path, "staging/b.sql", "-- partition: x, one per 5 rows of staging.a\nselect * from staging.a")
    with pytest.raises(UserError, match="getvariable"):
        sqlmodels.discover(tmp_path)
    write(
        tmp_path,
        "staging/b.sql",
        "-- partition: x, one per 5 rows of staging.c\nselect * from staging.a\n"
        "where x % getvariable('n_partitions') in (getvariable('partition'))",
    )
    write(tmp_path, "staging/c.sql", "select 1 as x")
    with pytest.raises(UserError, match="does not read"):
        sqlmodels.discover(tmp_path)


@pytest.mark.parametrize("sampler", ["popularity", "uniform"])
def test_partitioned_negatives_equal_one_pass(warehouse: Warehouse, sampler: str) -> None:
    """Users who saw some, most and all of the 7 items: rejection sampling, top-ups and cycling
    all happen, and splitting users over passes changes nothing."""
    with warehouse.session() as con:
        seed_events(con, users=9, per_user=4)
        seed_events(con, users=5, per_user=7, batch=2)  # u0..u4 see every item
        ensure_raw_tables(con)
        con.execute(
            "INSERT INTO raw.interactions SELECT 'w' || range, 'i' || (range % 3), TIMESTAMP '2024-02-01' "
            "+ to_hours(range), NULL, 3, range + 1 FROM range(40)"
        )
        params = BuildParams(neg_ratio=5, neg_sampler=sampler, seed=3)
        one = build_features(con, params)
        assert {m.model: m.partitions for m in one.models}["features.negatives_train"] == 1
        expected = con.execute("SELECT * FROM features.negatives_train ORDER BY ALL").fetchall()
        assert expected
        for n in (2, 3, 7):
            report = build_features(con, params, partitions={"negatives_train": n})
            assert {m.model: m.partitions for m in report.models}["features.negatives_train"] == n
            assert con.execute("SELECT * FROM features.negatives_train ORDER BY ALL").fetchall() == expected
            assert report.split == one.split


# ------------------------------------------------------------------ CLI


def test_cli_build_features(warehouse: Warehouse) -> None:
    with warehouse.session() as con:
        seed_events(con, users=6)
    runner = CliRunner()
    result = runner.invoke(
        app, ["--warehouse", str(warehouse.path), "build-features", "--neg-ratio", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == {"train": 12, "valid": 6, "test": 6}
    assert report["params"]["neg_ratio"] == 2
    assert {m["model"] for m in report["models"]} >= {"features.samples_train", "features.negatives_train"}

    result = runner.invoke(
        app, ["--warehouse", str(warehouse.path), "build-features", "--no-validation", "--min-seq-len", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "features.samples_train" in result.stdout and "dropped" in result.stdout

    result = runner.invoke(
        app, ["--warehouse", str(warehouse.path), "build-features", "--neg-mode", "softmax"]
    )
    assert result.exit_code == 2
    assert "--neg-mode: expected one of pointwise, pairwise, listwise" in result.stderr
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["--warehouse", str(warehouse.path), "build-features", "--select", "nope"])
    assert result.exit_code == 2 and "unknown model" in result.stderr
