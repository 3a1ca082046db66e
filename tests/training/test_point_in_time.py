"""Point-in-time inputs: the tensors a model receives in training, validation and production equal
what SQL computes (the samples tables' columns, or the same definition for other items), on a
generated log with timestamp ties."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import torch

from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import generate_into
from rechub_store.data.readers import FeatureStore, InMemorySamples, SequenceSource
from rechub_store.models import build_model
from rechub_store.models.features import reads_item_popularity
from rechub_store.ranking.embeddings import encode_items, encode_users
from rechub_store.ranking.protocol import model_ranks
from rechub_store.training.config import TrainConfig
from rechub_store.training.trainer import Trainer
from rechub_store.warehouse import Warehouse


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    root = tmp_path_factory.mktemp("pit")
    wh = Warehouse(root / "rechub.duckdb", threads=2)
    connection = wh.connect()
    generate_into(connection, root / "data", n_users=150, n_items=60, n_events=5000, seed=5)
    build_features(connection, BuildParams(neg_ratio=3))
    yield connection
    connection.close()


def sql_columns(con: duckdb.DuckDBPyConnection, split: str) -> dict[tuple[int, int], tuple[float, float]]:
    rows = con.execute(
        "SELECT user_code, pos, user_event_count_scaled, item_popularity_scaled "
        f"FROM features.samples_{split}"
    ).fetchall()
    return {(u, p): (c, i) for u, p, c, i in rows}


def sql_popularity_at(con: duckdb.DuckDBPyConnection, items: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
    """The samples.sql definition for any (item, time): the item's events strictly before, scaled."""
    con.register("_q", pa.table({"row": np.arange(len(items)), "item": items, "ts": ts_us}))
    try:
        out = con.execute(
            """
            SELECT q.row, least(greatest((ln(1 + count(e.item_code)) - s.min_value)
                                         / (s.max_value - s.min_value), 0.0), 1.0)
            FROM _q q
            LEFT JOIN features.events e ON e.item_code = q.item AND epoch_us(e.ts) < q.ts
            CROSS JOIN (SELECT * FROM features.dense_scaling WHERE entity = 'item' AND name = 'popularity') s
            GROUP BY q.row, s.min_value, s.max_value ORDER BY q.row
            """
        ).fetchall()
    finally:
        con.unregister("_q")
    return np.array([v for _, v in out])


def test_the_log_has_timestamp_ties(con: duckdb.DuckDBPyConnection) -> None:
    """Without ties the event count would equal the position and the test below could not tell them apart."""
    (n,) = con.execute(
        "SELECT count(*) FROM features.samples_train s WHERE s.user_event_count <> s.pos"
    ).fetchone()
    assert n > 20


def test_training_batches_carry_the_sql_point_in_time_columns(con: duckdb.DuckDBPyConnection) -> None:
    store = FeatureStore.load(con)
    sql = sql_columns(con, "train")
    torch.manual_seed(0)
    model = build_model("dssm", store.schema(), embed_dim=8)
    assert reads_item_popularity(model, store)
    assert not reads_item_popularity(build_model("youtubednn", store.schema(), embed_dim=8), store)
    config = TrainConfig(model="dssm", neg_mode="listwise", neg_ratio=3, in_batch=False, progress=False)
    source = InMemorySamples(store.samples["train"], seed=0)
    trainer = Trainer(model, store, config.resolve(store.n_items), source)
    batch = next(source.batches(1, 128))
    prep = trainer.prepare(batch, np.random.default_rng(0))
    want = np.array([sql[(u, p)] for u, p in zip(batch.user_code.tolist(), batch.pos.tolist(), strict=True)])
    assert np.array_equal(prep.users["ud.event_count"].numpy(), want[:, 0].astype(np.float32))
    assert not np.array_equal(
        prep.users["ud.event_count"].numpy(),
        store.user_batch(batch.user_code, batch.pos, 8)["ud.event_count"].numpy(),  # the old approximation
    )
    assert prep.items is not None and prep.item_index is not None
    index = prep.item_index.numpy()
    codes = prep.items["item_code"].numpy()[index]
    pops = prep.items["id.popularity"].numpy()[index]
    assert np.array_equal(codes[:, 0], batch.target)
    assert np.array_equal(pops[:, 0], want[:, 1].astype(np.float32))  # the target: the SQL column itself
    negs = codes[:, 1:].ravel()
    ts = np.repeat(batch.event_ts, 3)
    real = negs > 0
    np.testing.assert_allclose(
        pops[:, 1:].ravel()[real], sql_popularity_at(con, negs[real], ts[real]), atol=1e-6
    )


def test_full_softmax_encodes_the_catalogue_at_the_batch_start(con: duckdb.DuckDBPyConnection) -> None:
    store = FeatureStore.load(con)
    torch.manual_seed(0)
    model = build_model("dssm", store.schema(), embed_dim=8)
    trainer = Trainer(
        model, store, TrainConfig(model="dssm", neg_mode="full", progress=False).resolve(store.n_items),
        InMemorySamples(store.samples["train"], seed=0, by_time=True),
    )  # fmt: skip
    batches = list(trainer.source.batches(1, 256))
    spans = [b.event_ts.max() - b.event_ts.min() for b in batches]
    everything = store.samples["train"].event_ts
    assert max(spans) < (everything.max() - everything.min()) / 4, "time-ordered batches span short stretches"
    batch = batches[0]
    prep = trainer.prepare(batch, np.random.default_rng(0))
    assert prep.items is not None
    codes = prep.items["item_code"].numpy()
    start = np.full(len(codes), batch.event_ts.min())
    np.testing.assert_allclose(
        prep.items["id.popularity"].numpy()[1:], sql_popularity_at(con, codes[1:], start[1:]), atol=1e-6
    )
    # never a later event: at most what each target's own sample saw
    assert (prep.items["id.popularity"].numpy()[batch.target] <= batch.item_pop + 1e-7).all()


def test_all_position_units_read_the_sql_count(con: duckdb.DuckDBPyConnection) -> None:
    store = FeatureStore.load(con)
    sql = sql_columns(con, "train")
    torch.manual_seed(0)
    model = build_model("sasrec", store.schema(), embed_dim=8)
    source = SequenceSource(store.samples["train"], seed=0, window=8)
    trainer = Trainer(
        model, store, TrainConfig(model="sasrec", progress=False).resolve(store.n_items), source
    )
    units = next(source.batches(1, 32))
    prep = trainer.prepare(units, np.random.default_rng(0))
    want = [sql[(u, lo)][0] for u, lo in zip(units.user_code.tolist(), units.lo.tolist(), strict=True)]
    assert np.array_equal(prep.users["ud.event_count"].numpy(), np.array(want, dtype=np.float32))


class Spy:
    """Records the batches a model's towers receive."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.users: list[dict] = []
        self.items: list[dict] = []
        user_tower, item_tower = model.user_tower, model.item_tower
        model.user_tower = lambda b: (self.users.append(b), user_tower(b))[1]
        model.item_tower = lambda b: (self.items.append(b), item_tower(b))[1]


def test_validation_and_production_encodings(con: duckdb.DuckDBPyConnection) -> None:
    store = FeatureStore.load(con, splits=("valid",))
    torch.manual_seed(0)
    model = build_model("dssm", store.schema(), embed_dim=8)
    spy = Spy(model)
    valid = store.samples["valid"]
    model_ranks(model, store, valid)  # validation / evaluation
    sql = sql_columns(con, "valid")
    want = np.array(
        [sql[(u, p)][0] for u, p in zip(valid.user_code.tolist(), valid.pos.tolist(), strict=True)]
    )
    got = np.concatenate([b["ud.event_count"].numpy() for b in spy.users])
    assert np.array_equal(got, want.astype(np.float32))
    # evaluation items: training-position popularity (no valid/test target counted)
    n_train = dict(con.execute("SELECT item_code, n_train FROM features.item_popularity").fetchall())
    pops = np.concatenate([b["id.popularity"].numpy() for b in spy.items])
    scale = con.execute(
        "SELECT max_value FROM features.dense_scaling WHERE entity = 'item' AND name = 'popularity'"
    ).fetchone()[0]
    want_items = [np.log(1 + n_train.get(c, 0)) / scale for c in range(store.n_items)]
    np.testing.assert_allclose(pops[1:], want_items[1:], atol=1e-6)

    # production: the current values of features.user_dense / item_dense (all events)
    spy.users.clear()
    spy.items.clear()
    users = np.flatnonzero(store.history_length(np.arange(store.n_users)) > 0)
    encode_users(model, store, users)
    encode_items(model, store)
    current_users = dict(
        con.execute("SELECT user_code, value FROM features.user_dense WHERE name = 'event_count'").fetchall()
    )
    current_items = dict(
        con.execute("SELECT item_code, value FROM features.item_dense WHERE name = 'popularity'").fetchall()
    )
    got_users = np.concatenate([b["ud.event_count"].numpy() for b in spy.users])
    assert np.array_equal(got_users, np.array([current_users[u] for u in users.tolist()], dtype=np.float32))
    got_items = np.concatenate([b["id.popularity"].numpy() for b in spy.items])
    assert np.array_equal(
        got_items[1:], np.array([current_items[i] for i in range(1, store.n_items)], np.float32)
    )
