"""Baselines that every model run is reported beside, ranked by the same protocol as the models.

- `popularity`: items by training popularity (`features.item_popularity.n_train`).
- `itemknn`: cosine item-item similarity of the training interactions (`ranking.itemknn`).
- `transition`: first-order "last item -> next item" counts from the training split; a user is
  scored from the last item of their history.

Training data is what the models learn from: every event except the validation/test targets
(`FeatureStore.train_end`). Items a baseline gives no score (no neighbour, no transition) fall back
to popularity order below every scored item, so lists are never padded with arbitrary ties.
Each baseline is `fit(store)` then `scorer(user_codes, hist_end)`, the `exact.Scorer` interface, so
evaluation, scoring and (later) training can treat it like a model's vectors.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from rechub_store.data.readers import FeatureStore
from rechub_store.ranking.exact import Scorer


class Baseline(Protocol):
    name: str

    def fit(self, store: FeatureStore) -> Baseline: ...

    def scorer(self, user_codes: np.ndarray, hist_end: np.ndarray) -> Scorer: ...


def fallback_scores(store: FeatureStore) -> np.ndarray:
    """Scores in [-1, 0) ordering items by training popularity: below every positive score."""
    counts = store.item_train_count.astype(np.float64)
    return (counts / (counts.max(initial=0.0) + 1.0) - 1.0).astype(np.float32)


def training_events(store: FeatureStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, position) of every training event (positions before the user's train_end)."""
    lengths = np.diff(store.hist_offsets)
    users = np.repeat(np.arange(store.n_users, dtype=np.int64), lengths)
    pos = np.arange(store.hist_items.size, dtype=np.int64) - np.repeat(store.hist_offsets[:-1], lengths)
    ends = store.train_end if store.train_end is not None else lengths
    keep = pos < ends[users]
    return users[keep], store.hist_items[keep].astype(np.int64), pos[keep]


class PopularityScorer:
    """Every row scores item i with its training count."""

    def __init__(self, counts: np.ndarray, n_rows: int) -> None:
        self.counts = torch.from_numpy(counts.astype(np.float32))
        self.n_rows, self.n_items = n_rows, counts.shape[0]

    def block(self, start: int, stop: int, out: torch.Tensor) -> None:
        out.copy_(self.counts.expand(stop - start, -1))


class SparseScorer:
    """Row u scores = (rows @ (matrix + diagonal * I))[u], with `fallback` where that is 0."""

    def __init__(
        self,
        rows: sp.csr_matrix,
        matrix: sp.csr_matrix,
        fallback: np.ndarray | None,
        diagonal: float = 0.0,
    ) -> None:
        self.rows, self.matrix, self.diagonal = rows, matrix, diagonal
        self.fallback = None if fallback is None else torch.from_numpy(fallback)
        self.n_rows, self.n_items = rows.shape[0], matrix.shape[1]

    def block(self, start: int, stop: int, out: torch.Tensor) -> None:
        # The product is sparse (a user reaches few items): write the fallback (or 0) row-wide,
        # then scatter the product's entries, rather than densify it and mask [rows, n_items].
        part = self.rows[start:stop]
        product = part @ self.matrix
        if self.diagonal:  # part @ (diagonal * I), without a copy of the matrix with its diagonal set
            product = product + self.diagonal * part
        product = sp.csr_matrix(product)
        rows = np.repeat(np.arange(stop - start), np.diff(product.indptr))
        cols, values = product.indices, product.data.astype(np.float32, copy=False)
        if self.fallback is None:
            out.zero_()
        else:
            out.copy_(self.fallback.expand_as(out))
            scored = values > 0  # the rest keep the fallback, as a dense product <= 0 would
            rows, cols, values = rows[scored], cols[scored], values[scored]
        out[torch.from_numpy(rows), torch.from_numpy(cols.astype(np.int64))] = torch.from_numpy(values)


class Popularity:
    """Most popular items by training count (ties rank pessimistically, lists ordered by code)."""

    name = "popularity"

    def fit(self, store: FeatureStore) -> Popularity:
        self.counts = store.item_train_count.copy()
        return self

    def scorer(self, user_codes: np.ndarray, hist_end: np.ndarray) -> PopularityScorer:
        return PopularityScorer(self.counts, len(user_codes))


class Transition:
    """First-order Markov chain: how often each item followed the user's last item in training."""

    name = "transition"

    def fit(self, store: FeatureStore) -> Transition:
        users, items, pos = training_events(store)
        follows = (pos[1:] == pos[:-1] + 1) & (users[1:] == users[:-1])
        self.counts = sp.csr_matrix(
            (np.ones(int(follows.sum()), dtype=np.float32), (items[:-1][follows], items[1:][follows])),
            shape=(store.n_items, store.n_items),
        )
        self.store = store
        self.fallback = fallback_scores(store)
        return self

    def scorer(self, user_codes: np.ndarray, hist_end: np.ndarray) -> SparseScorer:
        store = self.store
        ends = np.minimum(np.asarray(hist_end, dtype=np.int64), store.history_length(user_codes))
        last = store.history_windows(user_codes, ends, 1)[:, 0]  # 0 = no history
        n = len(user_codes)
        has = last > 0
        rows = sp.csr_matrix(
            (np.ones(int(has.sum()), dtype=np.float32), (np.flatnonzero(has), last[has])),
            shape=(n, store.n_items),
        )
        return SparseScorer(rows, self.counts, self.fallback)
