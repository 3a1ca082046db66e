"""The synthetic generator: deterministic, realistic (tails, ties, odd ids, sequence signal), streaming."""

from __future__ import annotations

import collections
import tracemalloc
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from rechub_store.data.generate import generate, generate_into
from rechub_store.errors import UserError
from rechub_store.warehouse import Warehouse


def _events(path: Path) -> dict[str, np.ndarray]:
    return duckdb.sql(f"SELECT user_id, item_id, ts, rating FROM '{path}'").fetchnumpy()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kw = dict(n_users=60, n_items=40, n_events=2000, chunk_events=700)
    a = generate(tmp_path / "a", seed=5, **kw)
    b = generate(tmp_path / "b", seed=5, **kw)
    c = generate(tmp_path / "c", seed=6, **kw)
    for name in ("interactions", "users", "items"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes()
    assert a.interactions.read_bytes() != c.interactions.read_bytes()


def test_columns_counts_and_referential_integrity(tmp_path: Path) -> None:
    d = generate(tmp_path, n_users=200, n_items=100, n_events=5000, seed=1)
    con = duckdb.connect()
    schema = con.execute(f"DESCRIBE SELECT * FROM '{d.interactions}'").fetchall()
    assert [(r[0], r[1]) for r in schema] == [
        ("user_id", "VARCHAR"),
        ("item_id", "VARCHAR"),
        ("ts", "BIGINT"),
        ("rating", "TINYINT"),
    ]
    users_cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM '{d.users}'").fetchall()]
    items_cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM '{d.items}'").fetchall()]
    assert users_cols == ["user_id", "gender", "age_bucket", "occupation", "country", "account_age_days"]
    assert items_cols == ["item_id", "title", "year", "category", "price", "tags"]
    n, n_users, min_events, lo, hi = con.execute(
        f"SELECT count(*), count(DISTINCT user_id), min(c), min(r), max(r) FROM (SELECT user_id, rating r, "
        f"count(*) OVER (PARTITION BY user_id) c FROM '{d.interactions}')"
    ).fetchone()
    assert (n, n_users) == (5000, 200) and min_events >= 5 and (lo, hi) == (1, 5)
    orphans = con.execute(
        f"SELECT count(*) FROM '{d.interactions}' e WHERE e.user_id NOT IN (SELECT user_id FROM '{d.users}') "
        f"OR e.item_id NOT IN (SELECT item_id FROM '{d.items}')"
    ).fetchone()[0]
    assert orphans == 0
    assert con.execute(f"SELECT count(DISTINCT user_id) FROM '{d.users}'").fetchone()[0] == 200


def test_heavy_tails_ties_duplicates_and_odd_ids(tmp_path: Path) -> None:
    d = generate(tmp_path, n_users=1000, n_items=2000, n_events=60_000, seed=2)
    e = _events(d.interactions)
    _, item_counts = np.unique(e["item_id"], return_counts=True)
    top = np.sort(item_counts)[::-1]
    assert top[: len(top) // 10].sum() / top.sum() > 0.35  # top 10% of items: > 35% of events
    assert top[: len(top) // 100].sum() / top.sum() > 0.08  # top 1%: > 8x their share
    _, user_counts = np.unique(e["user_id"], return_counts=True)
    assert user_counts.max() > 8 * np.median(user_counts)
    con = duckdb.connect()
    tie_share, dup_rows = con.execute(
        f"SELECT avg((c > 1)::INT), sum(c - d) FROM (SELECT count(*) c, count(DISTINCT item_id) d "
        f"FROM '{d.interactions}' GROUP BY user_id, ts)"
    ).fetchone()
    assert 0.02 < tie_share < 0.2  # equal-second ties are common, not universal
    assert dup_rows > 0  # some exact duplicate events
    odd = {u for u in set(e["user_id"]) if not (u.startswith("u0") and u[1:].isdigit())}
    assert any("," in u for u in odd) and any('"' in u for u in odd) and any("ü" in u for u in odd)
    assert any(u.isdigit() and int(u) > 2**64 for u in odd)


def _hit_at_10(e: dict[str, np.ndarray]) -> tuple[float, float]:
    """Leave-last-out hit@10 of popularity vs a first-order transition counter (seen items removed)."""
    order = np.lexsort((np.arange(len(e["ts"])), e["ts"], e["user_id"]))
    users, items = e["user_id"][order], e["item_id"][order]
    last = np.r_[users[1:] != users[:-1], True]
    pop = collections.Counter(items[~last].tolist())
    trans: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    same = (users[1:] == users[:-1]) & ~last[1:]
    for a, b in zip(items[:-1][same].tolist(), items[1:][same].tolist(), strict=True):
        trans[a][b] += 1
    popular = [i for i, _ in pop.most_common(200)]
    ends = np.flatnonzero(last)
    starts = np.r_[0, ends[:-1] + 1]
    hits_pop = hits_seq = 0
    for s, t in zip(starts, ends, strict=True):
        seen = set(items[s:t].tolist())
        by_pop = [i for i in popular if i not in seen][:10]
        by_seq = [i for i, _ in trans[items[t - 1]].most_common() if i not in seen][:10]
        by_seq += [i for i in by_pop if i not in by_seq][: 10 - len(by_seq)]
        hits_pop += items[t] in by_pop
        hits_seq += items[t] in by_seq
    return hits_pop / len(ends), hits_seq / len(ends)


def test_sequential_structure_beats_popularity(tmp_path: Path) -> None:
    d = generate(tmp_path, n_users=1500, n_items=800, n_events=60_000, seed=3)
    pop, seq = _hit_at_10(_events(d.interactions))
    assert seq > 0.4 and seq > 3 * pop, (pop, seq)


def test_streams_in_chunks_with_bounded_memory(tmp_path: Path) -> None:
    def peak(n_events: int, chunk: int, out: Path) -> tuple[int, int]:
        tracemalloc.start()
        d = generate(out, n_users=n_events // 40, n_items=300, n_events=n_events, seed=4, chunk_events=chunk)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top, d.n_chunks

    peak(2_000, 4000, tmp_path / "warmup")  # first calls allocate caches; measure afterwards
    small, n_small = peak(10_000, 4000, tmp_path / "s")
    big, n_big = peak(100_000, 4000, tmp_path / "b")
    big_chunks, _ = peak(100_000, 40_000, tmp_path / "c")
    assert n_small >= 3 and n_big >= 20
    assert big < 2 * small, (small, big)  # 10x the events, about the same peak...
    assert big_chunks > 3 * big, (big, big_chunks)  # ...because the peak follows the chunk size
    path = tmp_path / "b" / "interactions.parquet"
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == n_big and meta.num_rows == 100_000
    for g in range(0, meta.num_row_groups, 5):  # each chunk is written in time order
        ts = pq.ParquetFile(path).read_row_group(g, ["ts"])["ts"].to_numpy()
        assert np.all(np.diff(ts) >= 0)


def test_csv_and_parquet_hold_the_same_events_after_ingest(tmp_path: Path) -> None:
    kw = dict(n_users=150, n_items=80, n_events=3000, seed=7)
    wh = [Warehouse(tmp_path / f"wh{k}" / "r.duckdb", threads=1) for k in range(2)]
    rows = []
    for w, fmt in zip(wh, ("parquet", "csv"), strict=True):
        with w.session() as con:
            results = generate_into(con, tmp_path / fmt, fmt=fmt, **kw)
            assert [r.rows_rejected for r in results] == [0, 0, 0]
            rows.append(
                con.execute(
                    "SELECT user_id, item_id, ts, rating FROM raw.interactions ORDER BY ALL"
                ).fetchall()
            )
            attrs = con.execute("SELECT count(*) FROM raw.user_attributes WHERE name = 'gender'").fetchone()[
                0
            ]
            assert 0 < attrs < 150  # some genders are missing on purpose
    assert rows[0] == rows[1] and len(rows[0]) == 3000


def test_generate_into_default_call(tmp_path: Path, warehouse: Warehouse) -> None:
    with warehouse.session() as con:
        results = generate_into(con, tmp_path, n_users=200, n_items=100, n_events=5000, seed=1)
        tags = con.execute("SELECT count(DISTINCT item_id) FROM raw.item_tags").fetchone()[0]
        names = con.execute("SELECT DISTINCT name, kind FROM raw.item_attributes ORDER BY ALL").fetchall()
    assert [(r.kind, r.rows_accepted) for r in results] == [
        ("interactions", 5000),
        ("users", 200),
        ("items", 100),
    ]
    assert tags == 100
    assert names == [("category", "sparse"), ("price", "dense"), ("title", "text"), ("year", "sparse")]


def test_bad_sizes_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        generate(tmp_path, n_users=10, n_items=5, n_events=3)
    with pytest.raises(UserError):
        generate(tmp_path, n_users=10, n_items=5, n_events=100, fmt="json")  # type: ignore[arg-type]


def _shape_stats(tmp_path: Path, shape: str, scale: int = 1, sizes_of: str | None = None) -> dict[str, float]:
    """Median events per user, distinct items, share of events on the top 1% of items, and how often
    the next item is the most common successor of the previous one (first-order predictability)."""
    from rechub_store.data.generate import SHAPES

    users, items, events = (max(1, n // scale) for n in SHAPES[sizes_of or shape].sizes)
    d = generate(
        tmp_path / f"{shape}-{sizes_of}", n_users=users, n_items=items, n_events=events, seed=0, shape=shape
    )
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE ev AS SELECT user_id, item_id, "
        f"row_number() OVER (PARTITION BY user_id ORDER BY ts) AS rn FROM '{d.interactions}'"
    )
    median, n_items = con.execute(
        "SELECT median(c), (SELECT count(DISTINCT item_id) FROM ev) FROM "
        "(SELECT count(*) c FROM ev GROUP BY user_id)"
    ).fetchone()
    top = con.execute(
        "SELECT sum(c) FILTER (WHERE r <= greatest(1, n // 100)) / sum(c) FROM (SELECT count(*) c, "
        "row_number() OVER (ORDER BY count(*) DESC, item_id) r, count(*) OVER () n FROM ev GROUP BY item_id)"
    ).fetchone()[0]
    # how often the item `gap` steps later is the most common one at that distance (gap 1: the
    # first-order signal; gap 2: what the item before the last says about the next one)
    after = {
        gap: con.execute(
            "WITH pairs AS (SELECT a.item_id p, b.item_id n, count(*) c FROM ev a JOIN ev b "
            f"ON a.user_id = b.user_id AND b.rn = a.rn + {gap} GROUP BY a.item_id, b.item_id) "
            "SELECT sum(m) / sum(t) FROM (SELECT max(c) m, sum(c) t FROM pairs GROUP BY p)"
        ).fetchone()[0]
        for gap in (1, 2)
    }
    # how often the next item follows the item before the last elsewhere in the log, while this
    # step is the only time it follows the last item: what only a model looking past the last
    # item can rank
    back = con.execute(
        "WITH steps AS (SELECT a.user_id u, a.rn, a.item_id p, b.item_id n FROM ev a JOIN ev b "
        "ON a.user_id = b.user_id AND b.rn = a.rn + 1), "
        "counts AS (SELECT p, n, count(*) c FROM steps GROUP BY p, n) "
        "SELECT avg((before.c IS NOT NULL AND last.c = 1)::INT) "
        "FROM steps s1 JOIN steps s2 ON s1.u = s2.u AND s2.rn = s1.rn + 1 "
        "LEFT JOIN counts before ON before.p = s1.p AND before.n = s2.n "
        "JOIN counts last ON last.p = s2.p AND last.n = s2.n"
    ).fetchone()[0]
    return {"median": median, "items": n_items, "top1": top, "first_order": after[1], "back": back}


def test_shapes_have_the_promised_statistics(tmp_path: Path) -> None:
    short = _shape_stats(tmp_path, "short")
    assert short["median"] < 10 and short["items"] >= 10_000 and short["first_order"] > 0.5
    session = _shape_stats(tmp_path, "session")
    assert session["median"] < 10 and session["items"] >= 10_000 and session["first_order"] > 0.4
    assert session["back"] > 3 * short["back"]
    long = _shape_stats(tmp_path, "long", scale=4)
    assert long["median"] >= 100
    weak = _shape_stats(tmp_path, "weak-seq", scale=4)
    default = _shape_stats(tmp_path, "default", scale=4, sizes_of="weak-seq")
    assert weak["first_order"] < 0.6 * default["first_order"]
    skewed, mild = _shape_stats(tmp_path, "skewed", scale=4), _shape_stats(tmp_path, "mild", scale=4)
    assert skewed["top1"] > 3 * mild["top1"]
    with pytest.raises(UserError, match="--shape"):
        generate(tmp_path / "x", n_users=5, n_items=5, n_events=50, shape="wide")


def test_ring_successors_are_shared_by_neighbouring_items() -> None:
    """`successor_window`: an item shares most of its successors with its neighbours on the ring
    (similar items, similar next items); drawn from the whole cluster they are rarely shared."""
    import scipy.sparse as sp

    from rechub_store.data.generate import N_SUCCESSORS, SHAPES, _World

    def share_three(shape: str) -> float:
        n = 2000
        world = _World(np.random.default_rng(0), n, SHAPES[shape])
        succ = world.successors[:, : N_SUCCESSORS - 1]  # the in-cluster ones
        follows = sp.csr_matrix((np.ones(succ.size), (np.repeat(np.arange(n), succ.shape[1]), succ.ravel())))
        follows.data[:] = 1.0  # a successor drawn twice counts once
        common = (follows @ follows.T).tolil()
        common.setdiag(0)
        return float((common.tocsr().max(axis=1).toarray().ravel() >= 3).mean())

    assert SHAPES["session"].successor_window > 0 and SHAPES["short"].successor_window == 0
    assert share_three("session") > 3 * share_three("short")
