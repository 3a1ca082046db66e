"""Row-for-row comparison of a Spark-built Parquet table with the DuckDB warehouse's table."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb

# ln()/pow() in the JVM and in C's libm may differ in the last bit of a double
DOUBLE_TOLERANCE = 1e-12


def differences(con: duckdb.DuckDBPyConnection, table: str, folder: Path) -> list[str]:
    """What differs between `table` (DuckDB) and the Parquet files in `folder`: [] when equal.

    Both are read in DuckDB's column types; rows are compared as multisets (EXCEPT ALL both ways),
    doubles within DOUBLE_TOLERANCE (relative) when that is all that differs."""
    spark = f"read_parquet('{folder}/*.parquet')"
    ours = con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {table})").fetchall()
    theirs = [
        r[0] for r in con.execute(f"SELECT column_name FROM (DESCRIBE SELECT * FROM {spark})").fetchall()
    ]
    if [c for c, _ in ours] != theirs:
        return [f"{table}: columns {[c for c, _ in ours]} (DuckDB) vs {theirs} (Spark)"]
    cols = ", ".join(f'"{c}"::{t} AS "{c}"' for c, t in ours)
    a = f"SELECT {cols} FROM {spark}"
    b = f"SELECT {cols} FROM {table}"
    only_spark = con.execute(f"SELECT * FROM ({a} EXCEPT ALL {b}) LIMIT 3").fetchall()
    only_duck = con.execute(f"SELECT * FROM ({b} EXCEPT ALL {a}) LIMIT 3").fetchall()
    if not only_spark and not only_duck:
        return []
    doubles = [i for i, (_, t) in enumerate(ours) if t == "DOUBLE"]
    if doubles:
        key = ", ".join(str(i + 1) for i in [*(j for j in range(len(ours)) if j not in doubles), *doubles])
        rows_a = con.execute(f"{a} ORDER BY {key}").fetchall()
        rows_b = con.execute(f"{b} ORDER BY {key}").fetchall()
        if len(rows_a) == len(rows_b) and all(
            _close(x, y, i in doubles)
            for ra, rb in zip(rows_a, rows_b, strict=True)
            for i, (x, y) in enumerate(zip(ra, rb, strict=True))
        ):
            return []
    return [f"{table}: only in Spark {only_spark}; only in DuckDB {only_duck}"]


def _close(x: object, y: object, is_double: bool) -> bool:
    if is_double and isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=DOUBLE_TOLERANCE, abs_tol=1e-300) or (
            math.isnan(x) and math.isnan(y)
        )
    return x == y
