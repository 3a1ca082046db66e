"""Exact top-k retrieval: chunked matmul + topk over the whole catalogue.

This is the ground truth for annoy's recall and the scorer for small catalogues and for
validation during training. Item row 0 is the padding code and is never returned;
a user's seen items (a CSR of item codes) are excluded before the top-k is taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

NO_ITEM = 0  # code returned where a user has fewer than k unseen items


@dataclass(frozen=True)
class Seen:
    """Items to exclude per user row, as CSR: row u's codes are indices[indptr[u]:indptr[u+1]]."""

    indptr: np.ndarray  # int64 [U + 1]
    indices: np.ndarray  # int64 item codes

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def rows(self, start: int, stop: int) -> Seen:
        """The sub-CSR of rows [start, stop), offsets rebased to 0."""
        lo, hi = self.indptr[start], self.indptr[stop]
        return Seen(self.indptr[start : stop + 1] - lo, self.indices[lo:hi])

    def row_ids(self) -> np.ndarray:
        """The row of every entry of `indices` (for scatter into a dense matrix)."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), self.counts())

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int] | np.ndarray]) -> Seen:
        lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices = (
            np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
            if len(lists) and indptr[-1]
            else np.zeros(0, dtype=np.int64)
        )
        return cls(indptr, indices)

    @classmethod
    def from_prefixes(cls, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Seen:
        """Row u = flat[starts[u] : starts[u] + lengths[u]] — e.g. a user's history before a target.

        Gathered in one vectorized step from a flattened per-user history (no Python loop).
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        offsets = np.repeat(np.asarray(starts, dtype=np.int64) - indptr[:-1], lengths)
        positions = offsets + np.arange(indptr[-1], dtype=np.int64)
        return cls(indptr, np.asarray(flat, dtype=np.int64)[positions])


def exact_topk(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    k: int,
    seen: Seen | None = None,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item codes by dot product for every user, seen items and padding row 0 excluded.

    Returns (codes int64 [U, k], scores float32 [U, k]), best first. Where a user has fewer
    than k candidate items left, the tail holds code `NO_ITEM` (0) with score -inf.
    For cosine models pass L2-normalised vectors.
    """
    users = torch.from_numpy(np.ascontiguousarray(user_vecs, dtype=np.float32))
    items = torch.from_numpy(np.ascontiguousarray(item_vecs, dtype=np.float32))
    n_users, n_items = users.shape[0], items.shape[0]
    if seen is not None and seen.n_rows != n_users:
        raise ValueError(f"seen has {seen.n_rows} rows for {n_users} users")
    take = min(k, max(n_items - 1, 0))
    codes = np.full((n_users, k), NO_ITEM, dtype=np.int64)
    scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    if take == 0 or n_users == 0:
        return codes, scores
    items_t = items.T.contiguous()
    # One score buffer reused for every chunk: allocating a fresh [chunk, n_items] block per
    # chunk costs about as much as the matmul itself on large catalogues.
    buffer = torch.empty((min(chunk_size, n_users), n_items), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, n_users, chunk_size):
            stop = min(start + chunk_size, n_users)
            block = buffer[: stop - start]
            torch.mm(users[start:stop], items_t, out=block)
            block[:, 0] = -torch.inf
            if seen is not None:
                part = seen.rows(start, stop)
                if len(part.indices):
                    inside = part.indices < n_items  # seen items outside the candidate set need no mask
                    rows = torch.from_numpy(part.row_ids()[inside])
                    cols = torch.from_numpy(part.indices[inside])
                    block[rows, cols] = -torch.inf
            top_scores, top_idx = torch.topk(block, take, dim=1)
            top_idx[torch.isneginf(top_scores)] = NO_ITEM
            codes[start:stop, :take] = top_idx.numpy()
            scores[start:stop, :take] = top_scores.numpy()
    return codes, scores
