"""Batch inference: item and user vectors from a trained two-tower model.

Vectors are returned as float32 numpy arrays indexed like the feature store (item row =
item_code, row 0 = padding = zeros). `normalize_for_index` and `annoy_metric` tell the scorer
how to index them: cosine models are L2-normalised and indexed as 'angular', dot models as 'dot'.
Ranking by the normalised vectors' dot product equals ranking by the model's score (the
temperature only scales scores).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rechub_store.data.readers import FeatureStore


def score_kind(model: nn.Module) -> tuple[str, float]:
    """('dot' | 'cosine', temperature) declared by the model."""
    return str(model.score_kind), float(model.temperature)


def annoy_metric(kind: str) -> str:
    """The annoy metric that ranks like the model's score: 'angular' for cosine, 'dot' for dot."""
    return "angular" if kind == "cosine" else "dot"


def normalize_for_index(vectors: np.ndarray, kind: str) -> np.ndarray:
    """L2-normalise rows for cosine models (zero rows stay zero); dot models are returned as is."""
    if kind != "cosine":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def encode_items(
    model: nn.Module, store: FeatureStore, batch_size: int = 8192, popularity: np.ndarray | None = None
) -> np.ndarray:
    """[store.n_items, D] float32 item vectors (raw tower output); row 0 (padding) is zeros.

    `popularity` (scaled, indexed by item code) replaces the current item popularity: evaluation
    passes `store.train_popularity` so that no held-out target is counted.
    """
    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.inference_mode():
            for start in range(0, store.n_items, batch_size):
                codes = np.arange(start, min(start + batch_size, store.n_items), dtype=np.int64)
                pop = None if popularity is None else popularity[codes]
                parts.append(model.item_tower(store.item_batch(codes, popularity=pop)).float().numpy())
    finally:
        model.train(was_training)
    out = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    if len(out):
        out[0] = 0.0
    return out


def encode_users(
    model: nn.Module,
    store: FeatureStore,
    user_codes: np.ndarray,
    hist_end: np.ndarray | None = None,
    batch_size: int = 4096,
    event_count: np.ndarray | None = None,
) -> np.ndarray:
    """[len(user_codes), D] float32 user vectors from each user's history cut at `hist_end`.

    `hist_end` is the exclusive end position in the user's history: None = the whole current
    history (production scoring); a sample's `pos` for evaluation (history before the target).
    `event_count`: the samples' point-in-time `user_event_count_scaled` (evaluation); None = what
    `FeatureStore.user_batch` derives (the current value for whole histories).
    """
    users = np.asarray(user_codes, dtype=np.int64)
    ends = store.history_length(users) if hist_end is None else np.asarray(hist_end, dtype=np.int64)
    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.inference_mode():
            for start in range(0, users.shape[0], batch_size):
                sl = slice(start, start + batch_size)
                counts = None if event_count is None else event_count[sl]
                batch = store.user_batch(users[sl], ends[sl], model.max_seq_len, event_count=counts)
                parts.append(model.user_tower(batch).float().numpy())
    finally:
        model.train(was_training)
    if not parts:
        return np.zeros((0, int(model.config["embed_dim"])), dtype=np.float32)
    return np.concatenate(parts)
