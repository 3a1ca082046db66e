"""The trainer learns a planted pattern in every objective, is deterministic, restores the best epoch."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from rechub_store.data.readers import FeatureStore
from rechub_store.errors import UserError
from rechub_store.pipeline.train import fit_model
from rechub_store.ranking.validation import evaluate_model
from rechub_store.training.config import TrainConfig

BASE = TrainConfig(
    model="youtubednn", epochs=12, batch_size=128, embed_dim=16, lr=5e-3, patience=12, progress=False
)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(neg_mode="pointwise", neg_ratio=4),
        dict(neg_mode="pairwise", neg_ratio=2, neg_sampler="popularity"),
        dict(neg_mode="listwise", neg_ratio=10),
        dict(neg_mode="listwise", neg_ratio=0, in_batch=True),  # pure in-batch softmax with logQ
        dict(neg_mode="listwise", neg_ratio=5, in_batch=True, logq=False),
        dict(neg_mode="listwise", neg_sampler="static"),  # features.negatives_train
        dict(neg_mode="full"),
        dict(model="gru4rec", neg_mode="listwise", neg_ratio=5, in_batch=True),  # all-position training
        dict(model="sasrec", neg_mode="pairwise", neg_ratio=2),
        dict(model="sasrec", neg_mode="full", seq_train=False),  # one target per pass
    ],
    ids=[
        "pointwise",
        "pairwise-pop",
        "listwise",
        "inbatch-logq",
        "listwise+inbatch",
        "static",
        "full",
        "seq-gru-inbatch",
        "seq-sasrec-bpr",
        "sasrec-per-sample",
    ],
)
def test_every_objective_learns_the_planted_pattern(planted_store: FeatureStore, overrides: dict) -> None:
    _, result, cfg = fit_model(planted_store, replace(BASE, **overrides))
    best = result.history[result.best_epoch - 1]["valid"]
    assert best["hit@10"] >= 0.95, (cfg, best)
    assert result.best_metric == best["ndcg@10"] > result.popularity["ndcg@10"] + 0.3


def test_seeded_training_is_deterministic(planted_store: FeatureStore) -> None:
    cfg = replace(BASE, model="sasrec", epochs=2, neg_mode="listwise", neg_ratio=5, in_batch=True)
    m1, r1, _ = fit_model(planted_store, cfg)
    m2, r2, _ = fit_model(planted_store, cfg)
    _, r3, _ = fit_model(planted_store, replace(cfg, seed=7))
    strip = [{k: v for k, v in h.items() if "second" not in k} for h in r1.history]
    assert strip == [{k: v for k, v in h.items() if "second" not in k} for h in r2.history]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert r3.history[0]["train_loss"] != r1.history[0]["train_loss"]


def test_best_epoch_weights_are_restored(planted_store: FeatureStore) -> None:
    cfg = replace(BASE, model="gru4rec", epochs=6, lr=0.05, patience=2)  # high lr: later epochs may get worse
    model, result, _ = fit_model(planted_store, cfg)
    assert len(result.history) <= 6
    ndcg = evaluate_model(model, planted_store, planted_store.samples["valid"])["ndcg"][10]
    assert ndcg == pytest.approx(result.best_metric, abs=1e-6)
    assert result.best_metric == max(h["valid"]["ndcg@10"] for h in result.history)


def test_early_stopping_stops_after_patience(planted_store: FeatureStore) -> None:
    cfg = replace(BASE, epochs=30, patience=1, lr=1e-2)
    _, result, _ = fit_model(planted_store, cfg)
    assert len(result.history) < 30
    assert len(result.history) == result.best_epoch + 1


def test_a_failing_step_stops_the_prefetch_thread_at_once(planted_store: FeatureStore) -> None:
    cfg = replace(BASE, model="gru4rec", neg_mode="full", lr=1e30, grad_clip=0.0, epochs=2)  # blows up
    with pytest.raises(RuntimeError, match="training diverged") as failure:
        fit_model(planted_store, cfg)
    assert failure.tb is not None  # the traceback (and the training frame) is still alive here
    assert not any(t.name == "rechub-prefetch" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(model="bert4rec"), "--model"),
        (dict(neg_mode="triplet"), "--neg-mode"),
        (dict(neg_mode="pairwise", in_batch=True), "--in-batch"),
        (dict(neg_mode="pointwise", neg_ratio=0), "--neg-ratio"),
        (dict(epochs=0), "--epochs"),
        (dict(lr=-1.0), "--lr"),
        (dict(neg_sampler="zipf"), "--neg-sampler"),
    ],
)
def test_bad_config_is_a_one_line_user_error(overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        replace(BASE, **overrides).resolve(100)


def test_all_position_training_is_chosen_per_model(planted_store: FeatureStore) -> None:
    assert fit_model(planted_store, replace(BASE, model="sasrec", epochs=1))[2].seq_train is True
    assert fit_model(planted_store, replace(BASE, epochs=1))[2].seq_train is False
    with pytest.raises(UserError, match="--seq-train"):
        fit_model(planted_store, replace(BASE, epochs=1, seq_train=True))


def test_defaults_resolve_per_catalogue_size() -> None:
    small = TrainConfig(model="gru4rec").resolve(1_000)
    big = TrainConfig(model="gru4rec").resolve(1_000_000)
    assert small.neg_mode == "full" and small.epochs == 50 and small.embed_dim == 64
    assert big.neg_mode == "listwise" and big.in_batch and big.neg_ratio == 20
    assert TrainConfig.from_dict(small.to_dict()).resolve(1_000) == replace(small, progress=True)
    with pytest.raises(UserError, match=r"unknown key\(s\) modle"):
        TrainConfig.from_dict({"modle": "dssm"})
