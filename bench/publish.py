"""Benchmark: publish N users x K recommendation rows to a local PostgreSQL.

Measures the COPY rate (rows/s), the whole publish (COPY + keys/indexes + history + metadata), and
how long readers are blocked by the swap: a reader thread keeps running point queries against
`recommendations` during the second publish and records every latency; the swap window is when the
publish holds the view lock (its `swap_seconds`).

    python bench/publish.py --users 100000 --k 100           # 10M rows
    python bench/publish.py --users 1000000 --k 100          # the 100M-row target
    python bench/publish.py --url postgresql://user@host/db  # an existing server instead of a local one

Without --url a throwaway cluster is started (tests/pgserver.py) with durable
settings (fsync on) and writes JSON to bench/out/publish.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from rechub_store.publish.server import mask_url, publish_to_url  # noqa: E402
from rechub_store.settings import Settings  # noqa: E402
from rechub_store.warehouse import Warehouse  # noqa: E402

PG_SETTINGS = {  # durable (fsync on); sized so checkpoints do not dominate a bulk load
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "1GB",
    "wal_compression": "on",
}


def make_run(warehouse: Warehouse, run_id: str, users: int, k: int, seed: int) -> None:
    """The working-copy tables as the scorer leaves them: `recommendations` = this run only."""
    cols = (
        "user_id VARCHAR, item_id VARCHAR, rank INTEGER, score DOUBLE, run_id VARCHAR, "
        "model_run_id VARCHAR, generated_at TIMESTAMP"
    )
    with warehouse.session() as con:
        con.execute(f"CREATE TABLE IF NOT EXISTS main.recommendations_history ({cols})")
        con.execute(
            "CREATE TABLE IF NOT EXISTS main.evaluation_metrics (run_id VARCHAR, model_run_id VARCHAR, "
            'split VARCHAR, metric VARCHAR, k INTEGER, value DOUBLE, n_users BIGINT, "index" VARCHAR, '
            "created_at TIMESTAMP)"
        )
        con.execute(f"""
            CREATE OR REPLACE TABLE main.recommendations AS
            SELECT 'u' || (i // {k}) AS user_id,
                   'i' || ((i * 7919 + {seed}) % 100000) AS item_id,
                   CAST(i % {k} + 1 AS INTEGER) AS rank,
                   1.0 - (i % {k}) / {k} + {seed} / 1000 AS score,
                   '{run_id}' AS run_id, 'm-bench' AS model_run_id,
                   TIMESTAMP '2026-01-01' + INTERVAL ({seed}) DAY AS generated_at
            FROM range({users * k}) t(i)""")
        con.execute(
            "INSERT INTO main.evaluation_metrics SELECT ?, 'm-bench', 'test', m, 10, 0.1, ?, 'annoy', now() "
            "FROM (VALUES ('recall'), ('ndcg')) v(m)",
            [run_id, users],
        )


def reader(url: str, users: int, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    """Point queries (one user's top-k through the primary key) as fast as they come back."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    query = sa.text("SELECT count(*) FROM recommendations WHERE user_id = :u")
    i = 0
    with engine.connect() as conn:
        while not stop.is_set():
            t0 = time.perf_counter()
            conn.execute(query, {"u": f"u{(i * 7919) % users}"}).scalar()
            conn.commit()
            samples.append((t0, time.perf_counter() - t0))
            i += 1
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--url", default=None, help="target URL (default: a throwaway local cluster)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "publish.json"))
    ap.add_argument("--workdir", default=None, help="where the warehouse (and local cluster) go")
    args = ap.parse_args()
    os.environ.setdefault("RECHUB_THREADS", "2")

    server = None
    if args.url is None:
        from pgserver import LocalPostgres

        server = LocalPostgres(PG_SETTINGS).start()
        url = server.url
    else:
        url = args.url
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rechub-bench-publish-"))
    warehouse = Settings.from_env(warehouse_path=work / "wh" / "rechub.duckdb").warehouse()
    rows = args.users * args.k
    try:
        t0 = time.perf_counter()
        make_run(warehouse, "bench-1", args.users, args.k, seed=1)
        gen_s = time.perf_counter() - t0
        print(f"generated {rows:,} rows in {gen_s:.1f}s; publishing to {mask_url(url)}", flush=True)
        first = publish_to_url(warehouse, url, retries=0)
        print(f"run 1: {first.seconds:.1f}s total, COPY {first.rows_per_second:,.0f} rows/s", flush=True)

        make_run(warehouse, "bench-2", args.users, args.k, seed=2)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        thread = threading.Thread(target=reader, args=(url, args.users, stop, samples))
        thread.start()
        time.sleep(1.0)
        started = time.perf_counter()
        second = publish_to_url(warehouse, url, retries=0)
        ended = time.perf_counter()
        time.sleep(1.0)
        stop.set()
        thread.join()
        swap_from = ended - second.swap_seconds - 0.05
        during = [lat for t, lat in samples if started <= t <= ended]
        at_swap = [lat for t, lat in samples if t + lat >= swap_from and t <= ended]
        print(
            f"run 2: {second.seconds:.1f}s total, COPY {second.rows_per_second:,.0f} rows/s, "
            f"swap {second.swap_seconds * 1000:.1f} ms, "
            f"worst reader query {max(during or [0]) * 1000:.1f} ms",
            flush=True,
        )
        result = {
            "rows": rows,
            "users": args.users,
            "k": args.k,
            "target": mask_url(url),
            "pg_settings": PG_SETTINGS if server else "external server",
            "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "generate_seconds": round(gen_s, 2),
            "runs": [
                {k: v for k, v in r.as_dict().items() if k not in ("target", "dropped_runs")}
                for r in (first, second)
            ],
            "copy_rows_per_second": round(second.rows_per_second),
            "publish_rows_per_second": round(rows / second.seconds),
            "swap_seconds": round(second.swap_seconds, 4),
            "reader": {
                "queries_during_publish": len(during),
                "median_ms": round(statistics.median(during) * 1000, 2) if during else None,
                "max_ms_during_publish": round(max(during) * 1000, 2) if during else None,
                "max_ms_around_swap": round(max(at_swap) * 1000, 2) if at_swap else None,
            },
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if server is not None:
            server.destroy()
        if args.workdir is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
