"""Exact ranking over the whole catalogue: chunked score blocks, deterministic top-k, target ranks.

This is the ground truth for annoy's recall, the scorer for small catalogues, and the ranking
used by every metric (validation during training, `evaluate`, the baselines). Item column 0 is
the padding code and is never ranked; a row's excluded items (a CSR of item codes) are removed
before anything is ranked.

Ties have one rule everywhere:
- top-k lists are ordered by score, then by item code (ascending), so the same scores always
  give the same list, whatever torch.topk's internal order;
- the rank of a held-out target is pessimistic: rank = 1 + the number of other ranked items
  whose score is >= the target's, so an item tied with the target ranks ahead of it and a
  constant scorer never gets credit for luck.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from rechub_store.ranking.topk import NO_ITEM, BlockScore, blocked_topk, default_blocks

MISS = np.iinfo(np.int64).max  # rank of a target that cannot be ranked (filtered out, unknown item)


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

    def take(self, rows: np.ndarray) -> Seen:
        """The sub-CSR of the given rows, in that order."""
        if len(rows) == self.n_rows and np.array_equal(rows, np.arange(self.n_rows)):
            return self
        return Seen.from_prefixes(self.indices, self.indptr[rows], self.counts()[rows])

    def row_ids(self) -> np.ndarray:
        """The row of every entry of `indices` (for scatter into a dense matrix)."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), self.counts())

    def contains(self, codes: np.ndarray) -> np.ndarray:
        """[U] bool: is codes[u] one of row u's items?"""
        codes = np.asarray(codes, dtype=np.int64)
        hit = self.indices == np.repeat(codes, self.counts())
        return np.bincount(self.row_ids()[hit], minlength=self.n_rows) > 0

    def without(self, codes: np.ndarray) -> Seen:
        """The same rows with every occurrence of codes[u] removed from row u."""
        codes = np.asarray(codes, dtype=np.int64)
        keep = self.indices != np.repeat(codes, self.counts())
        counts = np.bincount(self.row_ids()[keep], minlength=self.n_rows)
        indptr = np.zeros(self.n_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return Seen(indptr, self.indices[keep])

    @classmethod
    def empty(cls, n_rows: int) -> Seen:
        return cls(np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))

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


class Scorer(Protocol):
    """Scores of every item for a range of rows: a model's vectors or a baseline."""

    n_rows: int
    n_items: int  # columns: item codes 0..n_items-1 (0 = padding, never ranked)

    def block(self, start: int, stop: int, out: torch.Tensor) -> None:
        """Write the float32 scores of rows [start, stop) into `out` [stop - start, n_items]."""
        ...


class VectorScorer:
    """Dot products of user vectors with item vectors (cosine models: pass normalised vectors).

    `block_rows`: the row block of `block_items`. Every item block is multiplied with exactly that
    many user rows (a shorter last block is padded with zero rows), because BLAS picks its kernel
    by shape: measured with MKL, blocks under 16 rows take another path whose sums differ by a
    few ulp. With one shape, a user's scores depend on their vector alone, not on which other
    users share the run, so rescoring a subset of users gives the rows a full run would
    (incremental scoring relies on it and checks it, `retrieval.rescoring`).
    """

    def __init__(self, user_vecs: np.ndarray, item_vecs: np.ndarray, block_rows: int | None = None) -> None:
        self.users = torch.from_numpy(np.ascontiguousarray(user_vecs, dtype=np.float32))
        self.items_t = torch.from_numpy(np.ascontiguousarray(item_vecs, dtype=np.float32)).T.contiguous()
        self.n_rows = self.users.shape[0]
        self.n_items = self.items_t.shape[1]
        self.block_rows = block_rows or default_blocks(self.n_items)[0]
        self._padded: tuple[torch.Tensor, tuple[int, int]] | None = None  # short last block, zero-padded

    def block(self, start: int, stop: int, out: torch.Tensor) -> None:
        torch.mm(self.users[start:stop], self.items_t, out=out)

    def block_items(self, start: int, stop: int, lo: int, hi: int, out: torch.Tensor) -> None:
        """Scores of rows [start, stop) for items [lo, hi) only (ranking.topk scores item blocks),
        always computed as a [block_rows, hi - lo] product (see the class)."""
        rows = stop - start
        if rows == self.block_rows:
            torch.mm(self.users[start:stop], self.items_t[:, lo:hi], out=out)
            return
        if rows > self.block_rows:
            raise ValueError(f"row block of {rows} rows for a scorer of {self.block_rows}-row blocks")
        if self._padded is None or self._padded[1] != (start, stop):
            padded = torch.zeros((self.block_rows, self.users.shape[1]), dtype=torch.float32)
            padded[:rows] = self.users[start:stop]
            self._padded = (padded, (start, stop))
        out.copy_(torch.mm(self._padded[0], self.items_t[:, lo:hi])[:rows])


def _chunk_rows(n_items: int, chunk_size: int | None) -> int:
    """Rows per score block: ~256 MB of float32 unless told otherwise."""
    return chunk_size or max(64, min(4096, (1 << 26) // max(n_items, 1)))


def _blocks(
    scorer: Scorer, exclude: Seen | None, chunk_size: int | None
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (start, stop, block) with padding and excluded items set to -inf; one buffer reused
    (allocating a fresh [chunk, n_items] block per chunk costs about as much as the matmul).
    Callers run it under torch.inference_mode()."""
    n_rows, n_items = scorer.n_rows, scorer.n_items
    if exclude is not None and exclude.n_rows != n_rows:
        raise ValueError(f"exclusions have {exclude.n_rows} rows for {n_rows} users")
    chunk = _chunk_rows(n_items, chunk_size)
    buffer = torch.empty((min(chunk, max(n_rows, 1)), n_items), dtype=torch.float32)
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        block = buffer[: stop - start]
        scorer.block(start, stop, block)
        block[:, 0] = -torch.inf
        if exclude is not None:
            part = exclude.rows(start, stop)
            if len(part.indices):
                inside = (part.indices < n_items) & (part.indices >= 0)  # others need no mask
                rows = torch.from_numpy(part.row_ids()[inside])
                cols = torch.from_numpy(part.indices[inside])
                block[rows, cols] = -torch.inf
        yield start, stop, block


def _full_block_slices(scorer: Scorer, chunk_size: int | None) -> tuple[BlockScore, int]:
    """A block-score function for a scorer that only scores whole rows (the baselines): each row
    block is scored once and handed out item block by item block. Returns it and its row count."""
    rows = _chunk_rows(scorer.n_items, chunk_size)
    held: dict[str, object] = {}

    def score(start: int, stop: int, lo: int, hi: int, out: torch.Tensor) -> None:
        if held.get("rows") != (start, stop):
            full = torch.empty((stop - start, scorer.n_items), dtype=torch.float32)
            scorer.block(start, stop, full)
            held.update(rows=(start, stop), block=full)
        out.copy_(held["block"][:, lo:hi])  # type: ignore[index]

    return score, rows


def scorer_topk(
    scorer: Scorer, k: int, exclude: Seen | None = None, chunk_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (codes int64 [U, k], scores float32 [U, k]) of every row, best first, ties by code.

    Where a row has fewer than k rankable items the tail holds `NO_ITEM` (0) with score -inf.
    Selection is ranking.topk's blocked running k-best; scorers with `block_items` (vectors)
    are scored one item block at a time, others one row block at a time.
    """
    if exclude is not None and exclude.n_rows != scorer.n_rows:
        raise ValueError(f"exclusions have {exclude.n_rows} rows for {scorer.n_rows} users")
    rows, item_block = default_blocks(scorer.n_items)
    block_items = getattr(scorer, "block_items", None)
    if block_items is not None:
        score, rows = block_items, getattr(scorer, "block_rows", None) or chunk_size or rows
    else:
        score, rows = _full_block_slices(scorer, chunk_size)
    return blocked_topk(
        score,
        scorer.n_rows,
        scorer.n_items,
        k,
        None if exclude is None else (exclude.indptr, exclude.indices),
        row_block=rows,
        item_block=item_block,
    )


def scorer_ranks(
    scorer: Scorer, targets: np.ndarray, exclude: Seen | None = None, chunk_size: int | None = None
) -> np.ndarray:
    """Pessimistic rank of each row's target among the rankable items: 1 + #{i != target : s_i >= s_target}.

    `MISS` where the target cannot be ranked: excluded, padding, or a code the scorer lacks.
    """
    targets = np.asarray(targets, dtype=np.int64)
    ranks = np.full(scorer.n_rows, MISS, dtype=np.int64)
    if scorer.n_rows == 0:
        return ranks
    known = (targets > 0) & (targets < scorer.n_items)
    with torch.inference_mode():
        for start, stop, block in _blocks(scorer, exclude, chunk_size):
            t = torch.from_numpy(np.where(known[start:stop], targets[start:stop], 0))
            target_score = block.gather(1, t[:, None])
            # counts the target itself once; numpy's count_nonzero counts a bool block ~9x faster
            # than torch's sum (which widens it to int64), measured on [1800, 37k] blocks
            count = np.count_nonzero(block.numpy() >= target_score.numpy(), axis=1)
            lost = (torch.isneginf(target_score) | torch.isnan(target_score))[:, 0].numpy()
            ranks[start:stop] = np.where(known[start:stop] & ~lost, count, MISS)
    return ranks


def exact_topk(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    k: int,
    seen: Seen | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item codes by dot product for every user, seen items and padding row 0 excluded.

    Returns (codes int64 [U, k], scores float32 [U, k]), best first, ties by code. Where a user has
    fewer than k candidate items left, the tail holds code `NO_ITEM` (0) with score -inf.
    For cosine models pass L2-normalised vectors.
    """
    return scorer_topk(VectorScorer(user_vecs, item_vecs, chunk_size), k, seen)


def exact_ranks(
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    targets: np.ndarray,
    exclude: Seen | None = None,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Pessimistic rank of each user's target over the whole catalogue (see `scorer_ranks`)."""
    return scorer_ranks(VectorScorer(user_vecs, item_vecs), targets, exclude, chunk_size)


def ranks_in_lists(codes: np.ndarray, scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pessimistic rank of each row's target within its candidate list (codes [U, K] with exact
    scores; 0 = no item): 1 + #{other listed items with score >= the target's}, `MISS` if absent."""
    codes = np.asarray(codes)
    targets = np.asarray(targets, dtype=np.int64)
    listed = (codes == targets[:, None]) & (codes != NO_ITEM)
    found = listed.any(axis=1)
    target_score = np.where(found, scores[np.arange(len(codes)), listed.argmax(axis=1)], np.inf)
    ahead = ((scores >= target_score[:, None]) & (codes != NO_ITEM) & ~listed).sum(axis=1)
    return np.where(found, ahead + 1, MISS).astype(np.int64)
