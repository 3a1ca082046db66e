"""Train a model with validation under the evaluation protocol: the `train` that users call.

`training.trainer` fits and registers; `ranking.validation` scores validation samples the way
evaluation does. This module puts them together, for a warehouse or an open connection.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb
from torch import nn

from rechub_store.data.readers import (
    FeatureStore,
    InMemorySamples,
    ItemPopularityIndex,
    SequenceSource,
    StreamingSamples,
)
from rechub_store.pipeline.itemknn import fit_itemknn
from rechub_store.ranking.validation import protocol_validation
from rechub_store.training import trainer
from rechub_store.training.config import NEIGHBOUR_MODELS, TrainConfig
from rechub_store.training.trainer import EpochCallback, FitResult, ModelRunResult, StopCheck
from rechub_store.warehouse import Warehouse


def train(
    target: Warehouse | duckdb.DuckDBPyConnection,
    config: TrainConfig,
    threads: int | None = None,
    tuned_from: str | None = None,
) -> ModelRunResult:
    """Train, register and save one model run on the warehouse's feature store (early stopping on
    validation NDCG@10 under the evaluation protocol); returns its summary. A failed run is recorded
    as failed. Torch uses the warehouse's thread count (`threads` for an open connection).
    `tuned_from`: the tuning study whose best parameters `config` carries (recorded on the run).
    Neighbourhood models (`itemknn`) are fitted, not trained (`pipeline.itemknn`)."""
    if isinstance(target, Warehouse):
        with target.session() as con:
            return train(con, config, target.threads, tuned_from)
    if config.model in NEIGHBOUR_MODELS:
        knn = fit_itemknn(target, config.resolve(0), tuned_from)
        return ModelRunResult(
            model_run_id=knn.model_run_id,
            model=config.model,
            status="success",
            best_epoch=1,
            best_metric=knn.best_metric,
            popularity_metric=knn.popularity_metric,
            history=[],
            artifact_path=knn.artifact_path,
            wall_seconds=knn.wall_seconds,
            build_id=knn.build_id,
            params=knn.params,
            vocab_sizes=knn.vocab_sizes,
            samples_per_second=0.0,
        )
    return trainer.train(target, config, protocol_validation, threads=threads, tuned_from=tuned_from)


def fit_model(
    store: FeatureStore,
    config: TrainConfig,
    source: InMemorySamples | StreamingSamples | SequenceSource | None = None,
    threads: int | None = None,
    popularity_index: Callable[[], ItemPopularityIndex] | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: StopCheck | None = None,
) -> tuple[nn.Module, FitResult, TrainConfig]:
    """`training.trainer.fit_model` with protocol validation: a model fitted on a loaded store,
    not registered (tests, tuning: `on_epoch` feeds the pruner, `should_stop` keeps the budget)."""
    return trainer.fit_model(
        store,
        config,
        source,
        threads,
        popularity_index,
        validation=protocol_validation(store, config),
        on_epoch=on_epoch,
        should_stop=should_stop,
    )
