"""Seeded synthetic logs that look like real recommendation data, streamed in chunks.

Why: the demo, the tests and the benchmarks need data with the properties that break naive
pipelines (heavy-tailed popularity and activity, timestamp ties, duplicates, odd ids) and a
signal that sequence models can actually learn, at any size up to 100M events.

The model behind the data:
- Items fall into clusters; each item has a base popularity (Zipf, exponent ~1) and five
  successors (four from its own cluster, one anywhere, drawn by popularity), so in-degree and
  hence event counts are heavy-tailed.
- A user starts in a favourite cluster and walks: mostly to a successor of the current item
  (sequential signal), sometimes to a popular item of the current cluster, sometimes to a
  popular item anywhere (noise and slow taste drift, since the walk then continues there),
  rarely repeating the current event exactly (a duplicate row). A step that would return to
  one of the user's last RECENT items takes the next successor instead (few re-consumptions,
  so a held-out item is seldom one the user has already seen).
- Activity per user is log-normal (>= a few events each); gaps between a user's events are
  heavy-tailed with ~5% zero gaps, i.e. timestamp ties.

Shapes (`SHAPES`, `generate --shape`): the same model with other knobs, so that defaults and tuning
are judged on logs unlike each other: short histories over a large catalogue with a strong
first-order signal (`short`), the same with successors shared by neighbouring items and steps that go
back to the item before the last and take an alternative to it (`session`: the next item depends on
the last two, as in real sessions), long histories (`long`), a weak sequential signal (`weak-seq`),
heavy or mild popularity skew (`skewed`, `mild`). Each names the sizes it is meant for (100k events).

Memory is O(chunk_events + n_users + n_items): users are generated a block at a time (whole
users per chunk, chunk rows sorted by time), each chunk written as its own Parquet row group
or appended to the CSV.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rechub_store.data.ingest import IngestResult, ingest_interactions, ingest_items, ingest_users
from rechub_store.errors import UserError

# Column mapping of the generated files (what `generate_into` passes to ingest).
INTERACTION_COLUMNS = ("user_id", "item_id", "ts", "rating")
USER_SPARSE = ("gender", "age_bucket", "occupation", "country")
USER_DENSE = ("account_age_days",)
ITEM_SPARSE = ("year", "category")
ITEM_DENSE = ("price",)
ITEM_TEXT = ("title",)
ITEM_TAGS = "tags"

T0 = 1_672_531_200  # 2023-01-01 00:00:00 UTC
N_SUCCESSORS = 5
SUCCESSOR_P = np.array([0.40, 0.25, 0.15, 0.10, 0.10])
P_SUCCESSOR, P_CLUSTER, P_DUPLICATE = 0.75, 0.10, 0.003  # the rest: global popularity
P_TIE = 0.05
RECENT = 12  # a user seldom returns to one of their last RECENT items
AGE_BUCKETS = np.array(["<18", "18-24", "25-34", "35-44", "45-54", "55+"])
OCCUPATIONS = np.array([f"occ{i:02d}" for i in range(20)])
COUNTRIES = np.array(
    ["US", "DE", "FR", "GB", "BR", "IN", "JP", "CN", "ES", "IT", "CA", "MX", "NL", "PL", "KR"]
)
TAGS = np.array([f"tag{i:02d}" for i in range(40)])


@dataclass(frozen=True)
class Shape:
    """The generator's knobs; `default` is the generator as it always was (same seed, same bytes)."""

    name: str
    description: str
    zipf: float = 0.9  # item popularity ~ 1 / rank^zipf
    p_successor: float = P_SUCCESSOR  # a step follows a successor of the current item (sequence signal)
    p_cluster: float = P_CLUSTER  # ... or a popular item of the current cluster (the rest: anywhere)
    successor_p: tuple[float, ...] = tuple(SUCCESSOR_P)  # which of the N_SUCCESSORS successors
    activity_sigma: float = 1.0  # log-normal spread of events per user
    min_events: int = 5  # every user has at least this many events (fewer if events < 5 x users)
    # a successor step continues from the item before the current one instead (the user goes back
    # and takes an alternative to what they just saw): the next item then depends on the last two
    p_back: float = 0.0
    # 0: an item's in-cluster successors are drawn from its whole cluster, so two items share
    # successors only by chance, mostly the cluster's popular ones (little to generalise from: only
    # counting each pair learns them); W > 0: items sit on a ring per cluster and draw their
    # successors among the W items after them, so neighbouring items share most successors, as
    # similar items do in real catalogues
    successor_window: int = 0
    sizes: tuple[int, int, int] = (10_000, 5_000, 1_000_000)  # users, items, events it is meant for


_SHORT = Shape(
    "short",
    "short histories (median under 10 events) over 20k items, strong first-order signal",
    p_successor=0.85,
    p_cluster=0.05,
    successor_p=(0.70, 0.12, 0.08, 0.05, 0.05),
    activity_sigma=0.7,
    min_events=3,
    sizes=(12_000, 20_000, 100_000),
)

SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("default", "100 events per user over half as many items as users"),
        _SHORT,
        replace(
            _SHORT,
            name="session",
            description="short histories over 20k items like `short`, but neighbouring items share "
            "successors and 35 % of successor steps go back to the item before the last (the next item "
            "depends on both)",
            p_back=0.35,
            successor_window=8,
        ),
        Shape(
            "long",
            "long histories (about 200 events per user) over 2k items, slow taste drift",
            p_successor=0.65,
            p_cluster=0.15,
            activity_sigma=0.5,
            sizes=(500, 2_000, 100_000),
        ),
        Shape(
            "weak-seq",
            "weak sequential signal: mostly taste (cluster) and popularity, rarely the next item",
            p_successor=0.20,
            p_cluster=0.50,
            sizes=(4_000, 5_000, 100_000),
        ),
        Shape("skewed", "heavy popularity skew (Zipf 1.3)", zipf=1.3, sizes=(4_000, 5_000, 100_000)),
        Shape("mild", "mild popularity skew (Zipf 0.5)", zipf=0.5, sizes=(4_000, 5_000, 100_000)),
    )
}


def get_shape(name: str) -> Shape:
    """A named shape; UserError listing the names."""
    try:
        return SHAPES[name]
    except KeyError:
        raise UserError(f"--shape: expected one of {', '.join(SHAPES)}, got {name!r}") from None


@dataclass(frozen=True)
class GeneratedData:
    """Paths of the written files and the sizes they were generated with."""

    interactions: Path
    users: Path
    items: Path
    n_users: int
    n_items: int
    n_events: int
    fmt: str
    n_chunks: int


def _ids(prefix: str, n: int, odd_every: int) -> pa.Array:
    """'u000123'-style ids, with every `odd_every`-th one made awkward (unicode, comma, quotes,
    a number beyond int64, separators) so that every consumer is tested against odd ids."""
    nums = pa.array(np.arange(n, dtype=np.int64)).cast(pa.string())
    base = pc.binary_join_element_wise(prefix, pc.utf8_lpad(nums, max(6, len(str(n))), padding="0"), "")
    variants = [
        pc.binary_join_element_wise(f"{prefix}ü-", nums, ""),
        pc.binary_join_element_wise(f"{prefix},", nums, ""),
        pc.binary_join_element_wise(f'{prefix}"', nums, '"', ""),
        pc.binary_join_element_wise("18446744073709551616", nums, ""),
        pc.binary_join_element_wise(f"{prefix}|", nums, " ;x", ""),
    ]
    idx = np.arange(n)
    odd = idx % odd_every == odd_every // 2
    kind = (idx // odd_every) % len(variants)
    out = base
    for k, variant in enumerate(variants):
        out = pc.if_else(pa.array(odd & (kind == k)), variant, out)
    return out


class _World:
    """Item clusters, popularity and successor table: O(n_items) state shared by all chunks."""

    def __init__(self, rng: np.random.Generator, n_items: int, shape: Shape = SHAPES["default"]) -> None:
        self.n_items = n_items
        self.shape = shape
        self.n_clusters = int(np.clip(round(np.sqrt(n_items) / 2), 1, 2000))
        self.cluster = rng.integers(0, self.n_clusters, n_items)
        rank = rng.permutation(n_items)
        self.weight = 1.0 / (rank + 1.0) ** shape.zipf
        # Items sorted by cluster; cumulative weights let us sample "by weight within a cluster"
        # for many rows at once with one searchsorted. Successors use flatter weights than the
        # popularity noise so that the walk does not collapse onto a cluster's top item.
        self.order = np.argsort(self.cluster, kind="stable")
        self.cum = np.cumsum(self.weight[self.order])
        self.cum_succ = np.cumsum(np.sqrt(self.weight[self.order]))
        counts = np.bincount(self.cluster, minlength=self.n_clusters)
        self.cstart = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.cend = self.cstart + counts
        cw = np.bincount(self.cluster, weights=self.weight, minlength=self.n_clusters)
        self.cluster_p = cw / cw.sum()
        succ = np.empty((n_items, N_SUCCESSORS), dtype=np.int64)
        own = self.cluster
        if shape.successor_window > 0:
            succ[:, : N_SUCCESSORS - 1] = self._ring_successors(rng, shape.successor_window)
        else:
            for j in range(N_SUCCESSORS - 1):
                succ[:, j] = self.in_cluster(own, rng.random(n_items), self.cum_succ)
        succ[:, -1] = self.anywhere(rng.random(n_items))
        selfloop = succ == np.arange(n_items)[:, None]
        succ[selfloop] = self.anywhere(rng.random(int(selfloop.sum())))
        self.successors = succ
        self.quality = rng.uniform(2.3, 4.5, n_items)

    def _ring_successors(self, rng: np.random.Generator, window: int) -> np.ndarray:
        """[n_items, N_SUCCESSORS - 1]: each item's in-cluster successors, drawn by the same flat
        popularity weights as the default among the `window` items after it on its cluster's ring
        (a random order of the cluster's items)."""
        n = self.n_items
        ring = np.lexsort((rng.random(n), self.cluster))  # by cluster, in random order within it
        cluster = self.cluster[ring]
        start = self.cstart[cluster]
        size = self.cend[cluster] - start
        place = np.arange(n) - start  # each ring slot's place within its cluster
        offsets = np.arange(1, window + 1)
        after = ring[start[:, None] + (place[:, None] + offsets[None, :]) % size[:, None]]  # [n, window]
        cum = np.cumsum(np.sqrt(self.weight[after]), axis=1)
        u = rng.random((n, N_SUCCESSORS - 1)) * cum[:, -1:]
        pick = np.minimum((cum[:, None, :] <= u[:, :, None]).sum(axis=2), window - 1)
        out = np.empty((n, N_SUCCESSORS - 1), dtype=np.int64)
        out[ring] = np.take_along_axis(after, pick, axis=1)
        return out

    def in_cluster(self, clusters: np.ndarray, u: np.ndarray, cum: np.ndarray | None = None) -> np.ndarray:
        cum = self.cum if cum is None else cum
        start, end = self.cstart[clusters], np.maximum(self.cend[clusters] - 1, 0)
        lo = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
        hi = cum[end]
        pos = np.searchsorted(cum, lo + u * (hi - lo), side="right")
        return self.order[np.clip(pos, start, end)]

    def anywhere(self, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.cum, u * self.cum[-1], side="right")
        return self.order[np.minimum(pos, self.n_items - 1)]


def _events_per_user(
    rng: np.random.Generator, n_users: int, n_events: int, shape: Shape = SHAPES["default"]
) -> np.ndarray:
    if n_users < 1 or n_events < n_users:
        raise UserError(
            f"need at least 1 user and at least one event per user, got {n_users} users, {n_events} events"
        )
    base = min(shape.min_events, n_events // n_users)
    activity = rng.lognormal(0.0, shape.activity_sigma, n_users)
    extra = rng.multinomial(n_events - base * n_users, activity / activity.sum())
    return base + extra


def _chunk(
    rng: np.random.Generator, world: _World, lengths: np.ndarray, first_user: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Walk every user of the chunk one step at a time (all users at once per step)."""
    shape = world.shape
    p_successor, p_cluster = shape.p_successor, shape.p_cluster
    k = len(lengths)
    by_len = np.argsort(-lengths, kind="stable")  # longest first: active users are a prefix
    lens = lengths[by_len]
    steps = int(lens[0])
    active = np.searchsorted(-lens, -np.arange(1, steps + 1), side="right")  # users with len > t
    offsets = np.concatenate([[0], np.cumsum(active)])
    total = int(offsets[-1])
    items = np.empty(total, dtype=np.int64)
    ts = np.empty(total, dtype=np.int64)
    start_cluster = rng.choice(world.n_clusters, size=k, p=world.cluster_p)
    cur = world.in_cluster(start_cluster, rng.random(k))
    now = T0 + rng.integers(0, 180 * 86400, k)
    mode_u = rng.random(total)
    pick_u = rng.random(total)
    gaps = np.ceil(rng.lognormal(np.log(900.0), 2.0, total)).astype(np.int64)
    gaps[rng.random(total) < P_TIE] = 0
    # drawn only by shapes that go back, so that the other shapes keep their bytes for a seed
    back_u = rng.random(total) if shape.p_back > 0 else None
    succ_cum = np.cumsum(np.asarray(shape.successor_p))
    recent = np.full((k, RECENT), -1, dtype=np.int64)
    prev = np.full(k, -1, dtype=np.int64)  # the item before `cur` (-1: none yet)
    for t in range(steps):
        a, lo = int(active[t]), int(offsets[t])
        hi = lo + a
        cur = cur[:a]
        prev = prev[:a]
        now = now[:a]
        if t:
            m = mode_u[lo:hi]
            u = pick_u[lo:hi]
            j = np.minimum(np.searchsorted(succ_cum, u * succ_cum[-1]), N_SUCCESSORS - 1)
            base = cur  # whose successor a successor step takes
            if back_u is not None:
                base = np.where((back_u[lo:hi] < shape.p_back) & (prev >= 0), prev, cur)
            nxt = world.successors[base, j]
            clus = m >= p_successor
            if clus.any():
                nxt[clus] = world.in_cluster(world.cluster[cur[clus]], u[clus])
            glob = m >= p_successor + p_cluster
            if glob.any():
                nxt[glob] = world.anywhere(u[glob])
            # Users rarely go back to what they just consumed: a pick among the user's last
            # RECENT items moves on to the next successor, or failing that anywhere.
            recent_a = recent[:a]
            clash = (recent_a == nxt[:, None]).any(axis=1)
            if clash.any():
                alt = world.successors[base[clash], (j[clash] + 1) % N_SUCCESSORS]
                still = (recent_a[clash] == alt[:, None]).any(axis=1)
                alt[still] = world.anywhere(rng.random(int(still.sum())))
                nxt[clash] = alt
            dup = m >= 1.0 - P_DUPLICATE
            nxt[dup] = cur[dup]
            g = gaps[lo:hi]
            g[dup] = 0
            now = now + g
            prev, cur = cur, nxt
        items[lo:hi] = cur
        ts[lo:hi] = now
        recent[:a, t % RECENT] = cur
    user_local = np.arange(total) - np.repeat(offsets[:-1], active)
    users = by_len[user_local] + first_user
    ratings = np.clip(np.rint(world.quality[items] + rng.normal(0.0, 0.9, total)), 1, 5).astype(np.int8)
    order = np.argsort(ts, kind="stable")  # chunk in time order; a user's ties keep walk order
    return users[order], items[order], ts[order], ratings[order]


def _write_table(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)


def _users_table(rng: np.random.Generator, user_ids: pa.Array, n: int) -> pa.Table:
    gender = rng.choice(np.array(["F", "M", "X"]), n, p=[0.48, 0.48, 0.04]).astype(object)
    gender[rng.random(n) < 0.03] = None  # missing values happen
    country_p = 1.0 / np.arange(1, len(COUNTRIES) + 1)
    occ_p = 1.0 / np.arange(1, len(OCCUPATIONS) + 1) ** 0.7
    return pa.table(
        {
            "user_id": user_ids,
            "gender": pa.array(gender, pa.string()),
            "age_bucket": rng.choice(AGE_BUCKETS, n, p=[0.05, 0.25, 0.3, 0.2, 0.12, 0.08]),
            "occupation": rng.choice(OCCUPATIONS, n, p=occ_p / occ_p.sum()),
            "country": rng.choice(COUNTRIES, n, p=country_p / country_p.sum()),
            "account_age_days": np.floor(rng.lognormal(5.5, 1.0, n)).astype(np.int64),
        }
    )


def _items_table(rng: np.random.Generator, world: _World, item_ids: pa.Array) -> pa.Table:
    n = world.n_items
    nums = pa.array(np.arange(n)).cast(pa.string())
    title = pc.binary_join_element_wise("Item ", nums, "")
    odd = pa.array(np.arange(n) % 17 == 3)
    title = pc.if_else(odd, pc.binary_join_element_wise('The "Best", part ', nums, ""), title)
    n_tags = rng.integers(1, 5, n)
    offsets = np.concatenate([[0], np.cumsum(n_tags)])
    owner = np.repeat(world.cluster, n_tags)
    # Tags correlate with the cluster (3 "home" tags per cluster) plus some random ones.
    home = (owner * 3 + rng.integers(0, 3, len(owner))) % len(TAGS)
    tag_idx = np.where(rng.random(len(owner)) < 0.8, home, rng.integers(0, len(TAGS), len(owner)))
    tags = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(TAGS[tag_idx]))
    return pa.table(
        {
            "item_id": item_ids,
            "title": title,
            "year": rng.integers(1950, 2025, n),
            "category": pa.array(np.char.add("cat", (world.cluster % 12).astype(str))),
            "price": np.round(rng.lognormal(2.5, 0.8, n), 2),
            "tags": pc.binary_join(tags, "|"),
        }
    )


def generate(
    out_dir: Path | str,
    *,
    n_users: int,
    n_items: int,
    n_events: int,
    seed: int = 0,
    fmt: Literal["parquet", "csv"] = "parquet",
    chunk_events: int = 2_000_000,
    on_chunk: Callable[[int, int], None] | None = None,
    shape: str = "default",
) -> GeneratedData:
    """Write interactions, users and items files into `out_dir`; same arguments, same bytes.

    Files: `interactions.<fmt>` (user_id, item_id, ts epoch seconds int64, rating 1..5),
    `users.<fmt>` (user_id, gender, age_bucket, occupation, country, account_age_days),
    `items.<fmt>` (item_id, title, year, category, price, tags 'a|b').
    `on_chunk(events_written, n_events)` is called after each chunk (progress display).
    `shape`: a name of `SHAPES` (the distribution knobs; sizes are the arguments).
    """
    spec = get_shape(shape)
    if fmt not in ("parquet", "csv"):
        raise UserError(f"--format: expected parquet or csv, got {fmt!r}")
    if n_items < 1 or chunk_events < 1:
        raise UserError("need at least 1 item and chunk_events >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    world = _World(rng, n_items, spec)
    lengths = _events_per_user(rng, n_users, n_events, spec)
    user_ids = _ids("u", n_users, 53)
    item_ids = _ids("i", n_items, 41)

    paths = {name: out / f"{name}.{fmt}" for name in ("interactions", "users", "items")}
    _write_table(_users_table(rng, user_ids, n_users), paths["users"], fmt)
    _write_table(_items_table(rng, world, item_ids), paths["items"], fmt)

    # Whole users per chunk, about chunk_events rows each.
    bounds = np.searchsorted(np.cumsum(lengths), np.arange(chunk_events, n_events, chunk_events), side="left")
    edges = np.unique(np.concatenate([[0], bounds + 1, [n_users]]).clip(0, n_users))
    schema = pa.schema(
        [("user_id", pa.string()), ("item_id", pa.string()), ("ts", pa.int64()), ("rating", pa.int8())]
    )
    writer: pq.ParquetWriter | pacsv.CSVWriter
    if fmt == "parquet":
        writer = pq.ParquetWriter(paths["interactions"], schema)
    else:
        writer = pacsv.CSVWriter(paths["interactions"], schema)
    n_chunks = written = 0
    try:
        for c, (lo, hi) in enumerate(itertools.pairwise(edges)):
            if hi <= lo:
                continue
            crng = np.random.default_rng([seed, 1, c])
            users, items, ts, ratings = _chunk(crng, world, lengths[lo:hi], int(lo))
            table = pa.table(
                [user_ids.take(users), item_ids.take(items), pa.array(ts), pa.array(ratings)], schema=schema
            )
            writer.write_table(table)
            n_chunks += 1
            written += len(users)
            if on_chunk is not None:
                on_chunk(written, n_events)
    finally:
        writer.close()
    return GeneratedData(
        paths["interactions"], paths["users"], paths["items"], n_users, n_items, n_events, fmt, n_chunks
    )


def generate_into(
    con: duckdb.DuckDBPyConnection,
    out_dir: Path | str,
    *,
    n_users: int,
    n_items: int,
    n_events: int,
    seed: int = 0,
    fmt: Literal["parquet", "csv"] = "parquet",
    shape: str = "default",
) -> list[IngestResult]:
    """Generate data and ingest all three files into an open warehouse connection.

    Returns the three `IngestResult`s (interactions, users, items).
    """
    data = generate(
        out_dir, n_users=n_users, n_items=n_items, n_events=n_events, seed=seed, fmt=fmt, shape=shape
    )
    return ingest_generated(con, data.interactions, data.users, data.items)


def ingest_generated_interactions(con: duckdb.DuckDBPyConnection, path: Path) -> IngestResult:
    """Ingest a generated interactions file (or a part of one) with the columns it is written with."""
    return ingest_interactions(
        con,
        path,
        user_col="user_id",
        item_col="item_id",
        time_col="ts",
        rating_col="rating",
        time_format="seconds",
    )


def ingest_generated(
    con: duckdb.DuckDBPyConnection, interactions: Path, users: Path, items: Path
) -> list[IngestResult]:
    """Ingest the generator's three files (or parts of them, e.g. a log cut by time) with the
    column mapping they are written with; returns the `IngestResult`s (interactions, users, items)."""
    return [
        ingest_generated_interactions(con, interactions),
        ingest_users(con, users, id_col="user_id", sparse_cols=USER_SPARSE, dense_cols=USER_DENSE),
        ingest_items(
            con,
            items,
            id_col="item_id",
            sparse_cols=ITEM_SPARSE,
            dense_cols=ITEM_DENSE,
            text_cols=ITEM_TEXT,
            tags_col=ITEM_TAGS,
        ),
    ]
