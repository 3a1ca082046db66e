"""Tiny feature stores with a planted sequential pattern, written straight to `features.*`.

The tables follow sql/README.md exactly, so the readers and trainer are tested against the
contract without the SQL models. Pattern: every user walks the item cycle 1, 2, ..., n_items, 1, ...
from a random start, so the next item is always (last item mod n_items) + 1.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa


def cycle_histories(n_users: int, n_items: int, min_len: int, max_len: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        start = int(rng.integers(0, n_items))
        length = int(rng.integers(min_len, max_len + 1))
        out.append([(start + j) % n_items + 1 for j in range(length)])
    return out


def write_feature_store(
    con: duckdb.DuckDBPyConnection,
    histories: list[list[int]],
    n_items: int,
    *,
    neg_ratio: int = 3,
    seed: int = 0,
    build_id: str = "build-test",
    max_seq_len: int = 8,
) -> None:
    """Write features.* for users 1..len(histories) (user code = index + 1) and items 1..n_items."""
    rng = np.random.default_rng(seed)
    for schema in ("features", "meta", "raw"):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    n_users = len(histories)
    t0 = datetime(2024, 1, 1)

    def put(name: str, table: pa.Table) -> None:
        con.register("_tmp", table)
        con.execute(f"CREATE OR REPLACE TABLE features.{name} AS SELECT * FROM _tmp")
        con.unregister("_tmp")

    put(
        "vocab_user_id",
        pa.table(
            {
                "value": [f"u{c}" for c in range(1, n_users + 1)],
                "code": pa.array(range(1, n_users + 1), pa.int32()),
            }
        ),
    )
    put(
        "vocab_item_id",
        pa.table(
            {
                "value": [f"i{c}" for c in range(1, n_items + 1)],
                "code": pa.array(range(1, n_items + 1), pa.int32()),
            }
        ),
    )
    ts_lists = [[t0 + timedelta(hours=u * 1000 + j) for j in range(len(h))] for u, h in enumerate(histories)]
    put(
        "user_history",
        pa.table(
            {
                "user_code": pa.array(range(1, n_users + 1), pa.int32()),
                "item_codes": pa.array(histories, pa.list_(pa.int32())),
                "ts_list": pa.array(ts_lists, pa.list_(pa.timestamp("us"))),
                "n_events": pa.array([len(h) for h in histories], pa.int64()),
            }
        ),
    )
    # attributes: user 'gender' (2 values) + dense 'age'; item 'parity' + dense 'price' + tags
    put(
        "vocab_attribute",
        pa.table(
            {
                "entity": ["user", "user", "item", "item"],
                "name": ["gender", "gender", "parity", "parity"],
                "value": ["f", "m", "even", "odd"],
                "code": pa.array([1, 2, 1, 2], pa.int32()),
            }
        ),
    )
    put(
        "user_sparse",
        pa.table(
            {
                "user_code": pa.array(range(1, n_users + 1), pa.int32()),
                "name": ["gender"] * n_users,
                "code": pa.array([1 + u % 2 for u in range(n_users)], pa.int32()),
            }
        ),
    )
    put(
        "user_dense",
        pa.table(
            {
                "user_code": pa.array(range(1, n_users + 1), pa.int32()),
                "name": ["age"] * n_users,
                "value": rng.random(n_users),
            }
        ),
    )
    put(
        "item_sparse",
        pa.table(
            {
                "item_code": pa.array(range(1, n_items + 1), pa.int32()),
                "name": ["parity"] * n_items,
                "code": pa.array([1 + i % 2 for i in range(1, n_items + 1)], pa.int32()),
            }
        ),
    )
    put(
        "item_dense",
        pa.table(
            {
                "item_code": pa.array(range(1, n_items + 1), pa.int32()),
                "name": ["price"] * n_items,
                "value": rng.random(n_items),
            }
        ),
    )
    put("vocab_tag", pa.table({"value": ["a", "b", "c"], "code": pa.array([1, 2, 3], pa.int32())}))
    put(
        "item_tags",
        pa.table(
            {
                "item_code": pa.array(range(1, n_items + 1), pa.int32()),
                "tag_codes": pa.array(
                    [[1 + i % 3] if i % 2 else [1, 2 + i % 2] for i in range(1, n_items + 1)],
                    pa.list_(pa.int32()),
                ),
            }
        ),
    )
    rows: dict[str, list[tuple[int, int, int, datetime]]] = {"train": [], "valid": [], "test": []}
    for u, (h, ts) in enumerate(zip(histories, ts_lists, strict=True), start=1):
        n = len(h)
        if n < 3:
            continue
        rows["test"].append((u, h[n - 1], n - 1, ts[n - 1]))
        rows["valid"].append((u, h[n - 2], n - 2, ts[n - 2]))
        rows["train"] += [(u, h[p], p, ts[p]) for p in range(1, n - 2)]
    n_train = np.zeros(n_items + 1)
    n_all = np.zeros(n_items + 1)
    for _, item, _, _ in rows["train"]:
        n_train[item] += 1
    for h in histories:
        for item in h:
            n_all[item] += 1
    for split, data in rows.items():
        put(
            f"samples_{split}",
            pa.table(
                {
                    "user_code": pa.array([r[0] for r in data], pa.int32()),
                    "target_item_code": pa.array([r[1] for r in data], pa.int32()),
                    "pos": pa.array([r[2] for r in data], pa.int32()),
                    "event_ts": pa.array([r[3] for r in data], pa.timestamp("us")),
                    "user_event_count": pa.array([r[2] for r in data], pa.int64()),
                    "item_popularity": pa.array([0 for _ in data], pa.int64()),
                    "user_event_count_scaled": pa.array([0.0 for _ in data]),
                    "item_popularity_scaled": pa.array([0.0 for _ in data]),
                }
            ),
        )
    put(
        "item_popularity",
        pa.table(
            {
                "item_code": pa.array(range(1, n_items + 1), pa.int32()),
                "n_events": pa.array(n_all[1:].astype(int), pa.int64()),
                "n_train": pa.array(n_train[1:].astype(int), pa.int64()),
            }
        ),
    )
    # event-derived dense columns as the SQL models write them: current counts, log1p + min-max
    max_user = float(np.log1p(max(len(h) for h in histories)))
    max_item = float(np.log1p(n_all.max()))
    con.execute(
        "CREATE OR REPLACE TABLE features.dense_scaling AS SELECT * FROM (VALUES "
        "('user', 'age', 'identity', 0.0, 1.0), ('item', 'price', 'identity', 0.0, 1.0), "
        f"('user', 'event_count', 'log1p', 0.0, {max_user}), "
        f"('item', 'popularity', 'log1p', 0.0, {max_item})) "
        "t(entity, name, transform, min_value, max_value)"
    )
    con.execute(
        "INSERT INTO features.user_dense SELECT user_code, 'event_count', ln(1 + n_events) / ? "
        "FROM features.user_history",
        [max_user],
    )
    con.execute(
        "INSERT INTO features.item_dense SELECT item_code, 'popularity', ln(1 + n_events) / ? "
        "FROM features.item_popularity",
        [max_item],
    )
    negs = []
    for u, _, p, _ in rows["train"]:
        pos_items = set(histories[u - 1])
        pool = [i for i in range(1, n_items + 1) if i not in pos_items] or [0]
        for r in range(1, neg_ratio + 1):
            negs.append((u, p, r, int(rng.choice(pool))))
    put(
        "negatives_train",
        pa.table(
            {
                "user_code": pa.array([r[0] for r in negs], pa.int32()),
                "pos": pa.array([r[1] for r in negs], pa.int32()),
                "neg_rank": pa.array([r[2] for r in negs], pa.int32()),
                "neg_item_code": pa.array([r[3] for r in negs], pa.int32()),
            }
        ),
    )
    con.execute("""CREATE TABLE IF NOT EXISTS meta.builds (build_id VARCHAR PRIMARY KEY, started_at TIMESTAMP,
        finished_at TIMESTAMP, status VARCHAR, params JSON, models JSON, report JSON, error VARCHAR)""")
    con.execute("DELETE FROM meta.builds WHERE build_id = ?", [build_id])
    con.execute(
        "INSERT INTO meta.builds VALUES (?, now(), now(), 'success', ?, '{}', '{}', NULL)",
        [build_id, json.dumps({"max_seq_len": max_seq_len, "min_seq_len": 3})],
    )
