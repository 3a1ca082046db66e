"""Feature tables -> numpy/torch batches: DuckDB -> Arrow -> Polars -> numpy, no per-row Python.

Every read is one query whose Arrow result Polars wraps without copying (`read_frame`); columns
reach numpy as views of the Polars buffers where the type allows, and Polars does the per-name
partitioning of the attribute tables and the ordering of the samples.

`FeatureStore.load(con)` reads the feature store once: vocabulary sizes, every user's history
as one flat int32 array plus CSR offsets (indexed by user_code), user/item sparse and dense
attributes pivoted to wide arrays indexed by code, item tags as a padded matrix, popularity and
the leave-one-out samples. History windows are cut per batch by a vectorized gather, so sample
storage stays O(events) (samples address the history by (user, pos); sql/README.md).

Batch dictionaries (what the models read):
- user side: `user_code` [B], `hist` [B, L] (left-padded with 0, most recent last),
  `u.<name>` sparse codes [B] (`u.user_id` = user_code), `ud.<name>` scaled dense [B];
- item side: `item_code` [N], `i.<name>` sparse codes [N] (`i.item_id` = item_code),
  `id.<name>` dense [N], `tags` [N, T] padded tag codes.
"""

from __future__ import annotations

import json
import queue
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeVar

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import torch

from rechub_store.data.specs import DenseFeature, FeatureSchema, SequenceFeature, SparseFeature
from rechub_store.errors import UserError
from rechub_store.warehouse import require_table, table_exists

T = TypeVar("T")
SPLITS = ("train", "valid", "test")
BUILD_HINT = "run `rechub-store build-features` first"
MAX_TAGS = 32
BITMAP_MAX_BYTES = 64 << 20  # negative sampling: user x item positives as a bitmap up to this size


@dataclass(frozen=True)
class Samples:
    """Positive training/evaluation targets: the history of row i is user_history[:pos[i]].

    The point-in-time columns of the samples tables come along (None for hand-made samples):
    `event_ts` (epoch microseconds), `user_count` (= user_event_count_scaled) and `item_pop`
    (= item_popularity_scaled), both computed in SQL from events strictly before event_ts.
    """

    user_code: np.ndarray  # int64 [S]
    target: np.ndarray  # int64 [S]
    pos: np.ndarray  # int64 [S]
    negatives: np.ndarray | None = None  # int64 [S, R] static negatives (0 = missing)
    event_ts: np.ndarray | None = None  # int64 [S] epoch microseconds of the target event
    user_count: np.ndarray | None = None  # float32 [S] user_event_count_scaled
    item_pop: np.ndarray | None = None  # float32 [S] item_popularity_scaled

    def __len__(self) -> int:
        return int(self.user_code.shape[0])

    def take(self, idx: np.ndarray | slice) -> Samples:
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return Samples(
            self.user_code[idx],
            self.target[idx],
            self.pos[idx],
            cut(self.negatives),
            cut(self.event_ts),
            cut(self.user_count),
            cut(self.item_pop),
        )

    @cached_property
    def _keys(self) -> tuple[np.ndarray, int]:
        width = int(self.pos.max(initial=0)) + 1
        return self.user_code * width + self.pos, width

    def lookup(self, user_codes: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Row indices of the samples (user, pos); rows must be sorted by (user_code, pos) as loaded.
        Raises KeyError if one is not a sample."""
        keys, width = self._keys
        want = np.asarray(user_codes, dtype=np.int64) * width + np.asarray(pos, dtype=np.int64)
        idx = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
        if len(keys) == 0 or not np.array_equal(keys[idx], want):
            raise KeyError("some (user, pos) pairs are not samples of this split")
        return idx


POINT_IN_TIME_COLUMNS = "epoch_us(event_ts) AS event_us, user_event_count_scaled, item_popularity_scaled"


def _point_in_time(table: pl.DataFrame) -> dict[str, np.ndarray]:
    return {
        "event_ts": _np(table, "event_us"),
        "user_count": _np(table, "user_event_count_scaled", np.float32),
        "item_pop": _np(table, "item_popularity_scaled", np.float32),
    }


class ItemPopularityIndex:
    """Point-in-time item popularity for any (item, time): the item's events (all users) strictly
    before that time, the definition of `features.samples.item_popularity`. Events are held once,
    sorted by (item, time rank), so a batch of lookups is two binary searches (no Python loop)."""

    def __init__(self, item_codes: np.ndarray, ts: np.ndarray, n_items: int) -> None:
        self.times = np.unique(ts)  # distinct event times, ascending
        self.stride = len(self.times) + 1
        items = np.asarray(item_codes, dtype=np.int64)
        self.keys = np.sort(items * self.stride + np.searchsorted(self.times, ts))
        self.start = np.searchsorted(self.keys, np.arange(n_items + 1, dtype=np.int64) * self.stride)
        self.n_items = n_items

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection, n_items: int) -> ItemPopularityIndex:
        events = read_frame(
            con,
            "SELECT unnest(item_codes) AS item_code, epoch_us(unnest(ts_list)) AS ts "
            "FROM features.user_history",
        )
        items = _np(events, "item_code")
        ok = (items >= 0) & (items < n_items)
        return cls(items[ok], _np(events, "ts")[ok], n_items)

    def count_before(self, item_codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """[N] int64: events of item_codes[j] with time < ts[j] (0 for codes outside the store)."""
        items = np.asarray(item_codes, dtype=np.int64)
        ok = (items >= 0) & (items < self.n_items)
        safe = np.where(ok, items, 0)
        rank = np.searchsorted(self.times, np.asarray(ts, dtype=np.int64), side="left")
        count = np.searchsorted(self.keys, safe * self.stride + rank, side="left") - self.start[safe]
        return np.where(ok, count, 0)


def read_frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pl.DataFrame:
    """A query's result as a Polars DataFrame over DuckDB's Arrow buffers (no copy of the columns).

    NOTE: with `preserve_insertion_order = false` (Warehouse.connect) DuckDB 2.0's Arrow results do
    NOT keep ORDER BY order across chunks: callers that need an order sort the frame.
    """
    # execute() (not sql()): works whatever state earlier execute() results left the connection in.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _polars(con.execute(sql, params or []).to_arrow_table())


def _polars(arrow: pa.Table | pa.RecordBatch) -> pl.DataFrame:
    frame = pl.from_arrow(arrow, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _np(table: pl.DataFrame, column: str, dtype: type = np.int64) -> np.ndarray:
    """A column as numpy (a view of the Polars buffer when it is one chunk without nulls)."""
    return table.get_column(column).to_numpy().astype(dtype, copy=False)


def list_to_matrix(values: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Pack a flattened list column into [n, width], right-padded with 0, first `width` kept."""
    n = lengths.shape[0]
    out = np.zeros((n, max(width, 1)), dtype=np.int64)
    if values.size == 0:
        return out
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(values.shape[0]) - np.repeat(starts, lengths)
    keep = cols < width
    out[rows[keep], cols[keep]] = values[keep]
    return out


def reorder_lists(
    values: np.ndarray, lengths: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Permute the rows of a flattened list column (values, lengths) by `order`, vectorized."""
    starts = np.cumsum(lengths) - lengths
    new_lengths = lengths[order]
    new_starts = np.cumsum(new_lengths) - new_lengths
    idx = np.repeat(starts[order] - new_starts, new_lengths) + np.arange(int(new_lengths.sum()))
    return values[idx], new_lengths


def _list_column(table: pl.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, per-row lengths) of a list column; NULL lists count as empty."""
    lists = table.get_column(column)
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64, copy=False)
    values = lists.explode(empty_as_null=False, keep_nulls=False).to_numpy().astype(np.int64, copy=False)
    return values, lengths


def latest_build(con: duckdb.DuckDBPyConnection) -> tuple[str | None, dict]:
    """(build_id, params) of the latest successful feature build, (None, {}) if none is recorded."""
    if not table_exists(con, "meta.builds"):
        return None, {}
    row = con.execute(
        "SELECT build_id, params FROM meta.builds WHERE status = 'success' "
        "ORDER BY finished_at DESC NULLS LAST, started_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None, {}
    params = row[1]
    if isinstance(params, str):
        params = json.loads(params) if params else {}
    return row[0], dict(params or {})


@dataclass
class FeatureStore:
    """The feature store in memory, indexed by code (row 0 = padding)."""

    build_id: str | None
    build_params: dict
    max_seq_len: int
    n_users: int
    n_items: int
    hist_items: np.ndarray  # int32, all histories concatenated in user_code order
    hist_offsets: np.ndarray  # int64 [n_users + 1]
    user_sparse: dict[str, np.ndarray]  # name -> int64 [n_users]
    user_sparse_vocab: dict[str, int]
    user_dense: dict[str, np.ndarray]  # name -> float32 [n_users]
    item_sparse: dict[str, np.ndarray]  # name -> int64 [n_items]
    item_sparse_vocab: dict[str, int]
    item_dense: dict[str, np.ndarray]  # name -> float32 [n_items]
    item_tags: np.ndarray | None  # int64 [n_items, T]
    n_tags: int
    item_train_count: np.ndarray  # float64 [n_items]: training positives per item (logQ, popularity)
    samples: dict[str, Samples]
    # scaling (transform, min, max) of the user's `event_count`, for windows cut without a sample
    event_count_scaling: tuple[str, float, float] | None = None
    # scaling of the item's `popularity`, for point-in-time values of items that are not the target
    popularity_scaling: tuple[str, float, float] | None = None
    # item `popularity` from training positions only, scaled: what evaluation encodes items with
    # (no validation/test target is counted); `item_dense["popularity"]` is the current value
    train_popularity: np.ndarray | None = None
    # per-(item, time) popularity for the training step (loaded with the train split)
    popularity_index: ItemPopularityIndex | None = None
    # per user: the exclusive end of its training events in the history (before the valid/test
    # targets; the whole history for users left out of the splits): what baselines learn from
    train_end: np.ndarray | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        con: duckdb.DuckDBPyConnection,
        max_seq_len: int | None = None,
        splits: tuple[str, ...] = SPLITS,
        static_negatives: bool = False,
        popularity_index: bool | None = None,
    ) -> FeatureStore:
        """Read every feature table once. `splits` selects which samples tables to load;
        `popularity_index` (default: when the train split is loaded) also reads every event's
        (item, time) for point-in-time item popularity in training."""
        for table in ("features.vocab_item_id", "features.vocab_user_id", "features.user_history"):
            require_table(con, table, BUILD_HINT)
        build_id, params = latest_build(con)
        seq_len = int(max_seq_len or params.get("max_seq_len") or 50)

        n_items = int(
            con.execute(
                "SELECT greatest((SELECT coalesce(max(code), 0) FROM features.vocab_item_id),"
                " (SELECT coalesce(max(list_max(item_codes)), 0) FROM features.user_history)) + 1"
            ).fetchone()[0]
        )
        n_users = int(
            con.execute(
                "SELECT greatest((SELECT coalesce(max(code), 0) FROM features.vocab_user_id),"
                " (SELECT coalesce(max(user_code), 0) FROM features.user_history)) + 1"
            ).fetchone()[0]
        )

        hist = read_frame(con, "SELECT user_code, item_codes FROM features.user_history")
        values, lengths = _list_column(hist, "item_codes")
        codes = _np(hist, "user_code")
        values, lengths = reorder_lists(values, lengths, np.argsort(codes, kind="stable"))
        per_user = np.zeros(n_users, dtype=np.int64)
        per_user[np.sort(codes)] = lengths
        offsets = np.concatenate([[0], np.cumsum(per_user)]).astype(np.int64)

        train_end = per_user.copy()
        held_out = [
            f"SELECT user_code, pos FROM features.samples_{split}"
            for split in ("valid", "test")
            if table_exists(con, f"features.samples_{split}")
        ]
        if held_out:
            first = read_frame(
                con,
                f"SELECT user_code, min(pos) AS pos FROM ({' UNION ALL '.join(held_out)}) GROUP BY user_code",
            )
            users, first_pos = _np(first, "user_code"), _np(first, "pos")
            ok = (users >= 0) & (users < n_users)
            train_end[users[ok]] = np.minimum(first_pos[ok], per_user[users[ok]])

        attr_vocab = cls._attribute_vocab(con)
        user_sparse, user_sparse_vocab = cls._wide_sparse(con, "user", n_users, attr_vocab)
        item_sparse, item_sparse_vocab = cls._wide_sparse(con, "item", n_items, attr_vocab)
        user_dense = cls._wide_dense(con, "user", n_users)
        item_dense = cls._wide_dense(con, "item", n_items)

        item_tags, n_tags = None, 0
        if table_exists(con, "features.item_tags"):
            tags = read_frame(con, "SELECT item_code, tag_codes FROM features.item_tags ORDER BY item_code")
            tvals, tlens = _list_column(tags, "tag_codes")
            if tvals.size:
                width = int(min(MAX_TAGS, tlens.max()))
                mat = list_to_matrix(tvals, tlens, width)
                item_tags = np.zeros((n_items, width), dtype=np.int64)
                codes = _np(tags, "item_code")
                ok = codes < n_items
                item_tags[codes[ok]] = mat[ok]
                n_tags = int(tvals.max()) + 1
                if table_exists(con, "features.vocab_tag"):
                    n_tags = max(
                        n_tags,
                        int(
                            con.execute(
                                "SELECT coalesce(max(code), 0) + 1 FROM features.vocab_tag"
                            ).fetchone()[0]
                        ),
                    )

        samples = {s: cls._samples(con, s, static_negatives and s == "train") for s in splits}
        train_count = np.zeros(n_items, dtype=np.float64)
        if table_exists(con, "features.item_popularity"):
            pop = read_frame(con, "SELECT item_code, n_train FROM features.item_popularity")
            codes = _np(pop, "item_code")
            ok = codes < n_items
            train_count[codes[ok]] = _np(pop, "n_train", np.float64)[ok]
        elif "train" in samples:
            train_count += np.bincount(samples["train"].target, minlength=n_items)[:n_items]
        # Event-derived dense columns: user_dense / item_dense hold the current values (all events:
        # production scoring). Samples carry their point-in-time values from SQL (training and
        # evaluation encode users with them), other items in a training step get theirs from the
        # popularity index, and evaluation encodes items with training-position popularity, so no
        # validation/test event leaks into training or evaluation.
        scaling = cls._dense_scaling(con)
        pop_scaling = scaling.get(("item", "popularity")) if "popularity" in item_dense else None
        count_scaling = scaling.get(("user", "event_count")) if "event_count" in user_dense else None
        index = None
        if pop_scaling is not None and (
            popularity_index if popularity_index is not None else "train" in splits
        ):
            index = ItemPopularityIndex.load(con, n_items)
        return cls(
            event_count_scaling=count_scaling,
            popularity_scaling=pop_scaling,
            train_popularity=None if pop_scaling is None else _scale(train_count, *pop_scaling),
            popularity_index=index,
            train_end=train_end,
            build_id=build_id,
            build_params=params,
            max_seq_len=seq_len,
            n_users=n_users,
            n_items=n_items,
            hist_items=values.astype(np.int32),
            hist_offsets=offsets,
            user_sparse=user_sparse,
            user_sparse_vocab=user_sparse_vocab,
            user_dense=user_dense,
            item_sparse=item_sparse,
            item_sparse_vocab=item_sparse_vocab,
            item_dense=item_dense,
            item_tags=item_tags,
            n_tags=n_tags,
            item_train_count=train_count,
            samples=samples,
        )

    @staticmethod
    def _attribute_vocab(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], int]:
        if not table_exists(con, "features.vocab_attribute"):
            return {}
        rows = con.execute(
            "SELECT entity, name, max(code) + 1 FROM features.vocab_attribute GROUP BY ALL"
        ).fetchall()
        return {(e, n): int(v) for e, n, v in rows}

    @staticmethod
    def _wide_sparse(
        con: duckdb.DuckDBPyConnection, entity: str, n: int, vocab: dict[tuple[str, str], int]
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        table = f"features.{entity}_sparse"
        names = sorted({name for (e, name) in vocab if e == entity})
        arrays: dict[str, np.ndarray] = {}
        sizes = {name: vocab[(entity, name)] for name in names}
        if table_exists(con, table):
            data = read_frame(con, f"SELECT {entity}_code AS code, name, code AS value FROM {table}")
            for name, codes, values in _by_name(data, n, np.int64):
                arrays[name] = _scatter(codes, values, n, np.int64)
                sizes[name] = max(sizes.get(name, 1), int(values.max(initial=0)) + 1)
        for name in names:
            arrays.setdefault(name, np.zeros(n, dtype=np.int64))
        return dict(sorted(arrays.items())), dict(sorted(sizes.items()))

    @staticmethod
    def _dense_scaling(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], tuple[str, float, float]]:
        if not table_exists(con, "features.dense_scaling"):
            return {}
        rows = con.execute(
            "SELECT entity, name, transform, min_value, max_value FROM features.dense_scaling"
        ).fetchall()
        return {(e, n): (str(t), float(lo or 0.0), float(hi or 0.0)) for e, n, t, lo, hi in rows}

    @staticmethod
    def _wide_dense(con: duckdb.DuckDBPyConnection, entity: str, n: int) -> dict[str, np.ndarray]:
        table = f"features.{entity}_dense"
        if not table_exists(con, table):
            return {}
        data = read_frame(con, f"SELECT {entity}_code AS code, name, value FROM {table}")
        return {
            name: _scatter(codes, np.nan_to_num(values, nan=0.0), n, np.float32)
            for name, codes, values in _by_name(data, n, np.float32)
        }

    @staticmethod
    def _samples(con: duckdb.DuckDBPyConnection, split: str, static_negatives: bool) -> Samples:
        table = f"features.samples_{split}"
        require_table(con, table, BUILD_HINT)
        if static_negatives:
            require_table(con, "features.negatives_train", BUILD_HINT + " with a negative-sampling mode")
            data = read_frame(
                con,
                f"""
                SELECT s.user_code, s.target_item_code, s.pos, n.negs, {POINT_IN_TIME_COLUMNS}
                FROM {table} s LEFT JOIN (
                    SELECT user_code, pos, list(neg_item_code ORDER BY neg_rank) AS negs
                    FROM features.negatives_train GROUP BY ALL) n USING (user_code, pos)
                ORDER BY s.user_code, s.pos""",
            )
            values, lengths = _list_column(data, "negs")
            negs = list_to_matrix(values, lengths, int(lengths.max(initial=0)))
        else:
            data = read_frame(
                con,
                f"SELECT user_code, target_item_code, pos, {POINT_IN_TIME_COLUMNS} FROM {table} "
                "ORDER BY user_code, pos",
            )
            negs = None
        order = (
            data.select(pl.int_range(pl.len()).sort_by("user_code", "pos").alias("i"))
            .get_column("i")
            .to_numpy()
        )  # never trust result order (see `read_frame`)
        data = data.drop("negs", strict=False)[order]  # one Polars gather of every column
        return Samples(
            _np(data, "user_code"),
            _np(data, "target_item_code"),
            _np(data, "pos"),
            None if negs is None else negs[order],
            **_point_in_time(data),
        )

    # ------------------------------------------------------------------ metadata
    def schema(self, max_seq_len: int | None = None, history_pooling: str = "mean") -> FeatureSchema:
        """Feature specs derived from what the store holds (vocab sizes, dense columns, tags)."""
        user_sparse = [SparseFeature("user_id", self.n_users)]
        user_sparse += [SparseFeature(n, v) for n, v in self.user_sparse_vocab.items() if n != "user_id"]
        item_sparse = [SparseFeature("item_id", self.n_items)]
        item_sparse += [SparseFeature(n, v) for n, v in self.item_sparse_vocab.items() if n != "item_id"]
        tags = None
        if self.item_tags is not None:
            tags = SequenceFeature("tags", self.n_tags, "mean", int(self.item_tags.shape[1]))
        return FeatureSchema(
            user_sparse=tuple(user_sparse),
            user_dense=tuple(DenseFeature(n) for n in self.user_dense),
            item_sparse=tuple(item_sparse),
            item_dense=tuple(DenseFeature(n) for n in self.item_dense),
            history=SequenceFeature(
                "hist",
                self.n_items,
                history_pooling,  # type: ignore[arg-type]
                int(max_seq_len or self.max_seq_len),
                shared_with="item_id",
            ),
            tags=tags,
        )

    def history_length(self, user_codes: np.ndarray) -> np.ndarray:
        """Number of events in each user's whole current history (0 for unknown codes)."""
        u = np.asarray(user_codes, dtype=np.int64)
        ok = (u >= 0) & (u < self.n_users)
        out = np.zeros(u.shape[0], dtype=np.int64)
        out[ok] = self.hist_offsets[u[ok] + 1] - self.hist_offsets[u[ok]]
        return out

    # ------------------------------------------------------------------ batches
    def history_windows(self, user_codes: np.ndarray, ends: np.ndarray, max_len: int) -> np.ndarray:
        """[B, max_len] int64: items [ends-max_len, ends) of each user's history, left-padded with 0."""
        u = np.asarray(user_codes, dtype=np.int64)
        e = np.minimum(np.asarray(ends, dtype=np.int64), self.history_length(u))
        base = np.where((u >= 0) & (u < self.n_users), self.hist_offsets[np.clip(u, 0, self.n_users - 1)], 0)
        cols = np.arange(max_len, dtype=np.int64) - max_len  # -L .. -1
        idx = (base + e)[:, None] + cols[None, :]
        valid = cols[None, :] >= -e[:, None]
        if self.hist_items.size == 0:
            return np.zeros((u.shape[0], max_len), dtype=np.int64)
        out = self.hist_items[np.clip(idx, 0, self.hist_items.size - 1)].astype(np.int64)
        out[~valid] = 0
        return out

    def seen(self, user_codes: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CSR (indptr, indices) of the items in user_history[:ends] per row (items to exclude)."""
        u = np.asarray(user_codes, dtype=np.int64)
        e = np.minimum(np.asarray(ends, dtype=np.int64), self.history_length(u))
        indptr = np.concatenate([[0], np.cumsum(e)]).astype(np.int64)
        base = np.where((u >= 0) & (u < self.n_users), self.hist_offsets[np.clip(u, 0, self.n_users - 1)], 0)
        starts = np.repeat(base - indptr[:-1], e)
        indices = self.hist_items[starts + np.arange(indptr[-1])].astype(np.int64)
        return indptr, indices

    def user_batch(
        self,
        user_codes: np.ndarray,
        hist_end: np.ndarray,
        max_seq_len: int,
        trim: bool = True,
        event_count: np.ndarray | None = None,
        width: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """User-tower inputs for users with histories cut at `hist_end` (exclusive).

        `event_count`: the scaled point-in-time event count per row (a sample's
        `user_event_count_scaled`); training and evaluation pass it. Without it, a row whose
        window is the whole history gets the current value (`features.user_dense`), and a shorter
        window the number of events in it (what a caller without a sample knows).
        `trim`: drop window columns that are padding in every row (the models are padding-invariant,
        so this only saves compute: with length-bucketed batches most padding disappears).
        `width`: the window width, whatever the rows hold (it overrides `trim`).
        """
        u = np.asarray(user_codes, dtype=np.int64)
        safe = np.where((u >= 0) & (u < self.n_users), u, 0)
        if width is None:
            width = max_seq_len
            if trim and u.size:
                longest = int(np.minimum(np.asarray(hist_end, dtype=np.int64), self.history_length(u)).max())
                width = max(1, min(max_seq_len, longest))
        batch = {
            "user_code": torch.from_numpy(u.copy()),
            "hist": torch.from_numpy(self.history_windows(u, hist_end, width)),
            "u.user_id": torch.from_numpy(safe.copy()),
        }
        for name, arr in self.user_sparse.items():
            batch[f"u.{name}"] = torch.from_numpy(arr[safe])
        for name, arr in self.user_dense.items():
            batch[f"ud.{name}"] = torch.from_numpy(arr[safe])
        if "event_count" in self.user_dense:
            if event_count is not None:
                batch["ud.event_count"] = torch.from_numpy(np.asarray(event_count, dtype=np.float32))
            elif self.event_count_scaling is not None:
                length = self.history_length(u)
                ends = np.minimum(np.asarray(hist_end, dtype=np.int64), length)
                window = _scale(ends.astype(np.float64), *self.event_count_scaling)
                current = self.user_dense["event_count"][safe]
                batch["ud.event_count"] = torch.from_numpy(np.where(ends >= length, current, window))
        return batch

    def item_batch(
        self, item_codes: np.ndarray, popularity: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        """Item-tower inputs for the given item codes (codes outside the store read as padding).

        `popularity`: scaled popularity per row (point-in-time, or `train_popularity[codes]`);
        None = the current value (`features.item_dense`, all events).
        """
        i = np.asarray(item_codes, dtype=np.int64)
        safe = np.where((i >= 0) & (i < self.n_items), i, 0)
        batch = {"item_code": torch.from_numpy(i.copy()), "i.item_id": torch.from_numpy(safe.copy())}
        for name, arr in self.item_sparse.items():
            batch[f"i.{name}"] = torch.from_numpy(arr[safe])
        for name, arr in self.item_dense.items():
            batch[f"id.{name}"] = torch.from_numpy(arr[safe])
        if popularity is not None and "popularity" in self.item_dense:
            batch["id.popularity"] = torch.from_numpy(np.asarray(popularity, dtype=np.float32))
        if self.item_tags is not None:
            batch["tags"] = torch.from_numpy(self.item_tags[safe])
        return batch

    def popularity_at(self, item_codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Scaled point-in-time popularity of item_codes[j] at time ts[j] (epoch microseconds): what
        `features.samples.item_popularity_scaled` holds for a target. Needs the popularity index."""
        if self.popularity_index is None or self.popularity_scaling is None:
            raise ValueError("point-in-time popularity needs FeatureStore.load(..., popularity_index=True)")
        counts = self.popularity_index.count_before(item_codes, ts)
        return _scale(counts.astype(np.float64), *self.popularity_scaling)


def _by_name(data: pl.DataFrame, n: int, dtype: type) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, codes, values) of a long (code, name, value) attribute table, per name in name order,
    codes outside [0, n) dropped: one Polars partitioning instead of a mask per name."""
    data = data.filter((pl.col("code") >= 0) & (pl.col("code") < n))
    parts = data.partition_by("name", as_dict=True, include_key=False)
    for (name,), part in sorted(parts.items(), key=lambda kv: str(kv[0][0])):
        yield str(name), _np(part, "code"), _np(part, "value", dtype)


def _scatter(codes: np.ndarray, values: np.ndarray, n: int, dtype: type) -> np.ndarray:
    """[n] array indexed by code: `values` at `codes`, 0 elsewhere."""
    out = np.zeros(n, dtype=dtype)
    out[codes] = values
    return out


def _scale(x: np.ndarray, transform: str, lo: float, hi: float) -> np.ndarray:
    """The min-max scaling of features.dense_scaling (optionally after log1p), clipped to [0, 1]."""
    v = np.log1p(x) if transform == "log1p" else x
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------- negatives
class NegativeSampler:
    """Seeded negatives per batch, uniform or popularity^alpha.

    A negative for the sample at position `pos` of a user's history is never an item the user had
    interacted with up to and including `pos` (the target and its history). Items the user only
    interacts with later (e.g. their validation and test targets) stay valid negatives: excluding
    them would teach the model "this item is never a negative for this user", knowledge from the
    future. Each (user, item) pair keeps the position of its first occurrence, so "interacted up
    to pos" is one comparison after the bitmap lookup.
    """

    def __init__(
        self,
        store: FeatureStore,
        kind: Literal["uniform", "popularity"] = "uniform",
        alpha: float = 0.75,
        max_rounds: int = 20,
    ) -> None:
        self.n_items = store.n_items
        self.n_users = store.n_users
        self.max_rounds = max_rounds
        lengths = np.diff(store.hist_offsets)
        owner = np.repeat(np.arange(store.n_users, dtype=np.int64), lengths)
        keys = owner * self.n_items + store.hist_items.astype(np.int64)
        seq = np.arange(keys.size, dtype=np.int64) - np.repeat(store.hist_offsets[:-1], lengths)
        width = int(lengths.max(initial=0)) + 1
        # sort (key, position) packed in one int64 and keep each key's first entry: its first
        # occurrence (sort + dedupe: np.unique is ~15x slower on large int64 arrays in numpy 2.x)
        if keys.size and (self.n_users * self.n_items + 1) * width < 2**62:
            packed = np.sort(keys * width + seq)
            keys = packed // width
            first = np.r_[True, keys[1:] != keys[:-1]]
            self.positive_keys, self.first_pos = keys[first], packed[first] % width
        else:  # huge user x item space: a stable sort by key keeps positions ascending within a key
            order = np.argsort(keys, kind="stable")
            keys, seq = keys[order], seq[order]
            first = np.r_[True, keys[1:] != keys[:-1]] if keys.size else np.zeros(0, dtype=bool)
            self.positive_keys, self.first_pos = keys[first], seq[first]
        # users x items fits a small bitmap (20k x 5k: 12 MB): one lookup per check instead of a
        # binary search over every positive (which costs ~20 cache misses per draw)
        self.bitmap: np.ndarray | None = None
        if store.n_users * self.n_items <= 8 * BITMAP_MAX_BYTES:
            self.bitmap = np.zeros(store.n_users * self.n_items // 8 + 1, dtype=np.uint8)
            if self.positive_keys.size:
                byte = self.positive_keys >> 3
                bit = np.left_shift(1, self.positive_keys & 7).astype(np.uint8)
                starts = np.r_[0, np.flatnonzero(byte[1:] != byte[:-1]) + 1]  # keys sorted: runs
                self.bitmap[byte[starts]] = np.bitwise_or.reduceat(bit, starts)
        self.uniform = kind == "uniform" and self.n_items > 1
        if kind == "popularity":
            weights = (store.item_train_count + 1.0) ** alpha
        elif kind == "uniform":
            weights = np.ones(self.n_items)
        else:
            raise UserError(f"negative sampler: expected uniform or popularity, got {kind!r}")
        weights[0] = 0.0
        self.cdf = np.cumsum(weights) / weights.sum()

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.uniform:
            return rng.integers(1, self.n_items, size)
        return np.minimum(np.searchsorted(self.cdf, rng.random(size), side="right"), self.n_items - 1)

    def is_positive(self, user_codes: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Has the user interacted with the item at any time?"""
        keys = user_codes * self.n_items + items
        if self.bitmap is not None:
            known = (user_codes >= 0) & (user_codes < self.n_users) & (items >= 0) & (items < self.n_items)
            keys = np.where(known, keys, 0)  # codes outside the store are no one's positives
            hit = (self.bitmap[keys >> 3] >> (keys & 7).astype(np.uint8)) & 1
            return hit.astype(bool) & known
        found = np.searchsorted(self.positive_keys, keys)
        found = np.minimum(found, max(self.positive_keys.size - 1, 0))
        return self.positive_keys[found] == keys if self.positive_keys.size else np.zeros(keys.shape, bool)

    def is_excluded(self, user_codes: np.ndarray, items: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Had the user interacted with the item at or before `positions` (the sample's target)?"""
        out = self.is_positive(user_codes, items)
        hits = np.flatnonzero(out)
        if hits.size:
            keys = user_codes[hits] * self.n_items + items[hits]
            first = self.first_pos[np.searchsorted(self.positive_keys, keys)]
            out[hits] = first <= np.broadcast_to(positions, out.shape)[hits]
        return out

    def sample(
        self, user_codes: np.ndarray, n: int, rng: np.random.Generator, positions: np.ndarray | None = None
    ) -> np.ndarray:
        """[B, n] int64 negatives for samples (user_codes[b], positions[b]); collisions with what the
        user had interacted with up to that position are redrawn a few rounds. Without `positions`
        every item of the user's whole history is excluded."""
        users = np.repeat(np.asarray(user_codes, dtype=np.int64), n)
        pos = None if positions is None else np.repeat(np.asarray(positions, dtype=np.int64), n)

        def excluded(rows: np.ndarray | None) -> np.ndarray:
            u = users if rows is None else users[rows]
            v = negs if rows is None else negs[rows]
            if pos is None:
                return self.is_positive(u, v)
            return self.is_excluded(u, v, pos if rows is None else pos[rows])

        negs = self._draw(rng, users.size)
        todo = np.flatnonzero(excluded(None))  # redraw only the collisions, as a shrinking index list
        for _ in range(self.max_rounds):
            if not todo.size:
                break
            negs[todo] = self._draw(rng, todo.size)
            todo = todo[excluded(todo)]
        negs[todo] = 0  # a user who saw (nearly) every item: masked as padding by the loss
        return negs.reshape(-1, n)


# ---------------------------------------------------------------------- prefetching
_DONE = object()


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield `items` in order while a background thread produces up to `depth` ahead.

    Worth it when producing is numpy/torch work that releases the GIL (batch gathers, sampling).
    An exception in the producer is re-raised here; closing this generator early (a break, an
    error in the consumer) stops the producer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            buffer.put(exc)

    worker = threading.Thread(target=produce, name="rechub-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


# ---------------------------------------------------------------------- sample sources
class InMemorySamples:
    """Training samples in memory, served as whole batches of a seeded per-epoch permutation.

    With `bucket_len`, each run of `BUCKET_BATCHES` batches of the permutation is sorted by history
    length (capped at `bucket_len`) before it is cut, and the batches are then shuffled: batches hold
    similar lengths, so trimmed windows carry little padding (sequence models run several times faster).

    With `by_time`, batches are cut from the samples in event-time order (from a seeded offset each
    epoch) and then shuffled: each batch spans a short stretch of time, so what a step encodes once
    for the whole batch (the catalogue under full softmax) can use the item features known at the
    batch's earliest sample without going stale for the others.
    """

    BUCKET_BATCHES = 64

    def __init__(
        self, samples: Samples, seed: int, bucket_len: int | None = None, by_time: bool = False
    ) -> None:
        self.samples = samples
        self.seed = seed
        self.lengths = None if bucket_len is None else np.minimum(samples.pos, bucket_len)
        self.time_order: np.ndarray | None = None
        if by_time:
            if samples.event_ts is None:
                raise ValueError("time-ordered batches need the samples' event_ts")
            self.time_order = np.lexsort((samples.pos, samples.user_code, samples.event_ts))

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self, epoch: int, batch_size: int) -> Iterator[Samples]:
        rng = np.random.default_rng([self.seed, epoch])
        if self.time_order is not None:
            n = len(self.samples)
            offset = int(rng.integers(0, batch_size)) if n > batch_size else 0
            cuts = np.unique(np.r_[0, np.arange(offset, n, batch_size), n])
            ordered = self.samples.take(self.time_order)
            for b in rng.permutation(len(cuts) - 1):
                yield ordered.take(slice(int(cuts[b]), int(cuts[b + 1])))
            return
        order = rng.permutation(len(self.samples))
        starts = np.arange(0, order.size, batch_size)
        if self.lengths is not None:
            chunk = np.arange(order.size) // (batch_size * self.BUCKET_BATCHES)
            key = chunk * (int(self.lengths.max(initial=0)) + 1) + self.lengths[order]
            # one small-integer key: numpy's stable sort is a radix sort for 16-bit keys (5x lexsort)
            order = order[np.argsort(key.astype(np.min_scalar_type(key.max(initial=0))), kind="stable")]
            starts = starts[rng.permutation(starts.size)]
        shuffled = self.samples.take(order)  # one gather per epoch: every batch is then a view
        for start in starts:
            yield shuffled.take(slice(start, start + batch_size))


@dataclass(frozen=True)
class SequenceUnits:
    """All-position training units: unit i trains every target at positions [lo[i], end[i]) of user
    user_code[i] from one pass over the window that ends at end[i] - 1 (causal models only)."""

    user_code: np.ndarray  # int64 [U]
    end: np.ndarray  # int64 [U], exclusive
    lo: np.ndarray  # int64 [U], first target position

    def __len__(self) -> int:
        return int(self.user_code.shape[0])

    def take(self, idx: np.ndarray) -> SequenceUnits:
        return SequenceUnits(self.user_code[idx], self.end[idx], self.lo[idx])

    @property
    def n_targets(self) -> int:
        return int((self.end - self.lo).sum())


def sequence_units(samples: Samples, window: int, stride: int | None = None) -> SequenceUnits:
    """Cover every training target exactly once with all-position windows.

    A user whose targets all lie within the first `window` + 1 positions is one unit: every target
    sees its whole history, as at inference. Longer users are cut, from the most recent end, into
    units of `stride` targets fed with the full `window` of history, so each target still sees at
    least `window - stride` earlier items. Assumes a user's training positions are contiguous
    (the leave-one-out split: 1 .. n-3).
    """
    stride = max(1, min(window, stride or max(1, window // 2)))
    if len(samples) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return SequenceUnits(empty, empty, empty)
    order = np.lexsort((samples.pos, samples.user_code))
    users, pos = samples.user_code[order], samples.pos[order]
    first = np.r_[True, users[1:] != users[:-1]]
    last = np.r_[users[1:] != users[:-1], True]
    u, lo_all, hi_all = users[first], pos[first], pos[last] + 1
    n_units = np.where(hi_all - 1 <= window, 1, -(-(hi_all - 1 - window) // stride) + 1)
    group_start = np.cumsum(n_units) - n_units
    k = np.arange(n_units.sum()) - np.repeat(group_start, n_units)
    end = np.repeat(hi_all, n_units) - k * stride
    lo_rep = np.repeat(lo_all, n_units)
    is_last = k == np.repeat(n_units, n_units) - 1
    lo = np.where(is_last, lo_rep, np.maximum(lo_rep, end - stride))
    keep = end > lo
    return SequenceUnits(
        np.repeat(u, n_units)[keep].astype(np.int64), end[keep].astype(np.int64), lo[keep].astype(np.int64)
    )


class SequenceSource:
    """Seeded, length-bucketed batches of `SequenceUnits` (see InMemorySamples for the bucketing)."""

    def __init__(self, samples: Samples, seed: int, window: int) -> None:
        self.samples = samples  # the units' targets: their point-in-time columns are looked up here
        self.units = sequence_units(samples, window)
        self.seed = seed
        self.n_targets = len(samples)
        self.lengths = np.minimum(self.units.end - 1, window)

    def __len__(self) -> int:
        return len(self.units)

    def batches(self, epoch: int, batch_size: int) -> Iterator[SequenceUnits]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.units))
        chunk = np.arange(order.size) // (batch_size * InMemorySamples.BUCKET_BATCHES)
        order = order[np.lexsort((self.lengths[order], chunk))]
        starts = np.arange(0, order.size, batch_size)
        for start in starts[rng.permutation(starts.size)]:
            yield self.units.take(order[start : start + batch_size])


class StreamingSamples:
    """Training samples streamed from DuckDB in Arrow record batches (tables larger than memory).

    DuckDB shuffles with a seeded hash order (it spills to disk if needed); rows arrive in
    record batches and are re-cut into training batches, so memory stays O(batch).
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, seed: int, split: str = "train", static_negatives: bool = False
    ) -> None:
        require_table(con, f"features.samples_{split}", BUILD_HINT)
        self.con = con
        self.seed = seed
        self.table = f"features.samples_{split}"
        self.static_negatives = static_negatives
        self._len = int(con.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def __len__(self) -> int:
        return self._len

    def batches(self, epoch: int, batch_size: int) -> Iterator[Samples]:
        key = int(np.random.default_rng([self.seed, epoch]).integers(0, 2**31 - 1))
        if self.static_negatives:
            sql = f"""SELECT s.user_code, s.target_item_code, s.pos, n.negs, {POINT_IN_TIME_COLUMNS}
                      FROM {self.table} s
                      LEFT JOIN (SELECT user_code, pos, list(neg_item_code ORDER BY neg_rank) AS negs
                                 FROM features.negatives_train GROUP BY ALL) n USING (user_code, pos)
                      ORDER BY hash(s.user_code, s.pos, $key), s.user_code, s.pos"""
        else:
            sql = f"""SELECT user_code, target_item_code, pos, {POINT_IN_TIME_COLUMNS} FROM {self.table}
                      ORDER BY hash(user_code, pos, $key), user_code, pos"""
        # a cursor of its own: the stream stays open while the caller uses `con` for other queries
        reader = self.con.cursor().sql(sql, params={"key": key}).to_arrow_reader(batch_size)
        pending: list[Samples] = []
        n_pending = 0
        for rb in reader:
            table = _polars(rb)
            negs = None
            if self.static_negatives:
                values, lengths = _list_column(table, "negs")
                negs = list_to_matrix(values, lengths, int(lengths.max(initial=0)))
            pending.append(
                Samples(
                    _np(table, "user_code"),
                    _np(table, "target_item_code"),
                    _np(table, "pos"),
                    negs,
                    **_point_in_time(table),
                )
            )
            n_pending += table.height
            while n_pending >= batch_size:
                merged = _concat(pending)
                yield merged.take(np.arange(batch_size))
                rest = merged.take(np.arange(batch_size, len(merged)))
                pending, n_pending = [rest], len(rest)
        if n_pending:
            yield _concat(pending)


def _concat(parts: list[Samples]) -> Samples:
    if len(parts) == 1:
        return parts[0]
    negs = None
    if parts[0].negatives is not None:
        width = max(p.negatives.shape[1] for p in parts)  # type: ignore[union-attr]
        negs = np.concatenate(
            [
                np.pad(p.negatives, ((0, 0), (0, width - p.negatives.shape[1])))  # type: ignore[union-attr]
                for p in parts
            ]
        )

    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return Samples(
        np.concatenate([p.user_code for p in parts]),
        np.concatenate([p.target for p in parts]),
        np.concatenate([p.pos for p in parts]),
        negs,
        cat("event_ts"),
        cat("user_count"),
        cat("item_pop"),
    )
