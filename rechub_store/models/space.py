"""Hyperparameter search spaces as plain data, declared beside each model (`SEARCH_SPACE`).

A space maps a name to a range. Names that are `TrainConfig` fields (lr, batch_size, embed_dim,
neg_mode, ...) set the trainer; every other name is a keyword argument of the model's constructor.
`rechub_store.tuning` turns a space into Optuna suggestions; nothing here imports Optuna, so a
model file stays a model file.

`TRAINER_SPACE` holds the knobs every model shares (optimiser, batch, history window, objective);
each model adds its own (`SEARCH_SPACE = {**TRAINER_SPACE, ...}`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Float:
    """A real number in [low, high]; `log`: sampled uniformly in log space."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Int:
    """An integer in [low, high] (both included)."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """One of `options`: numbers, strings, booleans or tuples (a tuple is one option, e.g. MLP widths)."""

    options: tuple[Any, ...]

    def labels(self) -> list[Any]:
        """The options as scalar labels (tuples as JSON text), what a sampler can record."""
        return [json.dumps(list(o)) if isinstance(o, tuple) else o for o in self.options]

    def decode(self, label: Any) -> Any:
        """The option a label stands for."""
        return tuple(json.loads(label)) if isinstance(label, str) and label.startswith("[") else label


Range = Float | Int | Choice

# Trainer knobs shared by every model. The objective: full softmax over the catalogue, sampled
# softmax over `neg_ratio` uniform negatives, or BPR against `neg_ratio` negatives.
TRAINER_SPACE: dict[str, Range] = {
    "lr": Float(3e-4, 1e-2, log=True),
    "weight_decay": Choice((0.0, 1e-6, 1e-5)),
    "batch_size": Choice((128, 256, 512)),
    "embed_dim": Choice((32, 64, 128)),
    "max_seq_len": Choice((20, 50, 100)),
    "neg_mode": Choice(("full", "listwise", "pairwise")),
    "neg_ratio": Choice((16, 64, 256)),
    "warmup_steps": Choice((0, 100, 500)),
}
