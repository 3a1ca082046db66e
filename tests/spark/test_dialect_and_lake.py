"""The parts of the Spark path that need no Spark: translation rules, the lake export, the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("sqlglot")

from rechub_store.data import sqlmodels
from rechub_store.data.build import BuildParams
from rechub_store.data.generate import generate_into
from rechub_store.data.incremental import FULL_BUILD_VARIABLES
from rechub_store.paths import SQL_DIR
from rechub_store.spark import dialect, lake, manifest
from rechub_store.warehouse import Warehouse

VARS = {"k": 3, "seed": 7}


def test_every_builtin_model_and_audit_translates() -> None:
    variables = {
        **BuildParams(max_seq_len=50, neg_ratio=4, seed=42).variables(),
        **FULL_BUILD_VARIABLES,
        "partition": 0,
        "n_partitions": 1,
    }
    for model in sqlmodels.discover(SQL_DIR).values():
        assert dialect.steps(model.sql, variables)[-1].view is None
    for _, text in sqlmodels.discover_audits(SQL_DIR).values():
        dialect.steps(text, variables)


def test_recursive_cte_becomes_an_iterated_step() -> None:
    sql = """with recursive r (n, x) as (
        select 0, 1 union all select n + 1, x * 2 from r where n < getvariable('k')
    )
    select * from r"""
    steps = dialect.steps(sql, VARS)
    assert [s.view for s in steps] == ["r", None]
    assert steps[0].columns == ("n", "x") and "n < 3" in steps[0].recursive_step


@pytest.mark.parametrize(
    ("duckdb_sql", "spark_fragment"),
    [
        (
            "select hash(x::UBIGINT) >> 11 from t",
            "SHIFTRIGHTUNSIGNED(RECHUB_DUCKDB_HASH(CAST(CAST(x AS BIGINT)",
        ),
        ("select hash(x) % 7 from t", "RECHUB_UMOD(RECHUB_DUCKDB_HASH("),
        (
            "select list(v order by k) from t",
            "TRANSFORM(ARRAY_SORT(COLLECT_LIST(STRUCT(k AS k0, v AS v))), s -> s.v)",
        ),
        ("select list_filter(l, lambda x, i: list_position(l, x) = i) from t", "ARRAY_DISTINCT(l)"),
        ("select l[1:getvariable('k')] from t", "SLICE(l, CAST(1 AS INT), (3) - (1) + 1)"),
        ("select l[i] from t", "TRY_ELEMENT_AT(l, CAST(i AS INT))"),
        ("select len(l) from t", "SIZE(l)"),
        ("select isfinite(x) from t", "ABS(x) < CAST('inf' AS DOUBLE)"),
    ],
)
def test_translation_rules(duckdb_sql: str, spark_fragment: str) -> None:
    def squeeze(text: str) -> str:
        return "".join(text.split())

    assert squeeze(spark_fragment) in squeeze(dialect.to_spark(duckdb_sql, VARS))


@pytest.mark.parametrize(
    "sql",
    [
        "select list_position(l, 3) from t",
        "select list_transform(l, lambda x, i: x + i) from t",
        "select hash(a, b) from t",
        "select getvariable('nope') from t",
    ],
)
def test_unportable_sql_is_refused(sql: str) -> None:
    with pytest.raises(dialect.UnportableSQL):
        dialect.to_spark(sql, VARS)


def test_raw_export_is_once_per_batch_and_complete(warehouse: Warehouse, tmp_path: Path) -> None:
    with warehouse.session() as con:
        generate_into(con, tmp_path / "gen", n_users=10, n_items=8, n_events=60, seed=1)
        assert lake.export_raw(con, tmp_path / "lake") == [1, 2, 3]
        assert lake.export_raw(con, tmp_path / "lake") == []
        n = con.execute("SELECT count(*) FROM raw.interactions").fetchone()[0]
        back = con.execute(
            f"SELECT count(*) FROM read_parquet('{tmp_path}/lake/raw/interactions/*.parquet')"
        ).fetchone()[0]
    assert back == n
    # a batch whose `batches` file is missing (export killed) is exported again
    (tmp_path / "lake" / "raw" / "batches" / "batch-00000002.parquet").unlink()
    with warehouse.session() as con:
        assert lake.export_raw(con, tmp_path / "lake") == [2]
    assert set(lake.raw_tables(tmp_path / "lake")) >= {"raw.interactions", "raw.batches"}


def test_manifest_switch_keeps_the_previous_build_only(tmp_path: Path) -> None:
    for n, build in enumerate(["b1", "b2", "b3"]):
        folder = manifest.build_dir(tmp_path, build) / "features.t"
        folder.mkdir(parents=True)
        previous = manifest.read(tmp_path)
        manifest.publish(
            tmp_path,
            {
                "build_id": build,
                "previous_build_id": previous["build_id"] if previous else None,
                "tables": {"features.t": str(folder.relative_to(tmp_path))},
                "n": n,
            },
        )
    assert manifest.read(tmp_path)["build_id"] == "b3"
    assert sorted(p.name for p in (manifest.features_dir(tmp_path) / "builds").iterdir()) == ["b2", "b3"]
    assert not list(manifest.features_dir(tmp_path).glob("*.tmp-*"))
    (manifest.features_dir(tmp_path) / manifest.MANIFEST).write_text("{not json")
    with pytest.raises(Exception, match="unreadable manifest"):
        manifest.read(tmp_path)
    assert json  # the manifest is plain JSON that any reader can open


def test_ingest_with_a_lake_writes_the_new_batch(warehouse: Warehouse, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rechub_store.cli import app

    events = tmp_path / "events.csv"
    events.write_text("u,i,t\na,x,2024-01-01T00:00:00\nb,y,2024-01-02T00:00:00\n", encoding="utf-8")
    args = ["--warehouse", str(warehouse.path), "ingest", "--lake", str(tmp_path / "lake"), "interactions"]
    args += [str(events), "--user-col", "u", "--item-col", "i", "--time-col", "t"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "1 raw batch(es) written" in res.output
    assert sorted(p.name for p in (tmp_path / "lake" / "raw" / "interactions").iterdir()) == [
        "batch-00000001.parquet"
    ]
    res = CliRunner().invoke(app, args)  # the same file again: nothing new for the lake either
    assert res.exit_code == 0 and "0 raw batch(es) written" in res.output
