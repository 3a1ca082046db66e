"""A model artifact written before the evaluation-protocol change still loads, scores and evaluates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np

from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import generate_into
from rechub_store.results.evaluate import evaluate
from rechub_store.results.score import score
from rechub_store.training.registry import load_artifact
from rechub_store.warehouse import Warehouse

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "artifact-before-protocol"


def test_artifact_from_before_loads_scores_and_evaluates(warehouse: Warehouse) -> None:
    meta = json.loads((FIXTURE / "meta.json").read_text())
    run_id = meta["model_run_id"]
    with warehouse.session() as con:
        generate_into(con, warehouse.root / "data", n_users=60, n_items=30, n_events=1500, seed=11)
        build_features(con, BuildParams())
        target = warehouse.models_dir / run_id
        shutil.copytree(FIXTURE, target)
        con.execute(
            "INSERT INTO meta.model_runs (model_run_id, model, status, params, artifact_path, created_at, "
            "finished_at) VALUES (?, 'dssm', 'success', '{}', ?, now(), now())",
            [run_id, str(target)],
        )
    loaded = load_artifact(target)
    assert loaded.model_name == "dssm" and loaded.schema.item_dense  # reads popularity: the changed input
    report = score(warehouse, k=5, index="exact")
    assert (
        report.model_run_id == run_id and 0.9 * 5 * report.users <= report.rows <= 5 * report.users
    )  # some saw ~all 30
    metrics = evaluate(warehouse, ks=(5,), indexes=("exact", "annoy"), list_users=50)
    rows = {
        (r["model_run_id"], r["split"], r["index"], r["metric"]) for r in metrics.rows if r["slice"] == "all"
    }
    assert (run_id, "test", "exact", "ndcg") in rows and (run_id, "production", "annoy", "coverage") in rows
    con = duckdb.connect(str(warehouse.path), read_only=True)
    try:
        values = con.execute(
            "SELECT value FROM evaluation_metrics WHERE model_run_id = ? AND split = 'test'", [run_id]
        ).fetchall()
    finally:
        con.close()
    assert values and np.isfinite([v for (v,) in values]).all()
