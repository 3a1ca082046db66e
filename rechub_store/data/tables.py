"""The feature store for your own code: its tables as Polars DataFrames and its samples as torch
datasets that a standard `DataLoader` batches.

Tables are read DuckDB -> Arrow -> Polars (no copy of the column buffers, no per-row Python). The
datasets address histories the way the feature store stores them (user, position): a sample's
history window is cut from `features.user_history` when it is read (`readers.FeatureStore`, which
reads the same way: numpy gathers over the Polars buffers), never stored per sample. The trainer
has its own faster batch path over the same store (`readers.InMemorySamples`,
`readers.SequenceSource`); these are for models of your own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from rechub_store.data.readers import FeatureStore, Samples, read_frame
from rechub_store.errors import UserError
from rechub_store.warehouse import Warehouse, quote_ident, require_table

SPLITS = ("train", "valid", "test")
BUILD_HINT = "run `rechub-store build-features` first"
Row = dict[str, torch.Tensor]


def _split(split: str) -> str:
    if split not in SPLITS:
        raise UserError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    return split


class FeatureTables:
    """Read access to a warehouse's feature store (it is opened read-only for each read).

    `samples("train")`, `history()`, `vocab("item_id")` and `table("features.item_dense")` return
    `polars.DataFrame`s; `dataset(split)` and `stream(split)` return torch datasets.
    """

    def __init__(self, warehouse: Warehouse | Path | str) -> None:
        self.warehouse = warehouse if isinstance(warehouse, Warehouse) else Warehouse(Path(warehouse))
        self._stores: dict[tuple[str, int | None], FeatureStore] = {}

    def table(self, name: str, order_by: Sequence[str] = ()) -> pl.DataFrame:
        """A table as a DataFrame: `features.<table>` or `staging.<table>` (optionally ordered)."""
        schema, _, table = name.rpartition(".")
        if schema not in ("features", "staging"):
            raise UserError(f"table {name!r}: expected features.<table> or staging.<table>")
        qualified = f"{schema}.{quote_ident(table)}"
        with self.warehouse.session(read_only=True) as con:
            require_table(con, name, BUILD_HINT)
            frame = read_frame(con, f"SELECT * FROM {qualified}")
        return frame.sort(list(order_by)) if order_by else frame

    def samples(self, split: str = "train") -> pl.DataFrame:
        """One row per positive target of the split (user_code, target_item_code, pos, event_ts and
        the point-in-time columns), ordered by user and position."""
        return self.table(f"features.samples_{_split(split)}", order_by=("user_code", "pos"))

    def history(self) -> pl.DataFrame:
        """Each user's item codes in time order (with their timestamps), by user code."""
        return self.table("features.user_history", order_by=("user_code",))

    def vocab(self, column: str) -> pl.DataFrame:
        """The (value, code) vocabulary of a sparse column, e.g. `user_id`, `item_id`, `tag`."""
        return self.table(f"features.vocab_{column}", order_by=("code",))

    @property
    def n_items(self) -> int:
        """Item codes are 1..n_items-1 (0 = padding): the size of an item embedding table."""
        return self._store("test", None).n_items

    @property
    def n_users(self) -> int:
        return self._store("test", None).n_users

    def dataset(self, split: str = "train", max_seq_len: int | None = None) -> SampleDataset:
        """A map-style dataset over the split's samples (shuffle with the DataLoader)."""
        return SampleDataset(self._store(split, max_seq_len), split, max_seq_len)

    def stream(
        self, split: str = "train", batch_size: int = 256, max_seq_len: int | None = None, seed: int = 0
    ) -> SampleStream:
        """An iterable dataset that yields whole batches in a seeded order, split across DataLoader
        workers (use `DataLoader(stream, batch_size=None)`)."""
        return SampleStream(self._store(split, max_seq_len), split, batch_size, max_seq_len, seed)

    def _store(self, split: str, max_seq_len: int | None) -> FeatureStore:
        key = (_split(split), max_seq_len)
        if key not in self._stores:
            with self.warehouse.session(read_only=True) as con:
                self._stores[key] = FeatureStore.load(con, max_seq_len, splits=(split,))
        return self._stores[key]


def _rows(store: FeatureStore, samples: Samples, max_len: int) -> Row:
    """Batch tensors for samples: user_code, history [B, max_len] (the `max_len` items before the
    target, left-padded with 0), target and event_ts (epoch microseconds)."""
    users = samples.user_code
    return {
        "user_code": torch.from_numpy(users.copy()),
        "history": torch.from_numpy(store.history_windows(users, samples.pos, max_len)),
        "target": torch.from_numpy(samples.target.copy()),
        "event_ts": torch.from_numpy(
            samples.event_ts.copy() if samples.event_ts is not None else np.zeros(len(users), np.int64)
        ),
    }


class SampleDataset(Dataset[Row]):
    """Samples of one split; item i is a dict of tensors (see `collate`). Batches are gathered in
    one vectorized step (`__getitems__`), not row by row."""

    def __init__(self, store: FeatureStore, split: str, max_seq_len: int | None = None) -> None:
        self.store = store
        self.samples = store.samples[split]
        self.max_len = int(max_seq_len or store.max_seq_len)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Row:
        return {k: v[0] for k, v in self._batch([index]).items()}

    def __getitems__(self, indices: list[int]) -> list[Row]:
        batch = self._batch(indices)
        return [{k: v[i] for k, v in batch.items()} for i in range(len(indices))]

    def _batch(self, indices: Sequence[int]) -> Row:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range (0..{len(self) - 1})")
        return _rows(self.store, self.samples.take(idx % max(len(self), 1)), self.max_len)


class SampleStream(IterableDataset[Row]):
    """Whole batches of one split in a seeded random order, each DataLoader worker taking every
    n-th batch; a new order per epoch (`set_epoch`)."""

    def __init__(
        self, store: FeatureStore, split: str, batch_size: int, max_seq_len: int | None, seed: int
    ) -> None:
        self.store = store
        self.samples = store.samples[split]
        self.batch_size = int(batch_size)
        self.max_len = int(max_seq_len or store.max_seq_len)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Row]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.samples))
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        starts = range(0, len(order), self.batch_size)
        for i, lo in enumerate(starts):
            if i % n_workers == worker:
                part = self.samples.take(np.sort(order[lo : lo + self.batch_size]))
                yield _rows(self.store, part, self.max_len)


def collate(rows: Sequence[Row]) -> Row:
    """Stack the rows of `SampleDataset` into one batch dict (the DataLoader's `collate_fn`)."""
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
