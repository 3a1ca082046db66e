"""Reusing an index's answers across runs (`rescoring.reuse_lists`): reused rows equal a fresh
search bit for bit, only rows whose vector or exclusions changed are searched, and a stored answer
that no longer holds is caught by the re-check. Which users' inputs changed (`input_digests`)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import planted
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rechub_store.data.readers import FeatureStore
from rechub_store.ranking.exact import Seen, exact_topk
from rechub_store.retrieval.rescoring import input_digests, reuse_lists, rows_digest

K = 10


class CountingSearch:
    """exact_topk over fixed items, counting the rows it is asked."""

    def __init__(self, items: np.ndarray) -> None:
        self.items = items
        self.rows = 0

    def __call__(self, vecs: np.ndarray, exclude: Seen | None) -> tuple[np.ndarray, np.ndarray]:
        self.rows += len(vecs)
        return exact_topk(vecs, self.items, K, exclude)


def make(seed: int = 0, n_users: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray, Seen]:
    rng = np.random.default_rng(seed)
    users = rng.permutation(np.arange(1, n_users + 1) * 3)  # any order, gaps between codes
    vecs = rng.standard_normal((n_users, 16)).astype(np.float32)
    items = rng.standard_normal((300, 16)).astype(np.float32)
    seen = Seen.from_lists([rng.choice(np.arange(1, 300), rng.integers(0, 30), replace=False) for _ in users])
    return users, vecs, items, seen


def test_unchanged_rows_are_reused_and_changed_ones_searched(tmp_path: Path) -> None:
    users, vecs, items, seen = make()
    path, key = tmp_path / "answers.parquet", {"index": "a"}
    search = CountingSearch(items)
    first = reuse_lists(path, key, users, vecs, seen, search)
    assert search.rows == len(users) and first[2].startswith("searched all")

    # next run: 5 vectors and 3 exclusion lists changed, users in another order, 2 users new
    vecs2 = vecs.copy()
    vecs2[:5] += np.float32(1e-3)
    lists = [seen.indices[seen.indptr[u] : seen.indptr[u + 1]] for u in range(len(users))]
    for u in (10, 11, 12):
        lists[u] = np.append(lists[u], 299)
    users2 = users.copy()
    users2[-2:] = [10_001, 10_002]
    order = np.random.default_rng(1).permutation(len(users))
    seen2 = Seen.from_lists([lists[u] for u in order])
    search.rows = 0
    codes, scores, note = reuse_lists(path, key, users2[order], vecs2[order], seen2, search, recheck=7)
    assert search.rows == 5 + 3 + 2 + 7, note
    assert note.startswith(f"reused {len(users) - 10} of {len(users)}")
    want_codes, want_scores = exact_topk(vecs2[order], items, K, seen2)
    np.testing.assert_array_equal(codes, want_codes)
    assert scores.tobytes() == want_scores.tobytes()


def test_another_key_or_no_reuse_searches_everything(tmp_path: Path) -> None:
    users, vecs, items, seen = make(2)
    path = tmp_path / "answers.parquet"
    search = CountingSearch(items)
    reuse_lists(path, {"index": "a"}, users, vecs, seen, search)
    for key, reuse in (({"index": "b"}, True), ({"index": "a"}, False)):
        search.rows = 0
        reuse_lists(path, key, users, vecs, seen, search, reuse=reuse)
        assert search.rows == len(users)


def test_a_stored_answer_that_no_longer_holds_is_caught(tmp_path: Path) -> None:
    """The re-check searches a sample of reused rows again; one difference searches every row."""
    users, vecs, items, seen = make(3)
    path, key = tmp_path / "answers.parquet", {"index": "a"}
    search = CountingSearch(items)
    reuse_lists(path, key, users, vecs, seen, search)
    table = pq.read_table(path)
    scores = pa.FixedSizeListArray.from_arrays(
        pc.add(table.column("scores").combine_chunks().flatten(), pa.scalar(1.0, pa.float32())), K
    )
    table = table.set_column(table.schema.get_field_index("scores"), "scores", scores)
    pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), path)
    search.rows = 0
    codes, got, note = reuse_lists(path, key, users, vecs, seen, search, recheck=5)
    assert note.startswith("stored lists differ") and search.rows == 5 + len(users)
    want_codes, want_scores = exact_topk(vecs, items, K, seen)
    np.testing.assert_array_equal(codes, want_codes)
    assert got.tobytes() == want_scores.tobytes()


def test_rows_digest_tells_exclusion_lists_apart() -> None:
    seen = Seen.from_lists([[1, 2], [2, 1], [], [1, 2], [1, 2, 3], [3]])
    d = rows_digest(seen, seen.n_rows)
    assert d[0] == d[3] and len({d[0], d[1], d[2], d[4], d[5]}) == 5
    assert (rows_digest(None, 4) == 0).all()


def _store(histories: list[list[int]]) -> FeatureStore:
    con = duckdb.connect()
    planted.write_feature_store(con, histories, 40, max_seq_len=12)
    return FeatureStore.load(con)


def test_input_digests_change_with_what_the_user_tower_reads() -> None:
    """Equal inputs give equal digests; a new event, an item changed inside the window or a
    window that changes width changes the user's digest; a change older than the window does not."""
    histories = planted.cycle_histories(60, 40, 3, 30, seed=4)
    users = np.arange(1, len(histories) + 1)
    longest = max(len(h) for h in histories)
    a = input_digests(_store(histories), users, 12, ())
    assert np.array_equal(a, input_digests(_store(histories), users, 12, ()))
    assert len(set(a.tolist())) == len(users)  # every user's inputs differ here
    short = next(u for u, h in enumerate(histories) if 4 < len(h) < min(12, longest))
    long = next(u for u, h in enumerate(histories) if 20 < len(h) < longest)
    changed = [list(h) for h in histories]
    changed[short].append(7)  # a new event (the window fits it)
    changed[long][-2] = 39 if changed[long][-2] != 39 else 38  # an item inside the window
    changed[long][0] = 39 if changed[long][0] != 39 else 38  # and one older than the window
    b = input_digests(_store(changed), users, 12, ())
    assert np.flatnonzero(a != b).tolist() == sorted([short, long])
    changed[long] = histories[long][:]
    changed[long][0] = 39 if changed[long][0] != 39 else 38  # only the old event differs
    c = input_digests(_store(changed), users, 12, ())
    assert np.flatnonzero(a != c).tolist() == [short]


def test_input_digests_cover_only_the_inputs_read() -> None:
    """A dense user feature that moves for everyone changes every digest over all inputs, and none
    over the history alone (what SASRec and GRU4Rec read)."""
    histories = planted.cycle_histories(30, 40, 3, 20, seed=5)
    users = np.arange(1, len(histories) + 1)
    store = _store(histories)
    before_all, before_hist = input_digests(store, users, 12, ()), input_digests(store, users, 12, ("hist",))
    store.user_dense["age"] = store.user_dense["age"] * np.float32(0.5) + np.float32(0.25)
    assert (input_digests(store, users, 12, ()) != before_all).all()
    assert np.array_equal(input_digests(store, users, 12, ("hist",)), before_hist)
