"""Every model's declared search space yields configurations that build, train a step and rank."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from rechub_store.data.readers import FeatureStore, InMemorySamples, SequenceSource
from rechub_store.models import MODELS, SEARCH_SPACES, build_model
from rechub_store.models.space import Choice, Float, Int
from rechub_store.ranking.validation import evaluate_model
from rechub_store.training.trainer import Trainer
from rechub_store.tuning.study import TuneConfig, space_for, suggest


def test_every_model_declares_a_space() -> None:
    assert set(SEARCH_SPACES) == set(MODELS)
    for name, space in SEARCH_SPACES.items():
        for key, spec in space.items():
            assert isinstance(spec, Float | Int | Choice), (name, key)
            if isinstance(spec, Float | Int):
                assert spec.low < spec.high and (not spec.log or spec.low > 0), (name, key)
            else:
                assert len(spec.options) >= 2, (name, key)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sampled_configurations_build_step_and_rank(name: str, store: FeatureStore) -> None:
    """Random points of the space (seeded) plus each option of every choice: resolve, build the model,
    one training step on the configured objective, then rank validation users by the protocol."""
    space = space_for(name, store.n_items)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = [suggest(study.ask(), space)]
    widest = max(len(spec.options) for spec in space.values() if isinstance(spec, Choice))
    for i in range(widest):  # every option of every choice appears at least once
        point = dict(points[0])
        for key, spec in space.items():
            if isinstance(spec, Choice):
                point[key] = spec.options[i % len(spec.options)]
        points.append(point)
    valid = store.samples["valid"].take(np.arange(16))
    for params in points:
        cfg = TuneConfig(model=name, base={"epochs": 1}).train_config(params).resolve(store.n_items)
        cfg = cfg.__class__(**{**cfg.__dict__, "max_seq_len": cfg.max_seq_len or store.max_seq_len})
        torch.manual_seed(0)
        model = build_model(name, store.schema(cfg.max_seq_len), embed_dim=cfg.embed_dim, **cfg.model_params)
        seq = hasattr(model, "sequence_outputs")
        train = store.samples["train"]
        source = SequenceSource(train, 0, window=int(cfg.max_seq_len)) if seq else InMemorySamples(train, 0)
        trainer = Trainer(model, store, cfg, source)
        batch = next(iter(source.batches(1, trainer.units_per_batch)))
        loss, n = trainer.train_step(trainer.prepare(batch, np.random.default_rng(0)), 1)
        assert np.isfinite(loss) and n > 0, params
        model.eval()
        metrics = evaluate_model(model, store, valid)
        assert 0.0 <= metrics["ndcg"][10] <= 1.0, params
