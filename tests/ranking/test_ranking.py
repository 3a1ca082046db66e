"""The ranking rules against plain-Python references: pessimistic target ranks under each seen
filter, deterministic top-k ties, rank-based metrics, and annoy's candidate ranks."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rechub_store.config import SEEN_FILTERS
from rechub_store.ranking.exact import MISS, NO_ITEM, Seen, exact_ranks, exact_topk, ranks_in_lists
from rechub_store.ranking.metrics import METRICS, rank_metrics, ranking_metrics
from rechub_store.retrieval.annoy_index import AnnoyItems, rescore


def reference_rank(scores: list[float], target: int, removed: set[int]) -> float:
    """1 + #{other ranked items scoring >= the target}; inf if the target cannot be ranked."""
    if target in removed or target == 0 or target >= len(scores):
        return math.inf
    return 1 + sum(
        1 for i in range(1, len(scores)) if i != target and i not in removed and scores[i] >= scores[target]
    )


def removed_by(history: list[int], target: int, seen_filter: str) -> set[int]:
    if seen_filter == "none":
        return set()
    if seen_filter == "all":
        return set(history)
    return set(history) - {target}


def integer_vectors(data: st.DataObject, rows: int, dim: int) -> np.ndarray:
    """Small integers: every dot product is exact in float32, so ties are real ties."""
    values = data.draw(st.lists(st.integers(-2, 2), min_size=rows * dim, max_size=rows * dim))
    return np.array(values, dtype=np.float32).reshape(rows, dim)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_users=st.integers(1, 8), n_items=st.integers(2, 14), dim=st.integers(1, 3))
def test_exact_ranks_match_reference_under_every_seen_filter(
    data: st.DataObject, n_users: int, n_items: int, dim: int
) -> None:
    users = integer_vectors(data, n_users, dim)
    items = integer_vectors(data, n_items, dim)  # few values in few dims: many ties
    histories = [data.draw(st.lists(st.integers(1, n_items - 1), max_size=6)) for _ in range(n_users)]
    targets = np.array([data.draw(st.integers(0, n_items)) for _ in range(n_users)])  # incl. padding, unknown
    for seen_filter in SEEN_FILTERS:
        removed = [removed_by(h, int(t), seen_filter) for h, t in zip(histories, targets, strict=True)]
        exclude = Seen.from_lists([sorted(r) for r in removed])
        got = exact_ranks(users, items, targets, exclude, chunk_size=3)
        for u in range(n_users):
            scores = [float(users[u] @ items[i]) for i in range(n_items)]
            want = reference_rank(scores, int(targets[u]), removed[u])
            assert (got[u] == MISS) if want == math.inf else (got[u] == want), (seen_filter, u)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n_users=st.integers(1, 6), n_items=st.integers(2, 20), k=st.integers(1, 8))
def test_topk_breaks_ties_by_code_in_exact_and_annoy(
    data: st.DataObject, n_users: int, n_items: int, k: int
) -> None:
    users = integer_vectors(data, n_users, 2)
    items = integer_vectors(data, n_items, 2)
    seen = Seen.from_lists(
        [data.draw(st.lists(st.integers(1, n_items - 1), max_size=4)) for _ in range(n_users)]
    )
    codes, scores = exact_topk(users, items, k, seen, chunk_size=2)
    for u in range(n_users):
        removed = set(seen.indices[seen.indptr[u] : seen.indptr[u + 1]].tolist())
        ranked = sorted(
            (i for i in range(1, n_items) if i not in removed), key=lambda i: (-float(users[u] @ items[i]), i)
        )[:k]
        assert [c for c in codes[u].tolist() if c != NO_ITEM] == ranked
        assert np.isneginf(scores[u, len(ranked) :]).all()
    # annoy's candidates are re-sorted the same way, whatever order annoy returned them in
    shuffled = np.array([np.random.default_rng(u).permutation(row) for u, row in enumerate(codes)])
    again, _ = rescore(shuffled, users, items)
    assert np.array_equal(again, codes)


def test_annoy_and_exact_agree_on_ties_at_the_cut() -> None:
    """Items tied with the target rank ahead of it, also when the tie group straddles annoy's top-k."""
    items = np.zeros((9, 2), dtype=np.float32)
    items[1:6] = [1.0, 0.0]  # five items tied
    items[6:] = [0.0, 1.0]
    users = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    targets = np.array([3, 8])
    index = AnnoyItems.build(items, "dot", n_trees=4)
    for k in (2, 3, 5, 6):
        want = exact_ranks(users, items, targets)
        got = index.target_ranks(users, targets, k)
        assert want.tolist() == [5, 3]  # pessimistic: every tied item counts as ahead
        assert got.tolist() == [r if r <= k else MISS for r in want.tolist()], k


def test_ranks_in_lists() -> None:
    codes = np.array([[4, 2, 7, 0], [5, 6, 1, 3], [1, 2, 3, 4]])
    scores = np.array([[3.0, 2.0, 2.0, -np.inf], [1, 1, 1, 1], [4, 3, 2, 1]], dtype=np.float32)
    assert ranks_in_lists(codes, scores, np.array([2, 6, 9])).tolist() == [3, 4, MISS]


@settings(max_examples=40, deadline=None)
@given(
    ranks=st.lists(st.integers(1, 30), min_size=1, max_size=20),
    ks=st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True),
)
def test_rank_metrics_equal_list_metrics_without_ties(ranks: list[int], ks: list[int]) -> None:
    """With distinct scores the rank rule and the top-k list give the same metrics."""
    max_k = max(ks)
    lists = np.array([[100 + j for j in range(max_k)] for _ in ranks])
    targets = np.array([100 + r - 1 if r <= max_k else 1 for r in ranks])
    by_list = ranking_metrics(lists, targets, ks)
    by_rank = rank_metrics(np.array(ranks), ks)
    for metric in METRICS:
        for k in ks:
            assert math.isclose(by_list[metric][k], by_rank[metric][k], abs_tol=1e-12)
    assert rank_metrics(np.array([MISS, 1]), [1])["mrr"][1] == 0.5


def test_seen_helpers() -> None:
    seen = Seen.from_lists([[3, 5, 3], [], [7]])
    assert seen.contains(np.array([3, 1, 8])).tolist() == [True, False, False]
    out = seen.without(np.array([3, 0, 7]))
    assert out.indptr.tolist() == [0, 1, 1, 1] and out.indices.tolist() == [5]


def test_exact_topk_of_a_user_does_not_depend_on_the_other_users_scored() -> None:
    """Incremental scoring keeps the lists of unchanged users and scores the others alone: each
    subset of users must get, bit for bit, the lists it gets inside the full run (BLAS kernels
    for a few rows sum differently; the scorer multiplies fixed-shape blocks)."""
    rng = np.random.default_rng(5)
    users = rng.standard_normal((1500, 32)).astype(np.float32)
    items = rng.standard_normal((3000, 32)).astype(np.float32)
    seen = Seen.from_lists([rng.choice(np.arange(1, 3000), 20, replace=False) for _ in range(1500)])
    codes, scores = exact_topk(users, items, 50, seen)
    for size in (1, 2, 3, 7, 300, 1100):
        pick = np.sort(rng.choice(1500, size, replace=False))
        sub_seen = Seen.from_lists([seen.indices[seen.indptr[u] : seen.indptr[u + 1]] for u in pick])
        sub_codes, sub_scores = exact_topk(users[pick], items, 50, sub_seen)
        np.testing.assert_array_equal(sub_codes, codes[pick])
        assert sub_scores.tobytes() == scores[pick].tobytes(), size
