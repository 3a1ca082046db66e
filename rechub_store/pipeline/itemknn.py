"""Item-kNN as a model run (`rechub-store train --model itemknn`): fitted, not trained.

A pipeline composition: the model is ranking's `ItemKNN`, the run goes through training's registry.

The model is `ranking.itemknn.ItemKNN` (cosine item-item similarity of the training interactions,
scored from the user's recent items with recency weights), the same code the `itemknn` baseline runs.
As a model run it is fitted on the training split, validated by the evaluation protocol on the
validation split (NDCG@10, beside popularity, as every run), saved as an artifact (`itemknn.npz`:
the item -> neighbours similarity matrix; `meta.json`: its parameters) and registered in
`meta.model_runs`, so `score`, `evaluate`, `nightly` and `publish` serve it like any run (exact
ranking only: it has no vectors for annoy). Parameters: `model_params` neighbours, recent, decay,
self_weight.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import scipy.sparse as sp

from rechub_store.data.readers import FeatureStore
from rechub_store.errors import UserError
from rechub_store.ranking.baselines import Popularity
from rechub_store.ranking.itemknn import ItemKNN
from rechub_store.ranking.metrics import rank_metrics
from rechub_store.ranking.protocol import baseline_ranks
from rechub_store.training import registry
from rechub_store.training.config import TrainConfig, neighbour_params
from rechub_store.training.trainer import FitResult

NAME = "itemknn"
ARTIFACT_FILE = "itemknn.npz"
DEFAULTS: dict[str, Any] = neighbour_params(NAME, {})
EVAL_K = 10


@dataclass
class KNNRun:
    model_run_id: str
    best_metric: float  # validation NDCG@10
    popularity_metric: float
    artifact_path: str
    wall_seconds: float
    build_id: str | None
    params: dict[str, Any]
    vocab_sizes: dict[str, int]


def knn_params(config: TrainConfig) -> dict[str, Any]:
    return neighbour_params(NAME, config.model_params)


def fit_itemknn(con: duckdb.DuckDBPyConnection, config: TrainConfig, tuned_from: str | None = None) -> KNNRun:
    """Fit, validate, save and register an item-kNN model run (failures recorded as failed)."""
    t0 = time.perf_counter()
    params = knn_params(config)
    store = FeatureStore.load(con, None, splits=("valid",), popularity_index=False)
    run_id = registry.new_run_id(NAME)
    vocab = {"item_id": int(store.n_items), "user_id": int(store.n_users)}
    recorded = {"model": NAME, "model_params": params, "seed": config.seed, "seen_filter": config.seen_filter}
    registry.start_run(con, run_id, NAME, recorded, store.build_id, vocab, tuned_from)
    try:
        knn, fit = fit_validated(store, config)
        metric, history = fit.best_metric, fit.history
        popularity = fit.popularity.get(f"ndcg@{EVAL_K}", 0.0)
        artifact = save_artifact(con, run_id, knn, params, store)
        wall = time.perf_counter() - t0
        registry.finish_run(
            con,
            run_id,
            {"epochs": history, "popularity_valid": {f"ndcg@{EVAL_K}": popularity}},
            1,
            metric,
            str(artifact),
            wall,
            recorded,
        )
    except BaseException as exc:
        registry.fail_run(
            con, run_id, f"{type(exc).__name__}: {exc}".splitlines()[0], time.perf_counter() - t0
        )
        raise
    return KNNRun(run_id, metric, popularity, str(artifact), round(wall, 3), store.build_id, recorded, vocab)


def fit_validated(store: FeatureStore, config: TrainConfig) -> tuple[ItemKNN, FitResult]:
    """Fit on the training split and validate by the protocol on `store`'s validation split: one
    "epoch" whose NDCG@10 is the run's (or a tuning trial's) value, popularity beside it. Without
    validation samples the metric is 0."""
    knn = ItemKNN(**knn_params(config)).fit(store)
    fit = FitResult(best_epoch=1, best_metric=0.0, popularity={f"ndcg@{EVAL_K}": 0.0})
    valid = store.samples.get("valid")
    if valid is not None and len(valid):
        ranks = baseline_ranks(knn, store, valid, config.seen_filter)
        values = {f"{m}@{k}": round(v, 6) for m, d in rank_metrics(ranks, (5, EVAL_K, 20)).items()
                  for k, v in d.items()}  # fmt: skip
        popular = baseline_ranks(Popularity().fit(store), store, valid, config.seen_filter)
        pop = rank_metrics(popular, (EVAL_K,))
        fit.best_metric = values[f"ndcg@{EVAL_K}"]
        fit.popularity = {f"ndcg@{EVAL_K}": round(pop["ndcg"][EVAL_K], 6)}
        fit.history.append({"epoch": 1, "valid": values})
    return knn, fit


def save_artifact(
    con: duckdb.DuckDBPyConnection, run_id: str, knn: ItemKNN, params: dict[str, Any], store: FeatureStore
) -> Path:
    """`<models>/<run_id>/itemknn.npz` + `meta.json`, written atomically via a temporary folder."""
    final = registry.models_dir(con) / run_id
    tmp = final.parent / f".{run_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sp.save_npz(tmp / ARTIFACT_FILE, knn.similar.tocsr(), compressed=True)
    meta = {"model_run_id": run_id, "model": NAME, "params": params, "build_id": store.build_id,
            "n_items": int(store.n_items), "neighbour_pairs": int(knn.similar.nnz)}  # fmt: skip
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def is_knn_artifact(path: Path) -> bool:
    return (Path(path) / ARTIFACT_FILE).exists()


def load_knn(path: Path, store: FeatureStore) -> ItemKNN:
    """The saved model over `store`; UserError if the artifact is damaged."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
        similar = sp.load_npz(Path(path) / ARTIFACT_FILE)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"item-kNN artifact {path} is unreadable: {exc}") from None
    p = {**DEFAULTS, "self_weight": 0.0, **meta.get("params", {})}  # runs saved before self_weight had none
    return ItemKNN.from_similar(
        similar, store, int(p["neighbours"]), int(p["recent"]), float(p["decay"]), float(p["self_weight"])
    )


__all__ = [
    "ARTIFACT_FILE",
    "DEFAULTS",
    "NAME",
    "KNNRun",
    "fit_itemknn",
    "fit_validated",
    "is_knn_artifact",
    "load_knn",
]
