"""Benchmark: the audits (sql/audits/*.sql) on a built warehouse, optionally beside another source
tree's audits (e.g. an export of the code before they were rewritten), run alternately in one
process on the same tables, read-only.

    git archive <commit> | tar -x -C /tmp/rechub-before
    RECHUB_THREADS=2 python bench/audits.py bench/out/work/wh_1000000/rechub.duckdb \
        --compare /tmp/rechub-before

Prints and writes (bench/out/audits.json) the best of `--repeat` timings per audit and their sum,
beside the seconds of the warehouse's last successful build (meta.builds: its models), so the
audits' share of a build can be read off.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent


def audits_of(tree: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted((tree / "sql" / "audits").glob("*.sql"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("warehouse", type=Path)
    ap.add_argument("--compare", type=Path, default=None, help="another source tree (its sql/audits)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RECHUB_THREADS", "2")))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "audits.json")
    args = ap.parse_args()
    trees = {"this": ROOT} | ({"compare": args.compare} if args.compare else {})
    con = duckdb.connect(str(args.warehouse), read_only=True)
    con.execute(f"SET threads = {args.threads}")
    (models,) = con.execute(
        "SELECT models FROM meta.builds WHERE status = 'success' ORDER BY started_at DESC LIMIT 1"
    ).fetchone()  # type: ignore[misc]
    model_seconds = sum(m["seconds"] for m in json.loads(models).values())
    best: dict[str, dict[str, float]] = {name: {} for name in trees}
    sources = {name: audits_of(tree) for name, tree in trees.items()}
    for _ in range(args.repeat):
        for name, audits in sources.items():
            for audit, sql in audits.items():
                t0 = time.perf_counter()
                (rows,) = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()  # type: ignore[misc]
                seconds = time.perf_counter() - t0
                if rows:
                    raise SystemExit(f"{name}: audit {audit} returned {rows} rows")
                best[name][audit] = min(best[name].get(audit, float("inf")), seconds)
    result = {
        "warehouse": str(args.warehouse),
        "threads": args.threads,
        "build_model_seconds": round(model_seconds, 2),
        "audits": {name: {a: round(s, 3) for a, s in b.items()} for name, b in best.items()},
        "total": {name: round(sum(b.values()), 3) for name, b in best.items()},
    }
    for name, total in result["total"].items():
        share = total / (model_seconds + total)
        print(
            f"{name}: audits {total:.2f} s, models {model_seconds:.2f} s -> {share:.1%} of the build",
            flush=True,
        )
        print("   " + ", ".join(f"{a} {s:.2f}" for a, s in result["audits"][name].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
