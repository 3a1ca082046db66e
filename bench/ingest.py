"""Benchmark: `ingest interactions` of a generated CSV (and Parquet) file, and `ingest movielens` of
the same log as an ml-1m `ratings.dat`, optionally side by side with another source tree of
rechub-store (e.g. an export of `main`) on the same file.

    RECHUB_THREADS=2 python bench/ingest.py --events 1000000 --formats movielens,csv,parquet
    git archive main | tar -x -C /tmp/rechub-main
    RECHUB_THREADS=2 python bench/ingest.py --events 1000000 --compare /tmp/rechub-main --repeat 5

Each measurement runs in its own child process (a fresh in-memory DuckDB, `--threads` threads)
and times only the ingest call (wall and CPU seconds). Variants alternate run by run so that the
shared machine's noise hits both alike; medians and the ratio are printed and written to
bench/out/ingest.json. Generated files are kept under --work (default bench/out/work).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, resource, sys, time
src, path = sys.argv[1], sys.argv[2]
if src:
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, src)
import duckdb
from rechub_store.data.ingest import ingest_interactions
from rechub_store.data.movielens import ingest_movielens
from pathlib import Path
assert not src or __import__("rechub_store").__file__.startswith(src)
con = duckdb.connect()
con.execute(f"SET threads = {int(sys.argv[3])}")
con.execute("SET enable_progress_bar = false")
con.execute("CREATE SCHEMA raw")
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0, c0 = time.perf_counter(), cpu()
if Path(path).is_dir():
    r = ingest_movielens(con, path, max_reject_ratio=None)[0]
else:
    r = ingest_interactions(con, path, user_col="user_id", item_col="item_id", time_col="ts",
                            rating_col="rating", max_reject_ratio=None)
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": cpu() - c0,
                  "rows_read": r.rows_read, "rows_accepted": r.rows_accepted}))
"""


def _generate(work: Path, events: int, fmt: str) -> Path:
    if fmt == "movielens":  # a folder holding ratings.dat, written from the generated Parquet log
        from mlformat import write_ratings_dat

        folder = work / f"ingest-{events}-movielens"
        write_ratings_dat(_generate(work, events, "parquet"), folder)
        return folder
    folder = work / f"ingest-{events}-{fmt}"
    path = folder / f"interactions.{fmt}"
    if not path.exists():
        from rechub_store.data.generate import generate

        generate(folder, n_users=max(50, events // 50), n_items=max(100, events // 200), n_events=events,
                 seed=0, fmt=fmt)  # fmt: skip
    return path


def _measure(src: str, path: Path, threads: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, src, str(path), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "RECHUB_THREADS": str(threads)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--formats", default="movielens,csv,parquet")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RECHUB_THREADS", "2")))
    ap.add_argument("--compare", default=None, help="another source tree (its rechub_store is imported)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "work")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "ingest.json")
    args = ap.parse_args()
    variants = {"this": ""} | ({"compare": str(Path(args.compare).resolve())} if args.compare else {})
    results: dict[str, Any] = {
        "events": args.events,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "compare": args.compare,
        "formats": {},
    }
    for fmt in args.formats.split(","):
        path = _generate(args.work, args.events, fmt)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for _ in range(args.repeat):
            for name, src in variants.items():
                runs[name].append(_measure(src, path, args.threads))
        summary = {
            name: {
                "median_seconds": round(statistics.median(r["seconds"] for r in rs), 3),
                "median_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in rs), 3),
                "rows_accepted": rs[0]["rows_accepted"],
                "runs": rs,
            }
            for name, rs in runs.items()
        }
        if "compare" in summary:
            summary["ratio_wall_this_over_compare"] = round(
                summary["this"]["median_seconds"] / summary["compare"]["median_seconds"], 3
            )
        results["formats"][fmt] = summary
        line = ", ".join(
            f"{name} {s['median_seconds']:.2f} s wall / {s['median_cpu_seconds']:.2f} s CPU"
            for name, s in summary.items()
            if isinstance(s, dict)
        )
        print(f"{fmt} ({args.events:,} events): {line}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
