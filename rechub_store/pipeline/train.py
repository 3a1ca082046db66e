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
from rechub_store.ranking.validation import protocol_validation
from rechub_store.training import trainer
from rechub_store.training.config import TrainConfig
from rechub_store.training.trainer import FitResult, ModelRunResult
from rechub_store.warehouse import Warehouse


def train(
    target: Warehouse | duckdb.DuckDBPyConnection, config: TrainConfig, threads: int | None = None
) -> ModelRunResult:
    """Train, register and save one model run on the warehouse's feature store (early stopping on
    validation NDCG@10 under the evaluation protocol); returns its summary. A failed run is recorded
    as failed. Torch uses the warehouse's thread count (`threads` for an open connection)."""
    if isinstance(target, Warehouse):
        with target.session() as con:
            return trainer.train(con, config, protocol_validation, threads=target.threads)
    return trainer.train(target, config, protocol_validation, threads=threads)


def fit_model(
    store: FeatureStore,
    config: TrainConfig,
    source: InMemorySamples | StreamingSamples | SequenceSource | None = None,
    threads: int | None = None,
    popularity_index: Callable[[], ItemPopularityIndex] | None = None,
) -> tuple[nn.Module, FitResult, TrainConfig]:
    """`training.trainer.fit_model` with protocol validation: a model fitted on a loaded store,
    not registered (tests, tuning)."""
    return trainer.fit_model(
        store,
        config,
        source,
        threads,
        popularity_index,
        validation=protocol_validation(store, config),
    )
