"""Exact top-k over a large catalogue near the matmul's speed: blocked scoring with a running
k-best per user, pruned by a threshold.

Why: selecting the k best of every full row of scores (the previous exact path: score rows of
the whole catalogue, then `torch.topk` and a tie fix) cost several times the matmul that made
them (2 * items * dim FLOP per user). Here the scores of a block of users are computed one item
block at a time, and each user keeps its k best so far. An item can only enter a user's list by
scoring at least their current k-th best score, so after the first block almost every score is
discarded by one comparison; the few that pass are merged into the running k-best.

Exactness: the result is the same as sorting every rankable item by (score descending, item code
ascending) and keeping the first k, ties included (`ranking.exact` defines that order). Merges
compare one int64 key per candidate that packs the score's order-preserving bits above the
negated code, so the k largest keys are a total order with no arbitrary choice among ties. An
item is dropped by the threshold only when k items already beat it strictly, so no item of the
true top-k is ever lost. Excluded items (a user's seen items) and the padding column 0 are set to
-inf inside the block before anything is compared: nothing is over-fetched, no second round.

Threads: the matmul runs in torch (all its threads); the selection in numpy on the same memory,
in the calling thread. On a shared 2-core machine many small multi-threaded torch operations
spend more time waiting for each other than working (measured: `>=` plus `nonzero` on a block
cost more than its matmul in torch, a tenth of it in numpy).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

NO_ITEM = 0  # the code returned where a row has fewer than k rankable items
_CODE_BITS = 31  # item codes < 2**31
_CODE_MASK = (1 << _CODE_BITS) - 1

# score(start, stop, lo, hi, out): float32 scores of rows [start, stop) x items [lo, hi) into the
# contiguous tensor `out` [stop - start, hi - lo]
BlockScore = Callable[[int, int, int, int, torch.Tensor], None]


def default_blocks(n_items: int) -> tuple[int, int]:
    """(rows, items) per score block: 1024 x 8192 float32 (32 MiB) measured best on 2 cores for
    100k items (bench/score.py --modes roofline): big enough for the matmul to run at full speed,
    few enough merges per row."""
    return 1024, min(max(n_items, 1), 8192)


def order_keys(scores: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """int64 keys whose descending order is (score desc, code asc); NaN and -inf sort last."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float32), nan=-np.inf, posinf=np.inf, neginf=-np.inf)
    bits = (s + np.float32(0.0)).view(np.int32).astype(np.int64)  # -0.0 + 0.0 = +0.0: one key
    bits = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # IEEE order = sign-magnitude: flip negatives
    return (bits << _CODE_BITS) | (_CODE_MASK - np.asarray(codes, dtype=np.int64))


def key_scores(keys: np.ndarray) -> np.ndarray:
    bits = keys >> _CODE_BITS
    return np.where(bits < 0, bits ^ 0x7FFFFFFF, bits).astype(np.int32).view(np.float32)


def key_codes(keys: np.ndarray) -> np.ndarray:
    return _CODE_MASK - (keys & _CODE_MASK)


# the key of an empty slot: score -inf, code NO_ITEM (decodes like any other -inf entry)
_EMPTY = int(order_keys(np.array([-np.inf], dtype=np.float32), np.array([NO_ITEM]))[0])


class _SeenIndex:
    """The excluded (row, item) pairs of one row block, sorted by item, for slicing per item block."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray) -> None:
        order = np.argsort(cols, kind="stable")
        self.rows = rows[order]
        self.cols = cols[order]

    def mask(self, block: np.ndarray, lo: int, hi: int) -> None:
        a, b = np.searchsorted(self.cols, [lo, hi])
        block[self.rows[a:b], self.cols[a:b] - lo] = -np.inf


def _largest(keys: np.ndarray, take: int) -> np.ndarray:
    """The `take` largest keys of each row (any order)."""
    if keys.shape[1] == take:
        return keys
    return np.partition(keys, keys.shape[1] - take, axis=1)[:, -take:]


def blocked_topk(
    score: BlockScore,
    n_rows: int,
    n_items: int,
    k: int,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    row_block: int = 1024,
    item_block: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (codes int64 [n_rows, k], scores float32 [n_rows, k]) of items 1..n_items-1 per row,
    best first, ties by code ascending; a row with fewer than k rankable items ends with NO_ITEM
    (score -inf). `exclude` is a CSR (indptr int64 [n_rows + 1], indices): row u's item codes
    indices[indptr[u]:indptr[u + 1]] are left out of its ranking.

    The matmul runs in torch (all its threads); the selection runs in numpy on the same memory,
    one thread, which on a shared machine beats many small multi-threaded torch operations.
    """
    codes_out = np.full((n_rows, k), NO_ITEM, dtype=np.int64)
    scores_out = np.full((n_rows, k), -np.inf, dtype=np.float32)
    take = min(k, max(n_items - 1, 0))
    if take == 0 or n_rows == 0:
        return codes_out, scores_out
    item_block = max(1, min(item_block, n_items))
    buffer = torch.empty((min(row_block, n_rows), item_block), dtype=torch.float32)
    scratch = np.empty(tuple(buffer.shape), dtype=np.float32)
    passing = np.empty(tuple(buffer.shape), dtype=bool)
    with torch.inference_mode():
        for start in range(0, n_rows, row_block):
            stop = min(start + row_block, n_rows)
            best = _row_block_topk(
                score, start, stop, n_items, take, item_block, buffer, scratch, passing, exclude
            )
            best = -np.sort(-best, axis=1)  # (score desc, code asc)
            scores = key_scores(best)
            finite = np.isfinite(scores)
            codes_out[start:stop, :take] = np.where(finite, key_codes(best), NO_ITEM)
            scores_out[start:stop, :take] = np.where(finite, scores, -np.inf)
    return codes_out, scores_out


def _row_block_topk(
    score: BlockScore,
    start: int,
    stop: int,
    n_items: int,
    take: int,
    item_block: int,
    buffer: torch.Tensor,
    scratch: np.ndarray,
    passing: np.ndarray,
    exclude: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """The `take` best keys (unsorted) of rows [start, stop). `buffer`, `scratch` and `passing` are
    [row_block, item_block] work arrays reused for every block (fresh multi-MiB arrays per block
    cost page faults)."""
    rows = stop - start
    seen = None
    if exclude is not None:
        indptr, indices = exclude
        lo_e, hi_e = int(indptr[start]), int(indptr[stop])
        if hi_e > lo_e:
            cols = np.asarray(indices[lo_e:hi_e], dtype=np.int64)
            row_ids = np.repeat(np.arange(rows, dtype=np.int64), np.diff(indptr[start : stop + 1]))
            inside = (cols > 0) & (cols < n_items)
            seen = _SeenIndex(row_ids[inside], cols[inside])
    best = np.full((rows, take), _EMPTY, dtype=np.int64)
    threshold = np.full((rows, 1), -np.inf, dtype=np.float32)
    full = False  # every row has `take` rankable items in `best`, so its threshold is finite
    for lo in range(0, n_items, item_block):
        hi = min(lo + item_block, n_items)
        width = hi - lo
        out = buffer[:rows] if width == item_block else torch.empty((rows, width), dtype=torch.float32)
        score(start, stop, lo, hi, out)
        block = out.numpy()
        if lo == 0:
            block[:, 0] = -np.inf  # padding
        if seen is not None:
            seen.mask(block, lo, hi)
        if not full and width >= take:
            # the take-th best score of this block alone: `take` items beat anything below it
            # (partitioned in a reused buffer: a fresh copy per block costs page faults)
            work = scratch[:rows, :width]
            work[...] = block
            work.partition(width - take, axis=1)
            threshold = np.maximum(threshold, work[:, width - take : width - take + 1])
        np.greater_equal(block, threshold, out=passing[:rows, :width])
        flat = np.flatnonzero(passing[:rows, :width])
        if not len(flat):
            continue
        r = flat // width
        keys = order_keys(block.reshape(-1)[flat], flat - r * width + lo)
        counts = np.bincount(r, minlength=rows)
        slot = np.arange(len(flat)) - (np.cumsum(counts) - counts)[r]
        cand = np.full((rows, int(counts.max())), _EMPTY, dtype=np.int64)
        cand[r, slot] = keys
        best = _largest(np.concatenate([best, cand], axis=1), take)
        kth = key_scores(best.min(axis=1, keepdims=True))
        threshold = np.maximum(threshold, kth)
        full = bool(np.isfinite(threshold).all())
    return best
