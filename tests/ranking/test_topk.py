"""The blocked top-k (ranking.topk) against a plain-Python sort, over many small item blocks: ties
(integer vectors), seen items, rows with fewer than k rankable items, and the order keys."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rechub_store.ranking.exact import NO_ITEM, Seen, scorer_topk
from rechub_store.ranking.topk import blocked_topk, key_codes, key_scores, order_keys


def reference_topk(scores: np.ndarray, removed: set[int], k: int) -> list[int]:
    """Items 1.. by (score desc, code asc), removed and -inf left out."""
    ranked = [i for i in range(1, len(scores)) if i not in removed and np.isfinite(scores[i])]
    return sorted(ranked, key=lambda i: (-float(scores[i]), i))[:k]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_users=st.integers(1, 9),
    n_items=st.integers(1, 40),
    k=st.integers(1, 12),
    row_block=st.integers(1, 4),
    item_block=st.integers(1, 9),
)
def test_blocked_topk_equals_a_full_sort(
    data: st.DataObject, n_users: int, n_items: int, k: int, row_block: int, item_block: int
) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    users = rng.integers(-2, 3, size=(n_users, 2)).astype(np.float32)  # few values: many ties
    items = rng.integers(-2, 3, size=(n_items, 2)).astype(np.float32)
    seen_lists = [
        data.draw(st.lists(st.integers(0, n_items + 3), max_size=n_items)) for _ in range(n_users)
    ]  # incl. padding and codes past the catalogue, which are ignored
    seen = Seen.from_lists(seen_lists)
    users_t, items_t = torch.from_numpy(users), torch.from_numpy(items).T.contiguous()

    def score(start: int, stop: int, lo: int, hi: int, out: torch.Tensor) -> None:
        torch.mm(users_t[start:stop], items_t[:, lo:hi], out=out)

    codes, scores = blocked_topk(
        score, n_users, n_items, k, (seen.indptr, seen.indices), row_block=row_block, item_block=item_block
    )
    assert codes.shape == scores.shape == (n_users, k)
    for u in range(n_users):
        full = users[u] @ items.T
        want = reference_topk(full, set(seen_lists[u]), k)
        assert codes[u, : len(want)].tolist() == want
        np.testing.assert_array_equal(scores[u, : len(want)], full[want])
        assert (codes[u, len(want) :] == NO_ITEM).all() and np.isneginf(scores[u, len(want) :]).all()


def test_a_scorer_without_item_blocks_gives_the_same_lists() -> None:
    """Baselines score whole rows: their blocks are cut from one row block, with the same result."""
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 4, size=50).astype(np.float32)  # popularity-like: ties everywhere

    class Popularity:
        n_rows, n_items = 7, 50

        def block(self, start: int, stop: int, out: torch.Tensor) -> None:
            out.copy_(torch.from_numpy(counts).expand(stop - start, -1))

    seen = Seen.from_lists([list(range(1, 50, 2)), [], list(range(1, 50)), [3], [4, 5], [], [49]])
    codes, _ = scorer_topk(Popularity(), 10, seen, chunk_size=3)
    for u in range(7):
        removed = set(seen.indices[seen.indptr[u] : seen.indptr[u + 1]].tolist())
        want = reference_topk(counts, removed, 10)
        assert [c for c in codes[u].tolist() if c != NO_ITEM] == want


def test_order_keys_sort_like_score_then_code() -> None:
    scores = np.array([1.5, -0.0, 0.0, -2.0, np.inf, -np.inf, np.nan, 1.5, -1e-30, 3e38], dtype=np.float32)
    codes = np.arange(len(scores), dtype=np.int64) * 7 + 1
    keys = order_keys(scores, codes)
    got = [int(c) for c in key_codes(np.sort(keys)[::-1])]
    clean = np.nan_to_num(scores, nan=-np.inf, posinf=np.inf, neginf=-np.inf)
    want = sorted(range(len(scores)), key=lambda i: (-float(clean[i]), codes[i]))
    assert got == [int(codes[i]) for i in want]
    np.testing.assert_array_equal(key_scores(keys), np.where(np.isnan(scores), -np.inf, scores + 0.0))
