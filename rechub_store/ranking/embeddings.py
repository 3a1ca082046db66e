"""Batch inference: item and user vectors from a trained two-tower model.

Vectors are returned as float32 numpy arrays indexed like the feature store (item row =
item_code, row 0 = padding = zeros). `normalize_for_index` and `annoy_metric` tell the scorer
how to index them: cosine models are L2-normalised and indexed as 'angular', dot models as 'dot'.
Ranking by the normalised vectors' dot product equals ranking by the model's score (the
temperature only scales scores).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

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


# Rows of every batch that `encode_current_users` runs: one fixed shape per window width.
STABLE_ROWS = 512


def window_widths(lengths: np.ndarray, max_seq_len: int) -> np.ndarray:
    """The window width each user is encoded at: its history length rounded up to a power of two,
    at most `max_seq_len`. A user's own history sets it, never the other users of its batch."""
    lens = np.minimum(np.maximum(np.asarray(lengths, dtype=np.int64), 1), max_seq_len)
    return np.minimum(np.left_shift(1, np.ceil(np.log2(lens)).astype(np.int64)), max_seq_len)


def stable_batches(
    store: FeatureStore,
    user_codes: np.ndarray,
    max_seq_len: int,
    rows: int = STABLE_ROWS,
    *,
    pad: bool = True,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(positions in `user_codes`, user-tower inputs of whole current histories) in batches of
    `rows` rows and one window width each (`window_widths`). With `pad`, a short batch repeats its
    last user to exactly `rows` rows: the shapes, hence the kernels torch picks, then depend only on
    each user's own history. Without it (hashing the inputs needs no fixed shape) it stays short."""
    users = np.asarray(user_codes, dtype=np.int64)
    widths = window_widths(store.history_length(users), max_seq_len)
    for width in np.unique(widths):
        members = np.flatnonzero(widths == width)
        for lo in range(0, len(members), rows):
            part = members[lo : lo + rows]
            padded = np.concatenate([part, np.repeat(part[-1:], rows - len(part))]) if pad else part
            codes = users[padded]
            yield part, store.user_batch(codes, store.history_length(codes), max_seq_len, width=int(width))


def encode_current_users(
    model: nn.Module, store: FeatureStore, user_codes: np.ndarray, rows: int = STABLE_ROWS
) -> np.ndarray:
    """[len(user_codes), D] float32 user vectors from whole current histories (production scoring),
    each computed in a batch of a shape set by its own history (`stable_batches`). A user's vector
    is then the same bit for bit whether it is encoded among all users or with a few: incremental
    scoring encodes only the users whose inputs changed, and equals a full rescore.
    (`encode_users` fits each batch to its longest history; its vectors can differ in the last bits
    with the company a user keeps.)"""
    users = np.asarray(user_codes, dtype=np.int64)
    if not len(users):
        return np.zeros((0, int(model.config["embed_dim"])), dtype=np.float32)
    out = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for part, batch in stable_batches(store, users, model.max_seq_len, rows):
                vecs = model.user_tower(batch).float().numpy()[: len(part)]
                if out is None:
                    out = np.zeros((len(users), vecs.shape[1]), dtype=np.float32)
                out[part] = vecs
    finally:
        model.train(was_training)
    assert out is not None
    return out


class _ReadRecorder(Mapping[str, torch.Tensor]):
    """A read-only batch that records which of its keys are read. Only these three methods touch
    the batch; `Mapping` builds `get`, `in`, `keys`, `items` and `values` on them, so every way of
    reading a key is seen (iterating reads them all)."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self._batch = batch
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return self._batch[key]

    def __iter__(self) -> Iterator[str]:
        self.read.update(self._batch)
        return iter(self._batch)

    def __len__(self) -> int:
        return len(self._batch)


def user_tower_reads(model: nn.Module, store: FeatureStore) -> tuple[str, ...]:
    """The user-tower inputs (batch keys) the model reads, asked of the tower itself on a few users
    (every key when there is no user to ask): what an input digest must cover, and nothing more,
    so that features a model ignores (e.g. dense scaling that moves every night) do not count."""
    users = np.flatnonzero(np.diff(store.hist_offsets) > 0)[:4]
    if not len(users):
        return ()
    batch = store.user_batch(users, store.history_length(users), model.max_seq_len)
    recorder = _ReadRecorder(batch)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model.user_tower(recorder)
    finally:
        model.train(was_training)
    return tuple(sorted(recorder.read & set(batch)))
