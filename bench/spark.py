"""Benchmark: build-features on DuckDB vs the same SQL models on Spark local[N], side by side.

    RECHUB_THREADS=2 python bench/spark.py --events 1000000
    RECHUB_THREADS=2 python bench/spark.py --events 1000000 10000000 --memory-limit 8GB

Per size: generate a log (seed 0, the shape of bench/featgen.py), ingest it, build with DuckDB
(`--threads`), export the raw batches to a lake, then build on Spark local[threads] (session start
timed apart) and check that the two engines' tables have the same row counts (the tests compare
them row by row on small logs). Results go to bench/out/spark.json (one entry per size). Work
files go under --work (default bench/out/work, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from featgen import sizes_for  # noqa: E402


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants, from /proc (Linux).

    Spark's work runs in the JVM, a child of this process that getrusage does not see until it
    exits; on a shared machine CPU seconds read better than wall time.
    """
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, (0, 0.0))[1]
        todo.extend(child for child, (parent, _) in stats.items() if parent == current)
    return total


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_size(n_events: int, work: Path, threads: int, memory_limit: str | None) -> dict[str, Any]:
    import duckdb

    from rechub_store.data.build import BuildParams, build_features
    from rechub_store.data.generate import generate_into
    from rechub_store.spark.engine import build_features_spark
    from rechub_store.spark.lake import export_raw
    from rechub_store.spark.manifest import read, table_path
    from rechub_store.spark.session import spark_session
    from rechub_store.warehouse import Warehouse

    folder = work / f"spark-{n_events}"
    shutil.rmtree(folder, ignore_errors=True)
    n_users, n_items = sizes_for(n_events)
    wh = Warehouse(folder / "wh" / "rechub.duckdb", threads=threads, memory_limit=memory_limit)
    out: dict[str, Any] = {"events": n_events, "users": n_users, "items": n_items, "threads": threads}
    with wh.session() as con:
        t0 = time.perf_counter()
        generate_into(con, folder / "gen", n_users=n_users, n_items=n_items, n_events=n_events, seed=0)
        out["generate_ingest_seconds"] = round(time.perf_counter() - t0, 2)
        t0, c0 = time.perf_counter(), self_cpu_seconds()
        build_features(con, BuildParams())
        out["duckdb_build_seconds"] = round(time.perf_counter() - t0, 2)
        out["duckdb_build_cpu_seconds"] = round(self_cpu_seconds() - c0, 2)
        t0 = time.perf_counter()
        export_raw(con, folder / "lake")
        out["lake_export_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    spark = spark_session(threads=threads, conf={"spark.driver.memory": "8g"})
    out["spark_session_seconds"] = round(time.perf_counter() - t0, 2)
    jvm = spark.sparkContext._gateway.proc.pid  # the JVM's launcher; the JVM is it or its child
    t0, c0 = time.perf_counter(), tree_cpu_seconds(jvm) + self_cpu_seconds()
    result = build_features_spark(spark, folder / "lake", BuildParams())
    out["spark_build_seconds"] = round(time.perf_counter() - t0, 2)
    out["spark_build_cpu_seconds"] = round(tree_cpu_seconds(jvm) + self_cpu_seconds() - c0, 2)
    cpu_ratio = out["spark_build_cpu_seconds"] / out["duckdb_build_cpu_seconds"]
    out["ratio_cpu_spark_over_duckdb"] = round(cpu_ratio, 1)
    out["load_average_after"] = os.getloadavg()
    out["spark_models"] = result.models
    out["ratio_spark_over_duckdb"] = round(out["spark_build_seconds"] / out["duckdb_build_seconds"], 1)
    published = read(folder / "lake")
    assert published is not None
    con = duckdb.connect(str(wh.path), read_only=True)
    mismatched = []
    for table in published["tables"]:
        ours = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
        path = table_path(folder / "lake", published, table)
        theirs = con.execute(f"SELECT count(*) FROM read_parquet('{path}/*.parquet')").fetchone()[0]  # type: ignore[index]
        if ours != theirs:
            mismatched.append((table, ours, theirs))
    out["row_counts_equal"] = not mismatched
    out["row_count_mismatches"] = mismatched
    con.close()
    spark.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "work")
    parser.add_argument("--memory-limit", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    args = parser.parse_args()
    threads = int(os.environ.get("RECHUB_THREADS", "2"))
    path = ROOT / "bench" / "out" / "spark.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for n in args.events:
        res = run_size(n, args.work, threads, args.memory_limit)
        res["machine"] = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
        res["date"] = time.strftime("%Y-%m-%d")
        results[str(n)] = res
        path.write_text(json.dumps(results, indent=1))
        print(
            f"{n:>12,} events: DuckDB {res['duckdb_build_seconds']:.1f} s, Spark local[{threads}] "
            f"{res['spark_build_seconds']:.1f} s (+{res['spark_session_seconds']:.1f} s session start), "
            f"{res['ratio_spark_over_duckdb']}x (CPU seconds {res['ratio_cpu_spark_over_duckdb']}x); "
            f"row counts equal: {res['row_counts_equal']}",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(args.work / f"spark-{n}", ignore_errors=True)


if __name__ == "__main__":
    main()
