"""Benchmark: what changing an incremental model's table in place costs in storage over many nights,
beside rewriting it whole and swapping (what incremental builds did before). Two DuckDB files,
one table each (`--rows` rows of `--users` users); every night the rows of `--churn` of the users
are replaced by new ones: `inplace` deletes them and inserts the new rows in one transaction,
`rewrite` creates a new table of the kept and new rows, drops the old one and renames, and
`build` does what the build runner does (`sqlmodels.needs_rewrite`): in place, or a rewrite once
the table stores more than `REWRITE_DEAD_SHARE` deleted rows per live row. All checkpoint after
each night.

    python bench/inplace.py --nights 60

Prints and writes (bench/out/inplace.json) per night and way: seconds, rows (live, and stored with
the deleted ones not yet vacuumed), row groups, used and free blocks and the file size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import duckdb

from rechub_store.data.sqlmodels import needs_rewrite

ROOT = Path(__file__).resolve().parent.parent


def night(con: duckdb.DuckDBPyConnection, way: str, n: int, users: int, changed: int, per_user: int) -> float:
    """Replace the rows of `changed` users (a different set every night) with `per_user` new rows each."""
    keys = f"SELECT ((i * 7919 + {n} * 104729) % {users})::INTEGER AS user_code FROM range({changed}) r(i)"
    new = (
        f"SELECT k.user_code, ({n}::BIGINT << 32) + j AS x, (j * 7 % 1000)::INTEGER AS y "
        f"FROM ({keys}) k, range({per_user}) r(j)"
    )
    t0 = time.perf_counter()
    if way == "build":
        way = "rewrite" if needs_rewrite(con, "main.t") else "inplace"
    con.execute("BEGIN")
    if way == "inplace":
        con.execute(f"DELETE FROM t WHERE user_code IN ({keys})")
        con.execute(f"INSERT INTO t {new}")
    else:
        con.execute(f"CREATE TABLE t_new AS SELECT * FROM t WHERE user_code NOT IN ({keys}) UNION ALL {new}")
        con.execute("DROP TABLE t")
        con.execute("ALTER TABLE t_new RENAME TO t")
    con.execute("COMMIT")
    con.execute("CHECKPOINT")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--churn", type=float, default=0.01, help="share of users whose rows change each night")
    ap.add_argument("--nights", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "inplace.json")
    args = ap.parse_args()
    changed = max(1, int(args.users * args.churn))
    per_user = args.rows // args.users
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "nights": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cons = {}
        for way in ("inplace", "rewrite", "build"):
            con = duckdb.connect(str(Path(tmp) / f"{way}.duckdb"))
            con.execute(f"SET threads = {args.threads}")
            # rows of one user spread over the whole table, as in the feature tables
            con.execute(
                f"CREATE TABLE t AS SELECT (i % {args.users})::INTEGER AS user_code, i::BIGINT AS x, "
                f"(i * 7 % 1000)::INTEGER AS y FROM range({args.rows}) r(i)"
            )
            con.execute("CHECKPOINT")
            cons[way] = con
        for n in range(1, args.nights + 1):
            for way, con in cons.items():
                seconds = night(con, way, n, args.users, changed, per_user)
                size = con.execute("PRAGMA database_size").fetchone()
                rows = con.execute("SELECT count(*) FROM t").fetchone()
                # rows stored (deleted ones not yet vacuumed included) and row groups
                stored = con.execute(
                    "SELECT estimated_size FROM duckdb_tables() WHERE table_name = 't'"
                ).fetchone()
                groups = con.execute(
                    "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('t')"
                ).fetchone()
                row = {
                    "seconds": round(seconds, 3),
                    "rows": rows[0] if rows else None,
                    "rows_stored": stored[0] if stored else None,
                    "row_groups": groups[0] if groups else None,
                    "used_blocks": size[4] if size else None,
                    "free_blocks": size[5] if size else None,
                    "file_mib": round((Path(tmp) / f"{way}.duckdb").stat().st_size / 2**20, 1),
                }
                result["nights"].setdefault(way, []).append(row)
                if n == 1 or n % 10 == 0:
                    print(n, way, row, flush=True)
        for con in cons.values():
            con.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
