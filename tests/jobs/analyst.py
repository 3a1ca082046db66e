"""An analyst in another process: holds a read-only connection open and re-queries on demand.

Usage: python analyst.py PATH duckdb|sqlalchemy. Prints one JSON line per query
({"rows": n, "runs": [...]}) at start and for every line read on stdin; exits on EOF.
Tests use it to hold the analytics file open across a nightly run.
"""

from __future__ import annotations

import json
import sys

QUERY = "SELECT count(*), list(DISTINCT run_id ORDER BY run_id) FROM recommendations"


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "duckdb":
        import duckdb

        con = duckdb.connect(path, read_only=True)

        def query() -> tuple:
            return con.execute(QUERY).fetchone()
    else:
        import sqlalchemy as sa

        engine = sa.create_engine(f"duckdb:///{path}?access_mode=read_only")
        conn = engine.connect()

        def query() -> tuple:
            return tuple(conn.execute(sa.text(QUERY)).one())

    def report() -> None:
        try:
            n, runs = query()
            print(json.dumps({"rows": n, "runs": list(runs)}), flush=True)
        except Exception as exc:  # the test asserts on this
            print(json.dumps({"error": str(exc)}), flush=True)

    report()
    for _ in sys.stdin:
        report()


if __name__ == "__main__":
    main()
