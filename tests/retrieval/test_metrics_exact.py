"""Vectorized metrics and exact top-k against plain-Python references on random rankings."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rechub_store.ranking.exact import NO_ITEM, Seen, exact_topk
from rechub_store.ranking.metrics import METRICS, ranking_metrics


def reference_metrics(ranking: list[int], relevant: set[int], k: int) -> dict[str, float]:
    """Textbook definitions, one user at a time."""
    top = ranking[:k]
    hits = [1 if item in relevant else 0 for item in top]
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    first = next((i + 1 for i, h in enumerate(hits) if h), None)
    return {
        "recall": sum(hits) / len(relevant),
        "hit": float(any(hits)),
        "precision": sum(hits) / k,
        "ndcg": dcg / idcg,
        "mrr": 1 / first if first else 0.0,
    }


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_users=st.integers(1, 12),
    n_targets=st.integers(1, 3),
    ks=st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True),
)
def test_metrics_match_reference(data: st.DataObject, n_users: int, n_targets: int, ks: list[int]) -> None:
    max_k = max(ks)
    n_items = 15
    rankings, targets = [], []
    for _ in range(n_users):
        perm = data.draw(st.permutations(list(range(1, n_items + 1))))
        rankings.append(perm[:max_k])
        tgt = data.draw(st.lists(st.integers(1, n_items), min_size=1, max_size=n_targets, unique=True))
        targets.append(tgt + [0] * (n_targets - len(tgt)))
    got = ranking_metrics(np.array(rankings), np.array(targets), ks)
    for k in ks:
        for metric in METRICS:
            expected = np.mean(
                [
                    reference_metrics(r, {t for t in tg if t}, k)[metric]
                    for r, tg in zip(rankings, targets, strict=True)
                ]
            )
            assert math.isclose(got[metric][k], expected, rel_tol=1e-9, abs_tol=1e-12), (metric, k)


def test_single_target_leave_one_out() -> None:
    topk = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6]])
    got = ranking_metrics(topk, np.array([3, 6, 6]), [1, 3])
    assert got["hit"][1] == 0.0
    assert math.isclose(got["hit"][3], 2 / 3)
    assert math.isclose(got["mrr"][3], (1 / 2 + 1 / 3) / 3)
    assert math.isclose(got["ndcg"][3], (1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert math.isclose(got["precision"][3], 2 / 9)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000), n_users=st.integers(1, 9), n_items=st.integers(2, 30), k=st.integers(1, 12)
)
def test_exact_topk_matches_bruteforce(seed: int, n_users: int, n_items: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n_users, 4)).astype(np.float32)
    items = rng.normal(size=(n_items, 4)).astype(np.float32)
    seen_lists = [
        rng.choice(np.arange(1, n_items), size=rng.integers(0, n_items), replace=False)
        for _ in range(n_users)
    ]
    codes, scores = exact_topk(users, items, k, Seen.from_lists(seen_lists), chunk_size=4)
    for u in range(n_users):
        candidates = [i for i in range(1, n_items) if i not in set(seen_lists[u].tolist())]
        ranked = sorted(candidates, key=lambda i: -float(users[u] @ items[i]))[:k]
        got = [c for c in codes[u].tolist() if c != NO_ITEM]
        assert len(got) == min(k, len(candidates))
        expected_scores = [float(users[u] @ items[i]) for i in ranked]
        np.testing.assert_allclose(scores[u, : len(got)], expected_scores, rtol=1e-4, atol=1e-4)
        assert not set(got) & set(seen_lists[u].tolist())
        assert 0 not in got


def test_seen_from_prefixes_gathers_history_before_target() -> None:
    flat = np.array([10, 11, 12, 20, 21, 30])
    seen = Seen.from_prefixes(flat, starts=np.array([0, 3, 5]), lengths=np.array([2, 0, 1]))
    assert seen.indptr.tolist() == [0, 2, 2, 3]
    assert seen.indices.tolist() == [10, 11, 30]
    assert seen.rows(1, 3).indices.tolist() == [30]


def test_seen_codes_outside_the_candidate_items_are_ignored() -> None:
    """Items newer than the model are left out of the candidate matrix but stay in histories."""
    users = np.array([[1.0, 0.0]], dtype=np.float32)
    items = np.array([[0, 0], [1, 0], [0.5, 0], [0.1, 0]], dtype=np.float32)
    codes, _ = exact_topk(users, items, 2, Seen.from_lists([[1, 7, 9]]))
    assert codes.tolist() == [[2, 3]]
