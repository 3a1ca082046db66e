"""`score --engine spark` writes the same recommendations as local scoring (annoy and exact), and
they reach analysts through the existing publish path."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import generate_into
from rechub_store.pipeline.train import train
from rechub_store.results.score import score
from rechub_store.training.config import TrainConfig
from rechub_store.warehouse import Warehouse

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def trained(spark: object, spark_tmp: Path) -> Warehouse:
    wh = Warehouse(spark_tmp / "score" / "rechub.duckdb", threads=2)
    with wh.session() as con:
        generate_into(con, spark_tmp / "score-gen", n_users=120, n_items=60, n_events=2400, seed=11)
        build_features(con, BuildParams())
    train(wh, TrainConfig(model="youtubednn", epochs=1, embed_dim=8, batch_size=256, progress=False))
    return wh


def _run(wh: Warehouse, run_id: str) -> list[tuple]:
    with duckdb.connect(str(wh.path), read_only=True) as con:
        return con.execute(
            "SELECT user_id, item_id, rank, score FROM recommendations_history WHERE run_id = ? "
            "ORDER BY user_id, rank",
            [run_id],
        ).fetchall()


@pytest.mark.parametrize("index", ["annoy", "exact"])
def test_spark_scoring_equals_local(trained: Warehouse, index: str) -> None:
    local = score(trained, run_id=f"local-{index}", k=7, index=index)
    res = CliRunner().invoke(
        app,
        [
            "--warehouse",
            str(trained.path),
            "score",
            "--engine",
            "spark",
            "--index",
            index,
            "--k",
            "7",
            "--run-id",
            f"spark-{index}",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    ours, theirs = _run(trained, f"local-{index}"), _run(trained, f"spark-{index}")
    assert len(theirs) == local.rows > 0
    assert theirs == ours
    assert not list(trained.tmp_dir.glob("score-*"))  # the job's files are removed


def test_spark_run_is_published_like_a_local_one(trained: Warehouse) -> None:
    """The Spark run is the current `recommendations`; `publish` copies it to another database."""
    target = trained.root / "copy.duckdb"
    res = CliRunner().invoke(
        app, ["--warehouse", str(trained.path), "publish", "--to", f"duckdb:///{target}"]
    )
    assert res.exit_code == 0, res.output
    with duckdb.connect(str(target), read_only=True) as con:
        runs = con.execute("SELECT DISTINCT run_id FROM recommendations").fetchall()
    assert runs == [("spark-exact",)]
