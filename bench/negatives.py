"""Benchmark: `features.negatives_train` variants side by side on a built warehouse: seconds, and
how far each one's negatives are from the shares the sampler promises.

    git show b710fd2:sql/features/splits/negatives_train.sql > /tmp/negatives_before.sql
    RECHUB_THREADS=2 python bench/negatives.py --warehouse bench/out/work/wh_1000000/rechub.duckdb \
        --sql sql/features/splits/negatives_train.sql /tmp/negatives_before.sql --repeat 3

Each variant's SELECT runs with the default build's parameters on the warehouse opened read-only,
into a temporary table (the variants alternate, `--repeat` times; median seconds). Then, per
variant, the share of each item among all its negatives is compared with the expected share: a
sample whose user had seen items of weight mass S at its position should draw item i (unseen
there) r w_i / (W (1 - S)) times on average (r negatives per sample), so item i's expected count
is the sum of that over the samples where it is unseen. `tv_to_expected` is the total variation
distance (0..1) between the normalised realised and expected counts; `tv_between_seeds` measures
the same distance between two seeds of one variant, the noise floor. Results go to
bench/out/negatives.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rechub_store.data.build import BuildParams  # noqa: E402

# expected count of each item among the negatives of all training samples (see the docstring)
EXPECTED = """
CREATE OR REPLACE TEMP TABLE expected AS
WITH w AS (
    SELECT item_code, weight / sum(weight) OVER () AS p FROM features.negative_sampler WHERE weight > 0
),
first_seen AS (
    SELECT e.user_code, e.item_code, min(e.seq) AS first_seq, any_value(coalesce(w.p, 0)) AS p
    FROM features.events e LEFT JOIN w USING (item_code) GROUP BY e.user_code, e.item_code
),
-- the seen mass at each position: the running sum of p over the user's first events with an item
running AS (
    SELECT e.user_code, e.seq AS pos,
        sum(CASE WHEN f.first_seq = e.seq THEN f.p ELSE 0 END) OVER (PARTITION BY e.user_code ORDER BY e.seq)
            AS seen_mass
    FROM features.events e JOIN first_seen f USING (user_code, item_code)
),
mass AS (
    SELECT s.user_code, s.pos, r.seen_mass FROM features.samples_train s JOIN running r USING (user_code, pos)
),
-- 1 / (1 - S) per sample, and per user its sum over the samples at or after each position
inv AS (
    SELECT user_code, pos,
        CASE WHEN seen_mass < 1 - 1e-12 THEN 1 / (1 - seen_mass) ELSE 0 END AS g
    FROM mass
),
suffix AS (
    SELECT user_code, pos, sum(g) OVER (PARTITION BY user_code ORDER BY pos DESC) AS g_from
    FROM inv
),
-- per (user, item seen): the samples at or after its first event, where it may not be drawn (a
-- user's training positions are consecutive from 1)
blocked AS (
    SELECT f.item_code, sum(x.g_from) AS g
    FROM first_seen f
    JOIN suffix x ON x.user_code = f.user_code AND x.pos = greatest(f.first_seq, 1)
    GROUP BY f.item_code
)
SELECT w.item_code, $ratio * w.p * ((SELECT sum(g) FROM inv) - coalesce(b.g, 0)) AS expected
FROM w LEFT JOIN blocked b USING (item_code)
"""

COUNTS = "SELECT neg_item_code AS item_code, count(*) AS n FROM {table} GROUP BY ALL"


def tv_distance(con: duckdb.DuckDBPyConnection, left: str, right: str) -> float:
    """Total variation distance between two item -> count queries, each normalised to sum 1."""
    sql = f"""
        WITH a AS ({left}), b AS ({right}),
        p AS (SELECT item_code, coalesce(a.n, 0) / (SELECT sum(n) FROM a) AS pa,
                  coalesce(b.n, 0) / (SELECT sum(n) FROM b) AS pb
              FROM a FULL OUTER JOIN b USING (item_code))
        SELECT 0.5 * sum(abs(pa - pb)) FROM p"""
    (value,) = con.execute(sql).fetchone()  # type: ignore[misc]
    return float(value)


def run(con: duckdb.DuckDBPyConnection, sql: str, table: str) -> float:
    t0 = time.perf_counter()
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql}")
    return time.perf_counter() - t0


def set_params(con: duckdb.DuckDBPyConnection, seed: int) -> None:
    values = BuildParams(seed=seed).variables()
    values.update(partition=0, n_partitions=1, incremental=False)
    for name, value in values.items():
        con.execute(f"SET VARIABLE {name} = ?", [value])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warehouse", type=Path, required=True)
    ap.add_argument("--sql", type=Path, nargs="+", required=True, help="negatives_train variants")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "negatives.json")
    args = ap.parse_args()

    threads = int(os.environ.get("RECHUB_THREADS", "2"))
    con = duckdb.connect(str(args.warehouse), read_only=True)
    con.execute(f"SET threads = {threads}")
    con.execute("SET preserve_insertion_order = false")  # as the build runs its models
    sqls = {str(p): p.read_text() for p in args.sql}
    seconds: dict[str, list[float]] = {name: [] for name in sqls}
    set_params(con, BuildParams().seed)
    for _ in range(args.repeat):
        for name, sql in sqls.items():
            seconds[name].append(run(con, sql, "negatives"))
    con.execute(EXPECTED, {"ratio": BuildParams().effective_neg_ratio})
    results: dict[str, Any] = {}
    for name, sql in sqls.items():
        run(con, sql, "negatives")
        set_params(con, BuildParams().seed + 1)
        run(con, sql, "negatives_other_seed")
        set_params(con, BuildParams().seed)
        (rows,) = con.execute("SELECT count(*) FROM negatives").fetchone()  # type: ignore[misc]
        realised = COUNTS.format(table="negatives")
        to_expected = tv_distance(con, realised, "SELECT item_code, expected AS n FROM expected")
        between_seeds = tv_distance(con, realised, COUNTS.format(table="negatives_other_seed"))
        r = results[name] = {
            "seconds": seconds[name],
            "median_seconds": statistics.median(seconds[name]),
            "rows": rows,
            "tv_to_expected": round(to_expected, 5),
            "tv_between_seeds": round(between_seeds, 5),
        }
        times = [round(x, 2) for x in seconds[name]]
        print(
            f"{name}: median {r['median_seconds']:.2f} s {times}, rows {rows:,}, TV to expected shares "
            f"{r['tv_to_expected']:.4f}, between two seeds {r['tv_between_seeds']:.4f}",
            flush=True,
        )
    summary = {"warehouse": str(args.warehouse), "threads": threads, "variants": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
