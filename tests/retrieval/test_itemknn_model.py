"""`train --model itemknn`: a registered model run served by score, evaluate and publish, with
its item-to-item neighbours in `similar_items`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data.readers import FeatureStore
from rechub_store.pipeline.itemknn import load_knn
from rechub_store.publish.analytics import publish_analytics
from rechub_store.training import registry
from rechub_store.warehouse import Warehouse


@pytest.fixture(scope="module")
def knn_warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("knn")
    wh = ["--warehouse", str(root / "rechub.duckdb")]
    runner = CliRunner()
    for args in (
        ["generate", str(root / "data"), "--users", "300", "--items", "120", "--events", "6000", "--ingest"],
        ["build-features"],
    ):
        res = runner.invoke(app, [*wh, *args])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*wh, "train", "--model", "itemknn", "--json"])
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)
    assert run["model"] == "itemknn" and 0 < run["best_metric"] <= 1
    # what the nightly job runs after training (its HTML report aside): score (annoy asked for, exact
    # used), evaluate beside the baselines, publish the analytics file
    for args in (
        ["score", "--k", "10", "--index", "annoy", "--run-id", "r1"],
        ["evaluate", "--k", "10", "--run-id", "r1", "--list-users", "100"],
    ):
        res = runner.invoke(app, [*wh, *args])
        assert res.exit_code == 0, res.output
    warehouse = Warehouse(root / "rechub.duckdb", threads=1)
    with warehouse.session() as con:
        publish_analytics(con, warehouse, "r1")
    return root, run["model_run_id"]


def test_itemknn_run_is_scored_evaluated_and_published(knn_warehouse: tuple[Path, str]) -> None:
    root, run_id = knn_warehouse
    con = duckdb.connect(str(root / "analytics.duckdb"), read_only=True)
    recs = con.execute(
        "SELECT count(DISTINCT user_id), min(rank), max(rank), count(DISTINCT model_run_id), "
        "any_value(model_run_id) FROM recommendations"
    ).fetchone()
    assert recs[1:] == (1, 10, 1, run_id) and recs[0] > 250
    # the model and the itemknn baseline are the same code with the same defaults: same test metrics
    rows = con.execute(
        "SELECT model_run_id, index, metric, value FROM evaluation_metrics "
        "WHERE split = 'test' AND slice = 'all' AND model_run_id IN (?, 'itemknn') ORDER BY metric",
        [run_id],
    ).fetchall()
    model = {m: v for r, i, m, v in rows if r == run_id}
    baseline = {m: v for r, i, m, v in rows if r == "itemknn"}
    assert {i for r, i, m, v in rows if r == run_id} == {"exact"}  # no annoy rows: it has no vectors
    assert model == pytest.approx(baseline) and model["ndcg"] > 0
    tuned_from = con.execute("SELECT tuned_from FROM model_runs WHERE model_run_id = ?", [run_id]).fetchone()
    assert tuned_from == (None,)


def test_similar_items_hold_each_items_best_neighbours(knn_warehouse: tuple[Path, str]) -> None:
    root, run_id = knn_warehouse
    con = duckdb.connect(str(root / "analytics.duckdb"), read_only=True)
    cols = [r[0] for r in con.execute("DESCRIBE similar_items").fetchall()]
    assert cols[:4] == ["item_id", "similar_item_id", "rank", "score"]
    bad = con.execute(
        """
        SELECT count(*) FILTER (item_id = similar_item_id OR score <= 0 OR score > 1.0001),
               count(*) FILTER (item_id NOT IN (SELECT item_id FROM items)),
               count(DISTINCT model_run_id), any_value(model_run_id), max(rank)
        FROM similar_items
        """
    ).fetchone()
    assert bad[:4] == (0, 0, 1, run_id) and bad[4] <= 10
    # ranks are 1..n per item, scores never increase with rank
    gaps = con.execute(
        """
        SELECT count(*) FROM (
            SELECT rank, row_number() OVER w AS expected, score, lag(score) OVER w AS previous
            FROM similar_items WINDOW w AS (PARTITION BY item_id ORDER BY rank))
        WHERE rank <> expected OR score > previous
        """
    ).fetchone()[0]
    assert gaps == 0


def test_saved_runs_keep_their_self_weight(knn_warehouse: tuple[Path, str], tmp_path: Path) -> None:
    """A run saved before item-kNN had `self_weight` scored without the self term: it still does."""
    root, run_id = knn_warehouse
    con = duckdb.connect(str(root / "rechub.duckdb"), read_only=True)
    store = FeatureStore.load(con, splits=(), popularity_index=False)
    saved = registry.models_dir(con) / run_id
    assert load_knn(saved, store).self_weight == 1.0  # recorded by this run
    older = tmp_path / run_id
    shutil.copytree(saved, older)
    meta = json.loads((older / "meta.json").read_text())
    del meta["params"]["self_weight"]
    (older / "meta.json").write_text(json.dumps(meta))
    assert load_knn(older, store).self_weight == 0.0


def test_scoring_runs_torch_on_the_warehouse_threads(knn_warehouse: tuple[Path, str]) -> None:
    """Score and evaluate load their context through `load_context`: without training first, torch
    would otherwise run on every core whatever `--threads` says."""
    import torch

    from rechub_store.retrieval.scoring import load_context

    root, run_id = knn_warehouse
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with Warehouse(root / "rechub.duckdb", threads=1).session() as con:
            load_context(con, run_id, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
