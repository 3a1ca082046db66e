"""The annoy index: tuning reaches the recall target, seen items never come back, k rows per user."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rechub_store.ranking.embeddings import normalize_for_index
from rechub_store.ranking.exact import Seen, exact_topk
from rechub_store.retrieval import annoy_index
from rechub_store.retrieval.annoy_index import (
    TUNE_MARGIN,
    AnnoyItems,
    build_tuned,
    drop_seen,
    load_or_build,
    overlap_at_k,
    sample_rows,
)


def clustered(
    rng: np.random.Generator,
    n: int,
    dim: int = 16,
    n_clusters: int = 40,
    spread: float = 0.6,
    centers: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters with overlap: the shape of trained embeddings (not isotropic noise)."""
    if centers is None:
        centers = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    labels = rng.integers(0, len(centers), n)
    return (centers[labels] + spread * rng.standard_normal((n, dim))).astype(np.float32), centers


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    items, centers = clustered(rng, 3001)
    items[0] = 0.0  # padding row
    users, _ = clustered(rng, 400, centers=centers)
    return items, users


def random_seen(rng: np.random.Generator, n_users: int, n_items: int, max_len: int) -> Seen:
    return Seen.from_lists(
        [
            rng.choice(np.arange(1, n_items + 1), size=rng.integers(0, max_len + 1), replace=False)
            for _ in range(n_users)
        ]
    )


@pytest.mark.parametrize("kind", ["dot", "cosine"])
def test_tuning_meets_target_and_records_settings(vectors, kind: str) -> None:
    items, users = (normalize_for_index(v, kind) for v in vectors)
    metric = "dot" if kind == "dot" else "angular"
    index, tuning = build_tuned(items, users[:200], metric, 20, target_recall=0.97, n_trees=2)
    assert tuning.met_target and tuning.recall >= 0.97
    assert tuning.metric == metric and tuning.n_items == 3000 and tuning.k == 20
    assert tuning.search_k == index.search_k
    same_trees = [t for t in tuning.trials if t["n_trees"] == tuning.n_trees]
    assert next(t["recall"] for t in same_trees if t["search_k"] == tuning.search_k) >= 0.97
    # the cheapest setting that met the target (cheaper trials missed it, or missed it by the margin)
    assert all(t["recall"] < 0.97 + TUNE_MARGIN for t in same_trees if t["search_k"] < tuning.search_k)
    # the ladder raised search_k from annoy's default (n_trees * k) until the target was met
    assert tuning.trials[0]["search_k"] == 2 * 20
    truth, _ = exact_topk(users[200:], items, 20)
    found, _ = index.topk(users[200:], 20)
    assert overlap_at_k(found, truth, 20) >= 0.9  # held-out users, same settings


def test_unreachable_target_keeps_best_and_says_so(vectors) -> None:
    items, users = vectors
    _, tuning = build_tuned(
        items, users[:50], "dot", 10, target_recall=1.0, n_trees=1, max_trees=2, search_k=10
    )
    assert tuning.search_k == 10 and tuning.n_trees == 1  # fixed search_k: measured, not tuned
    assert 0 < tuning.recall < 1.0 and not tuning.met_target


def test_topk_removes_seen_and_returns_exactly_k(vectors) -> None:
    items, users = vectors
    rng = np.random.default_rng(1)
    index, _ = build_tuned(items, users[:100], "dot", 10)
    seen = random_seen(rng, len(users), 3000, 300)
    codes, scores = index.topk(users, 10, seen)
    assert codes.shape == (len(users), 10)
    assert (codes > 0).all(), "every user has >= 10 unseen items, so 10 come back"
    for u in range(len(users)):
        row_seen = set(seen.indices[seen.indptr[u] : seen.indptr[u + 1]].tolist())
        assert not row_seen & set(codes[u].tolist())
        assert len(set(codes[u].tolist())) == 10
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "best first"
    np.testing.assert_allclose(scores, np.einsum("ukd,ud->uk", items[codes], users), rtol=1e-4, atol=1e-4)
    exact, _ = exact_topk(users, items, 10, seen)
    assert overlap_at_k(codes, exact, 10) >= 0.9


def test_widening_when_nearly_everything_is_seen() -> None:
    """A user who has seen all but 3 items gets those 3 and padding, not seen items."""
    rng = np.random.default_rng(3)
    items, _ = clustered(rng, 61)
    items[0] = 0
    users, _ = clustered(rng, 3)
    index, _ = build_tuned(items, users, "dot", 5, n_trees=2, search_k=4)  # deliberately too small a search
    unseen = {0: [5, 17, 42], 1: list(range(1, 61)), 2: []}
    seen = Seen.from_lists([sorted(set(range(1, 61)) - set(unseen[u])) for u in range(3)])
    codes, scores = index.topk(users, 5, seen)
    assert sorted(codes[0, :3].tolist()) == [5, 17, 42] and (codes[0, 3:] == 0).all()
    assert np.isneginf(scores[0, 3:]).all()
    assert (codes[1] > 0).all() and len(set(codes[1].tolist())) == 5
    assert (codes[2] == 0).all()


def test_rows_grouped_by_width_give_the_same_answer(vectors, monkeypatch) -> None:
    """One heavy user must not widen every row: rows are asked in groups of similar width, and
    the answer does not depend on the grouping."""
    items, users = vectors
    rng = np.random.default_rng(5)
    index, _ = build_tuned(items, users[:100], "dot", 10)
    seen = Seen.from_lists(
        [
            rng.choice(np.arange(1, 3001), size=2500 if u == 7 else rng.integers(0, 40), replace=False)
            for u in range(len(users))
        ]
    )
    whole = index.topk(users, 10, seen)
    want = np.minimum(10 + seen.counts(), 3000)
    monkeypatch.setattr(annoy_index, "CANDIDATE_BLOCK", 400)
    groups = list(annoy_index._width_groups(np.arange(len(users)), want))
    assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(len(users)))
    assert all(len(g) == 1 or len(g) * want[g].max() <= 400 for g in groups) and len(groups) > 10
    grouped = index.topk(users, 10, seen)
    np.testing.assert_array_equal(grouped[0], whole[0])
    np.testing.assert_array_equal(grouped[1], whole[1])


def test_threads_give_the_same_answer(vectors) -> None:
    items, users = vectors
    index, _ = build_tuned(items, users[:100], "dot", 10)
    one = index.topk(users, 10, n_threads=1)[0]
    two = index.topk(users, 10, n_threads=2)[0]
    np.testing.assert_array_equal(one, two)


def test_index_is_saved_once_and_reused(tmp_path: Path, vectors) -> None:
    items, users = vectors
    path = tmp_path / "run" / "items.ann"
    a, tuning, built = load_or_build(path, items, users[:100], "dot", 10)
    assert built and path.exists()
    meta = json.loads(path.with_name("items.ann.json").read_text())
    assert meta["search_k"] == tuning.search_k and meta["recall"] == tuning.recall
    b, tuning2, built2 = load_or_build(path, items, users[:100], "dot", 50)  # other k: same index, scaled
    assert not built2 and tuning2.search_k == tuning.search_k
    assert b.search_k_for(np.array([50]))[0] == tuning.search_k * 5
    np.testing.assert_array_equal(a.topk(users, 10)[0], b.topk(users, 10)[0])
    changed = items.copy()
    changed[5] += 1.0
    _, _, built3 = load_or_build(path, changed, users[:100], "dot", 10)
    assert built3, "new vectors (a retrained model) rebuild the index"
    _, _, built4 = load_or_build(path, changed, users[:100], "dot", 10, n_trees=20)
    assert built4, "changed tree settings in the job file rebuild the index"


def test_loading_a_wrong_index_fails(tmp_path: Path, vectors) -> None:
    items, _ = vectors
    index = AnnoyItems.build(items[:100], "dot", 2)
    index.save(tmp_path / "x.ann")
    with pytest.raises(ValueError, match="items"):
        AnnoyItems.load(tmp_path / "x.ann", items, "dot", 10, 10)


def test_sample_rows() -> None:
    assert sample_rows(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
    s = sample_rows(1000, 10, 0)
    assert len(s) == 10 and len(set(s.tolist())) == 10 and (np.diff(s) > 0).all()
    np.testing.assert_array_equal(s, sample_rows(1000, 10, 0))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_drop_seen_and_overlap_match_plain_python(data) -> None:
    n_rows = data.draw(st.integers(1, 6))
    width = data.draw(st.integers(1, 8))
    rows = [data.draw(st.lists(st.integers(0, 12), min_size=width, max_size=width)) for _ in range(n_rows)]
    seen_lists = [data.draw(st.lists(st.integers(1, 12), max_size=6)) for _ in range(n_rows)]
    cand = np.array(rows, dtype=np.int64)
    # blocks of rows as in production, down to one row per block
    block = data.draw(st.sampled_from([1, width, 3 * width, annoy_index.DROP_SEEN_BLOCK]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(annoy_index, "DROP_SEEN_BLOCK", block)
        packed, n_kept = drop_seen(cand, Seen.from_lists(seen_lists))
    for r in range(n_rows):
        expected = [c for c in rows[r] if c != 0 and c not in seen_lists[r]]
        assert packed[r, : len(expected)].tolist() == expected
        assert (packed[r, len(expected) :] == 0).all() and n_kept[r] == len(expected)
    truth = np.array(
        [
            data.draw(st.lists(st.integers(0, 12), min_size=width, max_size=width, unique=True))
            for _ in range(n_rows)
        ],
        dtype=np.int64,
    )
    k = data.draw(st.integers(1, width))
    ref = []
    for r in range(n_rows):
        t = [c for c in truth[r, :k] if c]
        if t:
            ref.append(len(set(t) & set(cand[r, :k].tolist())) / len(t))
    assert overlap_at_k(cand, truth, k) == pytest.approx(np.mean(ref) if ref else 1.0)
