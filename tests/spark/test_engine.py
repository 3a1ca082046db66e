"""`build-features --engine spark`: every feature table from Spark equals DuckDB's, row for row.

One small generated log (timestamp ties, duplicate rows, awkward ids: unicode, quotes, commas, huge
numbers) plus a hand-written batch of the worst cases, built once by each engine with a k-core
(the recursive model iterates), a rating threshold and a seed above 2^32 (the hash path); the
Spark build runs through the CLI, as a user would run it."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from compare import differences
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data import sqlmodels
from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import generate_into
from rechub_store.data.incremental import FULL_BUILD_VARIABLES
from rechub_store.data.ingest import ingest_interactions
from rechub_store.errors import UserError
from rechub_store.spark import manifest
from rechub_store.spark.engine import build_features_spark, previous_version
from rechub_store.spark.lake import export_raw
from rechub_store.warehouse import Warehouse

pytestmark = pytest.mark.spark

PARAMS = BuildParams(k_core=2, min_rating=2.0, neg_ratio=3, seed=2**40 + 5, max_seq_len=6)

ODD = """user,item,ts,rating
"u,1",i'1,2024-01-01T00:00:00,5
"u,1",i'1,2024-01-01T00:00:00,5
"u,1",ÎtemΩ,2024-01-01T00:00:00,4
"u,1",i"2,2024-01-01T00:00:00,3
"u,1",18446744073709551616,2024-01-02T00:00:00,5
"u,1",i'1,2024-01-03T00:00:00,5
"u""2",i'1,2024-01-01T00:00:00,5
"u""2",ÎtemΩ,2024-01-01T00:00:00,5
"u""2",i"2,2024-01-02T00:00:00,
"u""2",18446744073709551616,2024-01-02T00:00:00,5
"""


LATER = """user,item,ts,rating
new-user-1,new-item-1,2024-02-01T00:00:00,5
new-user-1,i'1,2024-02-02T00:00:00,5
new-user-1,new-item-2,2024-02-03T00:00:00,5
"u,1",new-item-2,2024-02-04T00:00:00,5
"u""2",new-item-1,2024-02-05T00:00:00,5
"""


@pytest.fixture(scope="module")
def built(spark: object, spark_tmp: Path) -> tuple[Warehouse, Path, dict]:
    """The same raw batches built by DuckDB (in the warehouse) and by Spark (in the lake)."""
    wh = Warehouse(spark_tmp / "wh" / "rechub.duckdb", threads=2)
    lake = spark_tmp / "lake"
    odd = spark_tmp / "odd.csv"
    odd.write_text(ODD, encoding="utf-8")
    with wh.session() as con:
        generate_into(con, spark_tmp / "gen", n_users=50, n_items=30, n_events=1200, seed=5)
        ingest_interactions(
            con, odd, user_col="user", item_col="item", time_col="ts", rating_col="rating", max_reject_ratio=1
        )
        build_features(con, PARAMS)
    args = ["--warehouse", str(wh.path), "build-features", "--engine", "spark", "--lake", str(lake), "--json"]
    for name, value in PARAMS.to_dict().items():
        if name != "validation":
            args += [f"--{name.replace('_', '-')}", str(value)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    first = json.loads(res.stdout)
    # a later batch with new users and items: a second build on each engine keeps every code
    # of the first (stable vocabularies) and numbers the new values after them
    later = spark_tmp / "later.csv"
    later.write_text(LATER, encoding="utf-8")
    with wh.session() as con:
        ingest_interactions(
            con,
            later,
            user_col="user",
            item_col="item",
            time_col="ts",
            rating_col="rating",
            max_reject_ratio=1,
        )
        build_features(con, PARAMS)
        assert export_raw(con, lake) == [5]
    second = build_features_spark(spark, lake, PARAMS)
    return wh, lake, {**first, "second": second.to_dict()}


def test_every_feature_table_equals_duckdb(built: tuple[Warehouse, Path, dict]) -> None:
    """After two builds (the second over one more batch), every table of each engine is equal."""
    wh, lake, first = built
    report = first["second"]
    published = manifest.read(lake)
    assert published is not None and published["build_id"] == report["build_id"]
    assert published["previous_build_id"] == first["build_id"]
    assert first["exported_batches"] == [1, 2, 3, 4]  # interactions, users, items, the odd batch
    with duckdb.connect(str(wh.path), read_only=True) as con:
        ours = {
            f"{s}.{t}"
            for s, t in con.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() "
                "WHERE schema_name IN ('staging', 'features')"
            ).fetchall()
        }
        assert set(published["tables"]) == ours
        problems = [
            d for t in sorted(ours) for d in differences(con, t, manifest.table_path(lake, published, t))
        ]
        k_core_rounds = con.execute("SELECT count(*) FROM staging.interactions").fetchone()[0]
    assert not problems, "\n".join(problems)
    rows = {m["model"]: m["rows"] for m in report["models"]}
    assert rows["features.negatives_train"] > 0 and rows["staging.interactions"] == k_core_rounds
    assert report["audits"] and not any(report["audits"].values())
    assert report["split_report"]["neg_ratio"] == 3
    # the first build's codes are kept as they were; the new items are numbered after them
    before = manifest.build_dir(lake, first["build_id"]) / "features.vocab_item_id"
    after = manifest.table_path(lake, published, "features.vocab_item_id")
    with duckdb.connect() as con:
        moved, added = con.execute(
            f"SELECT count(*) FILTER (WHERE a.code <> b.code), count(*) FILTER (WHERE a.code IS NULL) "
            f"FROM read_parquet('{after}/*.parquet') b "
            f"LEFT JOIN read_parquet('{before}/*.parquet') a USING (value)"
        ).fetchone()
    assert moved == 0 and added == 2  # new-item-1, new-item-2


def test_an_older_lake_seeds_the_vocabulary_from_its_tables(
    built: tuple[Warehouse, Path, dict], spark: object, spark_tmp: Path
) -> None:
    """A published build without features.vocabulary (made before it existed): the next build's
    previous vocabulary is the seed over that build's four vocabulary tables, so no code moves;
    without one of them, it starts empty."""
    _, lake, _ = built
    published = manifest.read(lake)
    assert published is not None
    tables = {t: p for t, p in published["tables"].items() if t != "features.vocabulary"}
    older = {**published, "tables": tables}
    model = sqlmodels.discover()["features.vocabulary"]
    variables = {**PARAMS.variables(), **FULL_BUILD_VARIABLES}
    seeded = previous_version(spark, lake, older, model, variables, spark_tmp / "seed").collect()
    table = manifest.table_path(lake, published, "features.vocabulary")
    with duckdb.connect() as con:
        expected = set(con.execute(f"SELECT * FROM read_parquet('{table}/*.parquet')").fetchall())
    assert {tuple(r) for r in seeded} == expected and len(expected) > 50
    del tables["features.vocab_tag"]
    assert previous_version(spark, lake, older, model, variables, spark_tmp / "seed").isEmpty()


def test_failed_build_leaves_the_published_build(built: tuple[Warehouse, Path, dict], spark: object) -> None:
    """A model Spark cannot run stops the build: the manifest still names the previous build and the
    failed build's folder is gone."""
    _, lake, first = built
    report = first["second"]
    user = lake.parent / "bad_models"
    (user / "features").mkdir(parents=True)
    # sorts first among the models and reads only raw: the failure comes before any other model runs
    (user / "features" / "a_bad.sql").write_text(
        "select list_position([1, 2], 2) as p from raw.interactions\n"
    )
    with pytest.raises(UserError, match=r"features\.a_bad .*list_position"):
        build_features_spark(spark, lake, PARAMS, user_dir=user)
    assert manifest.read(lake)["build_id"] == report["build_id"]  # type: ignore[index]
    builds = sorted(p.name for p in (manifest.features_dir(lake) / "builds").iterdir())
    assert builds == sorted([first["build_id"], report["build_id"]])
    assert not list((lake / "scratch").glob("*/*"))


def test_spark_engine_needs_a_lake(warehouse: Warehouse) -> None:
    res = CliRunner().invoke(app, ["--warehouse", str(warehouse.path), "build-features", "--engine", "spark"])
    assert res.exit_code == 2 and "needs --lake" in res.output
