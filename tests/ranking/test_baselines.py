"""Baselines against plain-Python definitions on a small store: what they learn from (training
events only), item-kNN's cosine neighbours and recency weights, transition counts, the popularity
fallback, and deterministic production lists."""

from __future__ import annotations

import math
from collections import Counter
from itertools import pairwise

import duckdb
import numpy as np
import pytest
import torch
from planted import write_feature_store

from rechub_store.data.readers import FeatureStore
from rechub_store.ranking.baselines import Popularity, Transition, training_events
from rechub_store.ranking.exact import Scorer, scorer_topk
from rechub_store.ranking.itemknn import ItemKNN

HISTORIES = [
    [1, 2, 3, 4, 2, 5],
    [2, 3, 1, 3, 6],
    [5, 6, 1, 2],
    [3, 4, 5, 6, 1, 4],
    [6, 5, 4],
]
N_ITEMS = 6


@pytest.fixture(scope="module")
def store() -> FeatureStore:
    con = duckdb.connect()
    write_feature_store(con, HISTORIES, N_ITEMS, max_seq_len=8)
    return FeatureStore.load(con)


def training_histories() -> list[list[int]]:
    """Leave-one-out with validation: the last two events of every user are held out."""
    return [h[:-2] for h in HISTORIES]


def scores(scorer: Scorer, n_rows: int) -> np.ndarray:
    out = torch.empty((n_rows, scorer.n_items))
    scorer.block(0, n_rows, out)
    return out.numpy()


def test_training_events_leave_out_the_held_out_targets(store: FeatureStore) -> None:
    users, items, pos = training_events(store)
    got = sorted(zip(users.tolist(), pos.tolist(), items.tolist(), strict=True))
    want = sorted((u + 1, p, i) for u, h in enumerate(training_histories()) for p, i in enumerate(h))
    assert got == want


def test_itemknn_matches_cosine_of_training_interactions(store: FeatureStore) -> None:
    knn = ItemKNN(neighbours=2, recent=3, decay=0.5).fit(store)
    users_of = {c: {u for u, h in enumerate(training_histories()) if c in h} for c in range(1, N_ITEMS + 1)}

    def cosine(a: int, b: int) -> float:
        both = len(users_of[a] & users_of[b])
        return both / math.sqrt(len(users_of[a]) * len(users_of[b])) if both else 0.0

    similar = knn.similar.toarray()
    for a in range(1, N_ITEMS + 1):
        sims = sorted(((cosine(a, b), b) for b in range(1, N_ITEMS + 1) if b != a), reverse=True)
        kept = {b: s for s, b in sims[:2] if s > 0}
        row = {b: similar[a, b] for b in range(N_ITEMS + 1) if similar[a, b] != 0}
        # ties at the cut may keep either item: compare the similarities, then the items where unambiguous
        assert sorted(row.values()) == pytest.approx(sorted(kept.values()))
        if len({s for s, _ in sims[:3]}) == 3:
            assert set(row) == set(kept)
    assert not similar.diagonal().any(), "never its own neighbour in the published matrix"
    # a user's score: recency-weighted similarity to the last `recent` items before the cut, an
    # item's similarity to itself being self_weight (1 by default)
    users, ends = np.array([1, 4]), np.array([4, 5])
    got = scores(knn.scorer(users, ends), 2)
    for row, (u, end) in enumerate(zip(users, ends, strict=True)):
        recent = HISTORIES[u - 1][:end][-3:]
        for item in range(1, N_ITEMS + 1):
            want = sum(
                0.5 ** (len(recent) - 1 - j) * (similar[r, item] + (r == item)) for j, r in enumerate(recent)
            )
            if want > 0:
                assert got[row, item] == pytest.approx(want, rel=1e-6)
            else:  # the popularity fallback: below every scored item
                assert -1 <= got[row, item] < 0


def test_itemknn_self_weight_ranks_repeats(store: FeatureStore) -> None:
    """self_weight scores a user's own recent items (what a repeated target needs); 0 never does."""
    users, ends = np.array([1, 4]), np.array([4, 5])
    plain = scores(
        ItemKNN(neighbours=2, recent=3, decay=0.5, self_weight=0.0).fit(store).scorer(users, ends), 2
    )
    heavy = scores(
        ItemKNN(neighbours=2, recent=3, decay=0.5, self_weight=5.0).fit(store).scorer(users, ends), 2
    )
    for row, (u, end) in enumerate(zip(users, ends, strict=True)):
        recent = HISTORIES[u - 1][:end][-3:]
        last = recent[-1]
        assert heavy[row, last] == pytest.approx(max(plain[row, last], 0.0) + 5.0, rel=1e-6)
        assert np.argmax(heavy[row, 1:]) + 1 == last  # the latest item outranks everything
        others = [i for i in range(1, N_ITEMS + 1) if i not in recent]
        np.testing.assert_allclose(heavy[row, others], plain[row, others])


def test_transition_counts_and_fallback(store: FeatureStore) -> None:
    model = Transition().fit(store)
    pairs = Counter((a, b) for h in training_histories() for a, b in pairwise(h))
    counts = model.counts.toarray()
    assert {(a, b): counts[a, b] for a, b in zip(*np.nonzero(counts), strict=True)} == pairs
    users, ends = np.array([1, 2, 5]), np.array([3, 0, 2])  # last items 3, none, 5
    got = scores(model.scorer(users, ends), 3)
    pop = Popularity().fit(store).counts
    for item in range(1, N_ITEMS + 1):  # counts after item 3, the popularity fallback below them
        assert got[0, item] == pairs[(3, item)] if pairs[(3, item)] else -1 <= got[0, item] < 0
    # no history: pure popularity order
    order = np.lexsort((np.arange(1, N_ITEMS + 1), -got[1, 1:]))
    assert np.array_equal(np.argsort(-pop[1:], kind="stable"), order)


def test_production_lists_are_deterministic_with_ties(store: FeatureStore) -> None:
    """Popularity has equal counts: the list is ordered by count, then by item code, every time."""
    users = np.arange(1, len(HISTORIES) + 1)
    ends = store.history_length(users)
    pop = Popularity().fit(store)
    codes, _ = scorer_topk(pop.scorer(users, ends), 4)
    counts = pop.counts
    want = sorted(range(1, N_ITEMS + 1), key=lambda c: (-counts[c], c))[:4]
    assert all(row == want for row in codes.tolist())
