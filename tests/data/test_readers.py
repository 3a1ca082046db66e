"""Readers: windows, seen sets, negatives and sample sources against plain-Python references;
the prefetch thread keeps order, passes errors on and stops when closed."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planted import write_feature_store

from rechub_store.data.readers import (
    FeatureStore,
    InMemorySamples,
    NegativeSampler,
    StreamingSamples,
    prefetch,
    sequence_units,
)
from rechub_store.errors import UserError


def _store(histories: list[list[int]], n_items: int) -> tuple[duckdb.DuckDBPyConnection, FeatureStore]:
    con = duckdb.connect()
    write_feature_store(con, histories, n_items, max_seq_len=4)
    return con, FeatureStore.load(con, static_negatives=True)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 9), min_size=0, max_size=12), min_size=1, max_size=6),
    st.integers(1, 6),
    st.data(),
)
def test_windows_and_seen_match_python(histories: list[list[int]], width: int, data: st.DataObject) -> None:
    _, store = _store(histories, 9)
    users = np.array(data.draw(st.lists(st.integers(1, len(histories)), min_size=1, max_size=8)))
    ends = np.array([data.draw(st.integers(0, len(histories[u - 1]))) for u in users])
    windows = store.history_windows(users, ends, width)
    indptr, indices = store.seen(users, ends)
    for row, (u, e) in enumerate(zip(users, ends, strict=True)):
        recent = histories[u - 1][max(0, e - width) : e]
        assert windows[row].tolist() == [0] * (width - len(recent)) + recent
        assert indices[indptr[row] : indptr[row + 1]].tolist() == histories[u - 1][:e]


def test_store_reads_the_contract_tables(planted_store: FeatureStore) -> None:
    s = planted_store
    assert (s.n_users, s.n_items, s.max_seq_len, s.build_id) == (201, 31, 8, "build-test")
    assert s.user_sparse["gender"][1:5].tolist() == [1, 2, 1, 2] and s.user_sparse["gender"][0] == 0
    assert s.item_sparse["parity"][1:4].tolist() == [2, 1, 2]
    assert s.item_tags is not None and s.item_tags.shape == (31, 2) and s.item_tags[0].tolist() == [0, 0]
    assert s.item_tags[2].tolist() == [1, 2]
    assert s.user_dense["age"].min() >= 0.0 and s.user_dense["age"].max() <= 1.0
    train = s.samples["train"]
    assert train.negatives is not None and train.negatives.shape == (len(train), 3)
    # pos addresses the history: the target is the item at pos
    starts = s.hist_offsets[train.user_code]
    assert np.array_equal(s.hist_items[starts + train.pos], train.target)
    assert s.item_train_count.sum() == len(train)


def test_user_and_item_batches(planted_store: FeatureStore) -> None:
    s = planted_store
    ub = s.user_batch(np.array([1, 2, 999]), np.array([3, 0, 5]), 4, trim=False)
    assert ub["hist"].shape == (3, 4) and ub["hist"][1].tolist() == [0, 0, 0, 0]
    trimmed = s.user_batch(np.array([1, 2, 999]), np.array([3, 0, 5]), 4)["hist"]
    assert trimmed.shape == (3, 3) and trimmed.tolist() == ub["hist"][:, 1:].tolist()
    assert ub["hist"][2].tolist() == [0, 0, 0, 0]  # unknown user: empty history, padding codes
    assert ub["u.user_id"].tolist() == [1, 2, 0] and ub["u.gender"].tolist() == [1, 2, 0]
    ib = s.item_batch(np.array([0, 3]))
    assert ib["i.item_id"].tolist() == [0, 3] and ib["tags"].shape == (2, 2) and "id.price" in ib


def test_negatives_are_seeded_and_never_positives(planted_store: FeatureStore) -> None:
    for kind in ("uniform", "popularity"):
        sampler = NegativeSampler(planted_store, kind)
        users = planted_store.samples["train"].user_code
        a = sampler.sample(users, 5, np.random.default_rng(3))
        b = sampler.sample(users, 5, np.random.default_rng(3))
        assert np.array_equal(a, b) and a.shape == (len(users), 5)
        assert (a > 0).all() and (a < planted_store.n_items).all()
        assert not sampler.is_positive(np.repeat(users, 5), a.ravel()).any()
    with pytest.raises(UserError):
        NegativeSampler(planted_store, "zipf")  # type: ignore[arg-type]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(st.integers(1, 9), min_size=0, max_size=12), min_size=1, max_size=6))
def test_positive_check_matches_python_with_and_without_the_bitmap(histories: list[list[int]]) -> None:
    _, store = _store(histories, 10)
    users, items = np.meshgrid(np.arange(store.n_users), np.arange(store.n_items), indexing="ij")
    users, items = users.ravel(), items.ravel()
    seen = {(u + 1, i) for u, h in enumerate(histories) for i in h}  # user codes from 1
    want = np.array([(u, i) in seen for u, i in zip(users.tolist(), items.tolist(), strict=True)])
    with_bitmap = NegativeSampler(store)
    assert with_bitmap.bitmap is not None
    searching = NegativeSampler(store)
    searching.bitmap = None  # the binary-search path used for catalogues too large for a bitmap
    assert np.array_equal(with_bitmap.is_positive(users, items), want)
    assert np.array_equal(searching.is_positive(users, items), want)
    outside = np.array([store.n_users, store.n_users + 5, -1]), np.array([1, 1, 1])  # not in the store
    assert not with_bitmap.is_positive(*outside).any() and not searching.is_positive(*outside).any()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=14), min_size=1, max_size=6), st.booleans())
def test_negatives_exclude_only_what_was_known_at_the_sample(
    histories: list[list[int]], bitmap: bool
) -> None:
    """A sample at position p of user u may draw any item except those in u's history[: p + 1]: items the
    user only meets later (their validation/test targets) are not excluded (that would leak the future)."""
    _, store = _store(histories, 7)
    sampler = NegativeSampler(store)
    if not bitmap:
        sampler.bitmap = None
    rows = [
        (u + 1, i, p) for u, h in enumerate(histories) for p in range(len(h)) for i in range(store.n_items)
    ]
    users, items, pos = (np.array(c) for c in zip(*rows, strict=True)) if rows else ([], [], [])
    if not rows:
        return
    want = np.array([i in histories[u - 1][: p + 1] for u, i, p in rows])
    assert np.array_equal(sampler.is_excluded(users, items, pos), want)
    samples = [(u + 1, p) for u, h in enumerate(histories) for p in range(len(h))]
    su, sp = (np.array(c) for c in zip(*samples, strict=True))
    negs = sampler.sample(su, 20, np.random.default_rng(0), positions=sp)
    for (u, p), row in zip(samples, negs.tolist(), strict=True):
        allowed = set(range(1, store.n_items)) - set(histories[u - 1][: p + 1])
        assert set(row) - {0} <= allowed, (u, p)  # 0 = masked (none found in the rounds allowed)


def test_a_users_later_items_are_drawn_as_negatives() -> None:
    """At pos 1 the user has seen items 1 and 2; 3, 4 (theirs later) and 5 are all fair negatives."""
    _, store = _store([[1, 2, 3, 4, 3]], 5)
    negs = NegativeSampler(store).sample(
        np.array([1, 1]), 200, np.random.default_rng(0), positions=np.array([1, 3])
    )
    assert set(negs[0].tolist()) == {3, 4, 5}
    assert set(negs[1].tolist()) - {0} == {5}  # 0: a draw that found nothing allowed in its rounds
    whole = NegativeSampler(store).sample(np.array([1]), 200, np.random.default_rng(0))  # no positions
    assert set(whole[0].tolist()) - {0} == {5}


def test_user_who_saw_everything_gets_masked_negatives() -> None:
    _, store = _store([[1, 2, 3, 1], [2, 3, 1, 2]], 3)
    negs = NegativeSampler(store).sample(np.array([1, 2]), 4, np.random.default_rng(0))
    assert (negs == 0).all()


def test_in_memory_batches_are_a_seeded_permutation(planted_store: FeatureStore) -> None:
    src = InMemorySamples(planted_store.samples["train"], seed=5)
    e1 = np.concatenate([b.pos * 1000 + b.user_code for b in src.batches(1, 100)])
    again = np.concatenate([b.pos * 1000 + b.user_code for b in src.batches(1, 100)])
    e2 = np.concatenate([b.pos * 1000 + b.user_code for b in src.batches(2, 100)])
    assert np.array_equal(e1, again) and not np.array_equal(e1, e2)
    assert sorted(e1.tolist()) == sorted(e2.tolist()) and len(e1) == len(src)


def test_streaming_covers_every_sample_once_in_seeded_order(planted_warehouse) -> None:
    with planted_warehouse.session() as con:
        store = FeatureStore.load(con, static_negatives=True)
        src = StreamingSamples(con, seed=1, static_negatives=True)
        batches = list(src.batches(1, 64))
        again = [b.user_code for b in src.batches(1, 64)]
    assert all(len(b) == 64 for b in batches[:-1])
    train = store.samples["train"]
    got = np.concatenate([b.user_code * 1000 + b.pos for b in batches])
    assert sorted(got.tolist()) == sorted((train.user_code * 1000 + train.pos).tolist())
    assert np.array_equal(np.concatenate(again), np.concatenate([b.user_code for b in batches]))
    # static negatives stay aligned with their sample
    key = {(u, p): n.tolist() for u, p, n in zip(train.user_code, train.pos, train.negatives, strict=True)}
    for b in batches[:3]:
        for u, p, n in zip(b.user_code, b.pos, b.negatives, strict=True):
            assert key[(u, p)] == n.tolist()


def test_missing_feature_tables_name_the_fix(warehouse) -> None:
    with warehouse.session() as con, pytest.raises(UserError, match="build-features"):
        FeatureStore.load(con)


def test_event_derived_dense_features_without_a_sample(planted_store: FeatureStore) -> None:
    """Without a sample's point-in-time count, a cut window counts its own events and a whole history
    reads the current value; items read the current popularity unless given one, and evaluation's
    `train_popularity` counts training positions only. (Samples: tests/training/test_point_in_time.py.)"""
    s = planted_store
    users = np.array([1, 1, 2])
    ends = np.array([0, 3, s.history_length(np.array([2]))[0]])
    got = s.user_batch(users, ends, 4)["ud.event_count"].numpy()
    max_len = np.log1p(s.history_length(np.arange(1, s.n_users)).max())
    np.testing.assert_allclose(got[:2], np.log1p(ends[:2]) / max_len, rtol=1e-6)
    assert got[2] == s.user_dense["event_count"][2]
    given = s.user_batch(users, ends, 4, event_count=np.array([0.25, 0.5, 0.75]))["ud.event_count"]
    assert given.tolist() == [0.25, 0.5, 0.75]
    codes = np.arange(1, s.n_items)
    assert np.array_equal(s.item_batch(codes)["id.popularity"].numpy(), s.item_dense["popularity"][1:])
    scale = np.log1p(np.bincount(s.hist_items, minlength=s.n_items).max())
    assert s.train_popularity is not None
    np.testing.assert_allclose(s.train_popularity[1:], np.log1p(s.item_train_count[1:]) / scale, rtol=1e-6)
    assert (s.item_train_count[1:] < np.bincount(s.hist_items, minlength=s.n_items)[1:]).any()
    override = s.item_batch(codes, popularity=s.train_popularity[1:])["id.popularity"].numpy()
    assert np.array_equal(override, s.train_popularity[1:])


@pytest.mark.parametrize(("window", "stride"), [(4, 2), (4, 4), (3, 1), (50, None)])
def test_sequence_units_cover_every_target_once_with_context(
    planted_store: FeatureStore, window: int, stride: int | None
) -> None:
    train = planted_store.samples["train"]
    units = sequence_units(train, window, stride)
    covered = [
        (u, p)
        for u, lo, end in zip(units.user_code, units.lo, units.end, strict=True)
        for p in range(lo, end)
    ]
    assert sorted(covered) == sorted(zip(train.user_code.tolist(), train.pos.tolist(), strict=True))
    assert units.n_targets == len(train)
    # every target fits the window fed to its unit and sees >= window - stride earlier items (or all)
    s = stride or window // 2
    assert ((units.end - units.lo) <= window).all()
    context = units.lo - np.maximum(units.end - 1 - window, 0)
    assert ((context >= window - s + 1) | (units.end - 1 <= window)).all()


def test_store_is_correct_when_duckdb_returns_rows_out_of_order(warehouse) -> None:
    """Warehouse connections set preserve_insertion_order=false, under which DuckDB 2.0 may hand
    back ORDER BY results out of order through Arrow: the reader must not depend on row order."""
    histories = [[(u + j) % 40 + 1 for j in range(3 + u % 4)] for u in range(30_000)]
    with warehouse.session() as con:
        write_feature_store(con, histories, 40, neg_ratio=1)
        store = FeatureStore.load(con)
    users = np.arange(1, len(histories) + 1)
    flat = store.hist_items[store.hist_offsets[1] :]
    assert flat.tolist() == [i for h in histories for i in h]
    assert np.array_equal(store.history_length(users), [len(h) for h in histories])
    valid = store.samples["valid"]
    assert np.array_equal(valid.user_code, users)
    assert np.array_equal(valid.target, [h[-2] for h in histories])


def test_prefetch_keeps_order_and_raises_the_producers_error() -> None:
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("bad batch")

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1]


def test_prefetch_closed_early_stops_its_thread() -> None:
    produced = []

    def endless() -> Iterator[int]:
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    stream = prefetch(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert not any(t.name == "rechub-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 1  # at most the buffer and one item in flight beyond what was read
