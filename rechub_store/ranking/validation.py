"""Training-time validation under the evaluation protocol: what the fit loop is given.

The trainer (`training`, a lower layer) takes a `Validation` and knows no ranking; this module
builds it from `ranking.protocol` (exact full ranking, the config's seen filter, pessimistic ties),
so training validation, `evaluate` and the nightly job rank the same way.
"""

from __future__ import annotations

from torch import nn

from rechub_store.config import DEFAULT_SEEN_FILTER
from rechub_store.data.readers import FeatureStore, Samples
from rechub_store.ranking.baselines import Popularity
from rechub_store.ranking.metrics import rank_metrics
from rechub_store.ranking.protocol import baseline_ranks, model_ranks
from rechub_store.training.config import TrainConfig
from rechub_store.training.trainer import EVAL_K, Validation

VALID_KS = (5, EVAL_K, 20)


def evaluate_model(
    model: nn.Module,
    store: FeatureStore,
    samples: Samples,
    ks: tuple[int, ...] = (EVAL_K,),
    seen_filter: str = DEFAULT_SEEN_FILTER,
) -> dict[str, dict[int, float]]:
    """Leave-one-out metrics under the evaluation protocol (`ranking.protocol`)."""
    return rank_metrics(model_ranks(model, store, samples, seen_filter), ks)


def evaluate_popularity(
    store: FeatureStore,
    samples: Samples,
    ks: tuple[int, ...] = (EVAL_K,),
    seen_filter: str = DEFAULT_SEEN_FILTER,
) -> dict[str, dict[int, float]]:
    """The most-popular baseline (training counts), under the same protocol as the models."""
    return rank_metrics(baseline_ranks(Popularity().fit(store), store, samples, seen_filter), ks)


def flat(metrics: dict[str, dict[int, float]]) -> dict[str, float]:
    """{metric: {k: value}} -> {"metric@k": value}, the keys the trainer's history stores."""
    return {f"{m}@{k}": round(v, 6) for m, per_k in metrics.items() for k, v in per_k.items()}


def protocol_validation(store: FeatureStore, config: TrainConfig) -> Validation:
    """Validation for the fit loop: the model at k = 5, 10, 20 and the popularity baseline at 10,
    both under the config's seen filter."""
    seen = config.seen_filter
    return Validation(
        model=lambda model, valid: flat(evaluate_model(model, store, valid, VALID_KS, seen)),
        baseline=lambda valid: flat(evaluate_popularity(store, valid, seen_filter=seen)),
    )
