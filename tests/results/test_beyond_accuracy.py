"""The beyond-accuracy SQL models (`sql/metrics/`) against plain-Python definitions on random lists,
and the runner that keeps them out of the feature build."""

from __future__ import annotations

import math
from itertools import combinations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rechub_store.data.sqlmodels import METRICS_DIR, discover, run_metric_models
from rechub_store.results.tables import previous_list_run, write_evaluation_lists

KS = [2, 4]
N_ITEMS = 12  # catalogue codes 1..12


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute("CREATE SCHEMA features; CREATE SCHEMA meta")
    return connection


def setup_catalogue(con: duckdb.DuckDBPyConnection, n_train: list[int], tags: list[list[int]]) -> None:
    def put(name: str, table: pa.Table) -> None:
        con.register("_t", table)
        con.execute(f"CREATE OR REPLACE TABLE features.{name} AS SELECT * FROM _t")
        con.unregister("_t")

    codes = list(range(1, N_ITEMS + 1))
    put("vocab_item_id", pa.table({"value": [f"i{c}" for c in codes], "code": pa.array(codes, pa.int32())}))
    with_events = [c for c in codes if n_train[c - 1] >= 0]  # -1: an item without events
    put(
        "item_popularity",
        pa.table(
            {
                "item_code": pa.array(with_events, pa.int32()),
                "n_events": [n_train[c - 1] + 1 for c in with_events],
                "n_train": [n_train[c - 1] for c in with_events],
            }
        ),
    )
    put(
        "item_tags",
        pa.table(
            {
                "item_code": pa.array([c for c in codes if tags[c - 1]], pa.int32()),
                "tag_codes": pa.array(
                    [sorted(set(tags[c - 1])) for c in codes if tags[c - 1]], pa.list_(pa.int32())
                ),
            }
        ),
    )


def lists_strategy(n_users: int) -> st.SearchStrategy:
    one = st.permutations(list(range(1, N_ITEMS + 1))).map(lambda p: p[: max(KS)])
    return st.lists(one, min_size=n_users, max_size=n_users)


def reference(
    lists: dict[int, list[int]],
    before: dict[int, list[int]] | None,
    n_train: list[int],
    tags: list[list[int]],
    seed_pairs: list[tuple[int, int]],
    k: int,
) -> dict[str, float]:
    counts = {c: max(n_train[c - 1], 0) for c in range(1, N_ITEMS + 1)}
    total = sum(counts.values())
    top = {u: lst[:k] for u, lst in lists.items()}
    slots = [i for lst in top.values() for i in lst]
    recs = sorted(sum(1 for i in slots if i == c) for c in counts)
    n = len(recs)
    gini = 2 * sum((j + 1) * x for j, x in enumerate(recs)) / (n * sum(recs)) - (n + 1) / n
    ordered = sorted(counts.values())

    def percentile(c: int) -> float:  # percent_rank: (rank - 1) / (n - 1), rank of the first equal value
        return ordered.index(counts[c]) / (n - 1)

    def jaccard_distance(a: int, b: int) -> float:
        ta, tb = set(tags[a - 1]), set(tags[b - 1])
        return 1 - len(ta & tb) / len(ta | tb)

    per_list = []
    for lst in top.values():
        pairs = [(a, b) for a, b in combinations(lst, 2) if tags[a - 1] and tags[b - 1]]
        if pairs:
            per_list.append(sum(jaccard_distance(a, b) for a, b in pairs) / len(pairs))
    out = {
        "coverage": len(set(slots)) / N_ITEMS,
        "gini": gini,
        "popularity_percentile": sum(percentile(i) for i in slots) / len(slots),
        "novelty": sum(-math.log2((counts[i] + 1) / (total + N_ITEMS)) for i in slots) / len(slots),
        "personalisation": 1
        - sum(len(set(top[a]) & set(top[b])) / k for a, b in seed_pairs) / len(seed_pairs),
    }
    if per_list:
        out["diversity"] = sum(per_list) / len(per_list)
    if before is not None:
        common = [u for u in top if u in before]
        out["overlap"] = sum(len(set(top[u]) & set(before[u][:k])) / k for u in common) / len(common)
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    n_train=st.lists(st.integers(-1, 30), min_size=N_ITEMS, max_size=N_ITEMS),
    tags=st.lists(st.lists(st.integers(1, 5), max_size=3), min_size=N_ITEMS, max_size=N_ITEMS),
    seed=st.integers(0, 10_000),
)
def test_sql_metrics_equal_python_definitions(
    con: duckdb.DuckDBPyConnection, data: st.DataObject, n_train: list[int], tags: list[list[int]], seed: int
) -> None:
    setup_catalogue(con, n_train, tags)
    con.execute("DROP TABLE IF EXISTS main.evaluation_lists")
    users = np.arange(1, 8)
    now = {src: data.draw(lists_strategy(len(users))) for src in ("model", "popularity")}
    before = {"model": data.draw(lists_strategy(5)), "popularity": None}  # 5 of the users in the earlier run
    write_evaluation_lists(
        con, "r1", [("model", "m0", "annoy", users[:5], np.array(before["model"]), np.ones((5, max(KS))))]
    )
    assert previous_list_run(con, "r2") == "r1"
    lists = [
        ("model", "m1", "annoy", users, np.array(now["model"]), np.zeros((len(users), max(KS)))),
        (
            "popularity",
            "popularity",
            "exact",
            users,
            np.array(now["popularity"]),
            np.zeros((len(users), max(KS))),
        ),
    ]
    write_evaluation_lists(con, "r2", lists, keep="r1")
    out = run_metric_models(con, variables={"run_id": "r2", "previous_run_id": "r1", "ks": KS, "seed": seed})
    got = {(r["model_run_id"], r["metric"], r["k"]): r["value"] for rows in out.values() for r in rows}
    assert {
        r["n_users"] for rows in out.values() for r in rows if r["metric"] in ("coverage", "novelty")
    } == {7}
    # the seeded pairs, as the SQL forms them (its hash order), checked to be disjoint and complete
    order = {
        src: [u for (u,) in con.execute(
            "SELECT user_code FROM (SELECT DISTINCT user_code FROM metrics.lists WHERE source = ?) "
            "ORDER BY hash(user_code, ?::BIGINT), user_code", [src, seed]).fetchall()]
        for src in ("model", "popularity")
    }  # fmt: skip
    for src, model_run_id in (("model", "m1"), ("popularity", "popularity")):
        mine = {int(u): now[src][j] for j, u in enumerate(users)}
        earlier = None if before[src] is None else {int(u): before[src][j] for j, u in enumerate(users[:5])}
        pairs = [(order[src][j], order[src][j + 1]) for j in range(0, len(order[src]) - 1, 2)]
        for k in KS:
            want = reference(mine, earlier, n_train, tags, pairs, k)
            for metric, value in want.items():
                assert math.isclose(got[(model_run_id, metric, k)], value, abs_tol=1e-9), (src, metric, k)
            assert ((model_run_id, "overlap", k) in got) == (earlier is not None)
            assert ((model_run_id, "diversity", k) in got) == ("diversity" in want)


def test_metric_models_are_not_feature_models() -> None:
    features = discover()
    metrics = discover(only=METRICS_DIR)
    assert metrics and not any(name.startswith("metrics.") for name in features)
    assert all(name.startswith("metrics.") for name in metrics)
    assert {"metrics.coverage", "metrics.gini", "metrics.overlap", "metrics.lists"} <= set(metrics)


def test_metric_values_do_not_depend_on_the_order_rows_are_added_in(con: duckdb.DuckDBPyConnection) -> None:
    """The same lists stored in another order give the same bits: the means add exact decimals or
    integer counts, so neither row order nor how DuckDB's threads split the rows changes the last
    digit (a double `avg` does; an incremental and a full night that rank alike must publish equal
    metrics)."""
    rng = np.random.default_rng(7)
    setup_catalogue(
        con,
        n_train=[int(x) for x in rng.integers(0, 10_000, N_ITEMS)],
        tags=[sorted(set(rng.integers(1, 9, 3).tolist())) for _ in range(N_ITEMS)],
    )
    users = np.arange(1, 2001)
    now = np.array([rng.permutation(N_ITEMS)[: max(KS)] + 1 for _ in users])
    before = np.array([rng.permutation(N_ITEMS)[: max(KS)] + 1 for _ in users])
    variables = {"run_id": "r2", "previous_run_id": "r1", "ks": KS, "seed": 3}
    values = []
    for order in (np.arange(len(users)), rng.permutation(len(users))):
        con.execute("DROP TABLE IF EXISTS main.evaluation_lists")
        scores = np.zeros(now.shape)
        write_evaluation_lists(con, "r1", [("model", "m0", "exact", users[order], before[order], scores)])
        write_evaluation_lists(
            con, "r2", [("model", "m0", "exact", users[order], now[order], scores)], keep="r1"
        )
        out = run_metric_models(con, variables=variables)
        values.append({(r["metric"], r["k"]): r["value"] for rows in out.values() for r in rows})
    assert {m for m, _ in values[0]} >= {"novelty", "popularity_percentile", "overlap", "diversity"}
    assert values[0] == values[1]
