"""Every run lands in meta.model_runs; artifacts rebuild the module with identical embeddings."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from rechub_store.data.readers import FeatureStore
from rechub_store.errors import UserError
from rechub_store.pipeline.train import fit_model, train
from rechub_store.ranking.embeddings import annoy_metric, encode_items, encode_users, normalize_for_index
from rechub_store.ranking.validation import evaluate_model
from rechub_store.training import registry
from rechub_store.training.config import TrainConfig
from rechub_store.warehouse import Warehouse

CFG = TrainConfig(model="sasrec", epochs=3, batch_size=128, embed_dim=8, lr=5e-3, progress=False)


def test_train_registers_a_successful_run(planted_warehouse: Warehouse) -> None:
    result = train(planted_warehouse, CFG)
    with planted_warehouse.session() as con:
        rows = registry.list_runs(con)
    assert len(rows) == 1
    row = rows[0]
    assert (
        row["model_run_id"] == result.model_run_id and row["model"] == "sasrec" and row["status"] == "success"
    )
    assert row["build_id"] == "build-test"
    assert row["params"]["max_seq_len"] == 8 and row["params"]["neg_mode"] == "full"
    assert row["vocab_sizes"]["item.item_id"] == 31 and row["vocab_sizes"]["user.gender"] == 3
    epochs = row["history"]["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    assert {"train_loss", "valid", "samples_per_second"} <= set(epochs[0])
    assert row["history"]["popularity_valid"]["ndcg@10"] == result.popularity_metric > 0
    assert row["best_epoch"] == result.best_epoch and row["best_metric"] == pytest.approx(result.best_metric)
    assert row["wall_seconds"] > 0 and row["finished_at"] >= row["created_at"]
    assert row["artifact_path"] == f"models/{result.model_run_id}", "relative to the warehouse folder"
    path = planted_warehouse.root / row["artifact_path"]
    assert path == planted_warehouse.models_dir / result.model_run_id
    assert (path / "model.pt").exists() and json.loads((path / "meta.json").read_text())["max_seq_len"] == 8


def test_loaded_model_reproduces_the_best_epoch(planted_warehouse: Warehouse) -> None:
    result = train(planted_warehouse, CFG)
    loaded = registry.load_model(planted_warehouse)  # default: the latest successful run
    assert loaded.model_run_id == result.model_run_id and loaded.score_kind == "dot"
    assert annoy_metric(loaded.score_kind) == "dot" and annoy_metric("cosine") == "angular"
    with planted_warehouse.session() as con:
        store = FeatureStore.load(con)
    ndcg = evaluate_model(loaded.model, store, store.samples["valid"])["ndcg"][10]
    assert ndcg == pytest.approx(result.best_metric, abs=1e-6)


@pytest.mark.parametrize("name", ["dssm", "gru4rec"])
def test_artifact_reload_gives_identical_embeddings(planted_warehouse: Warehouse, name: str) -> None:
    with planted_warehouse.session() as con:
        store = FeatureStore.load(con)
        model, fit, cfg = fit_model(store, TrainConfig(model=name, epochs=1, embed_dim=8, progress=False))
        path = registry.save_artifact(con, "run-x", model, cfg, store, fit.history)
    loaded = registry.load_artifact(path)
    users = np.arange(1, store.n_users)
    a_items, b_items = encode_items(model, store), encode_items(loaded.model, store)
    assert a_items.shape == (store.n_items, 8) and not a_items[0].any()
    assert np.array_equal(a_items, b_items)
    a_users = encode_users(model, store, users, batch_size=64)
    assert np.array_equal(a_users, encode_users(loaded.model, store, users, batch_size=64))
    # hist_end = whole history by default; an explicit end cuts the window
    assert not np.array_equal(a_users, encode_users(model, store, users, np.full(len(users), 2)))
    normed = normalize_for_index(a_items, loaded.score_kind)
    if loaded.score_kind == "cosine":
        assert np.allclose(np.linalg.norm(normed[1:], axis=1), 1.0, atol=1e-5) and not normed[0].any()
    else:
        assert np.array_equal(normed, a_items)


def test_failed_run_is_recorded_as_failed(planted_warehouse: Warehouse) -> None:
    bad = TrainConfig(model="gru4rec", epochs=1, progress=False, model_params={"no_such_knob": 1})
    with pytest.raises(TypeError):
        train(planted_warehouse, bad)
    with planted_warehouse.session() as con:
        row = registry.list_runs(con)[0]
    assert row["status"] == "failed" and "no_such_knob" in row["error"] and row["artifact_path"] is None
    with pytest.raises(UserError, match="no successful model run"):
        registry.load_model(planted_warehouse)


def test_unknown_run_id_is_a_user_error(planted_warehouse: Warehouse) -> None:
    train(planted_warehouse, CFG)
    with pytest.raises(UserError, match="not found"):
        registry.load_model(planted_warehouse, "nope")


def test_streaming_training_registers_and_learns(planted_warehouse: Warehouse) -> None:
    result = train(planted_warehouse, replace(CFG, model="youtubednn", epochs=6, streaming=True))
    assert result.status == "success" and result.params["streaming"] is True
    assert result.best_metric > result.popularity_metric + 0.3
