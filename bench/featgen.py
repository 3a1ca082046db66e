"""Benchmark: ingest + build-features on generated logs (wall time, peak RSS), optionally side by
side with Torch-RecHub 0.9.0's `generate_seq_feature_match` + `gen_model_input` on the same log.

    RECHUB_THREADS=2 python bench/featgen.py --events 1000000
    RECHUB_THREADS=2 python bench/featgen.py --events 1000000 10000000 --source movielens
    python bench/featgen.py --events 1000000 10000000 100000000 --memory-limit 10GB
    python bench/featgen.py --events 100000 1000000 --compare 100000 1000000   # needs torch-rechub, pandas

Each measured step runs in its own child process, so peak RSS (ru_maxrss) is that step's own:
`generate` (not part of the target), `ingest`, `build` (build-features with default parameters),
`rechub` (Torch-RecHub), and `bare`: DuckDB alone reading the same interactions file and grouping
it into per-user time-ordered lists (the floor; the ratio (ingest + build) / bare is printed, in wall
seconds and in CPU seconds of the measured steps, which a shared machine's load moves less), and
`bare_negatives`: DuckDB alone drawing r uniform hashed items per training sample of the built
warehouse and dropping those the user had met (BARE_NEGATIVES, the floor of negative sampling).
Printed beside the ratio: (ingest + build - negatives_train) / bare and negatives_train /
bare_negatives, the two parts of the target measured against the floor of their own work.
`--source movielens` writes the log as an ml-1m ratings.dat and times `ingest movielens`.
Results go to bench/out/featgen.json (one entry per size, appended runs
replace the same size). Generated files are kept under --work (default bench/out/work, git-ignored)
and reused when present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def sizes_for(n_events: int) -> tuple[int, int]:
    """Users and items for a log size: about ml-1m's shape (~170 events per user, ~270 per item)."""
    return max(50, n_events // 170), max(100, n_events // 270)


def peak_rss_mib() -> float:
    """This process's own peak RSS since it started (VmHWM). Not getrusage's ru_maxrss: Linux
    carries that across fork and exec, so a child started by a parent that held 19 GB (the
    ratings.dat conversion) reported 19 GB whatever it used itself."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine, less noisy than wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------- child steps


def step_generate(n_events: int, data_dir: Path) -> dict[str, Any]:
    from rechub_store.data.generate import generate

    n_users, n_items = sizes_for(n_events)
    t0 = time.perf_counter()
    generate(data_dir, n_users=n_users, n_items=n_items, n_events=n_events, seed=0, fmt="parquet")
    return {"seconds": time.perf_counter() - t0, "n_users": n_users, "n_items": n_items}


def _warehouse(path: Path, threads: int, memory_limit: str | None) -> Any:
    from rechub_store.warehouse import Warehouse

    return Warehouse(path, threads=threads, memory_limit=memory_limit)


def step_ingest(data_dir: Path, wh_path: Path, threads: int, memory_limit: str | None) -> dict[str, Any]:
    from rechub_store.data.generate import ingest_generated

    if wh_path.exists():
        wh_path.unlink()
    t0, c0 = time.perf_counter(), cpu_seconds()
    with _warehouse(wh_path, threads, memory_limit).session() as con:
        results = ingest_generated(
            con, data_dir / "interactions.parquet", data_dir / "users.parquet", data_dir / "items.parquet"
        )
        (rows,) = con.execute("SELECT count(*) FROM raw.interactions").fetchone()
    return {
        "seconds": time.perf_counter() - t0,
        "step_cpu_seconds": cpu_seconds() - c0,
        "raw_interactions": rows,
        "batches": len(results),
    }


def step_ingest_movielens(
    ml_dir: Path, wh_path: Path, threads: int, memory_limit: str | None
) -> dict[str, Any]:
    """`ingest movielens` of the log written as an ml-1m ratings.dat (no users.dat / movies.dat)."""
    from rechub_store.data.movielens import ingest_movielens

    if wh_path.exists():
        wh_path.unlink()
    t0, c0 = time.perf_counter(), cpu_seconds()
    with _warehouse(wh_path, threads, memory_limit).session() as con:
        results = ingest_movielens(con, ml_dir, max_reject_ratio=None)
    return {
        "seconds": time.perf_counter() - t0,
        "step_cpu_seconds": cpu_seconds() - c0,
        "raw_interactions": results[0].rows_accepted,
    }


@contextmanager
def scratch_duckdb(db: Path, threads: int, memory_limit: str | None) -> Iterator[Any]:
    """A fresh DuckDB file for a bare step (the floors write their result as the build does),
    with the run's threads and memory limit; deleted afterwards."""
    import duckdb

    db.parent.mkdir(parents=True, exist_ok=True)
    for leftover in (db, db.with_name(db.name + ".wal")):
        leftover.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    try:
        con.execute(f"SET threads = {threads}")
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        yield con
    finally:
        con.close()
        db.unlink(missing_ok=True)


def timed_create(
    con: Any, sql: str, table: str, params: dict[str, Any] | None = None
) -> tuple[float, float, int]:
    """Run a CREATE TABLE ... AS and its CHECKPOINT: wall and CPU seconds, and the table's rows."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    con.execute(sql, params)
    con.execute("CHECKPOINT")
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    (rows,) = con.execute(f"SELECT count(*) FROM {table}").fetchone()  # type: ignore[misc]
    return seconds, cpu, rows


def step_bare(source: Path, wh_path: Path, threads: int, memory_limit: str | None) -> dict[str, Any]:
    """DuckDB alone: read the same interactions file and group it into per-user time-ordered lists,
    written to a DuckDB file beside the warehouse (the floor that ingest + build is compared with)."""
    if source.is_dir():  # movielens: ratings.dat
        path = str(source / "ratings.dat").replace("'", "''")
        reader = (
            f"read_csv('{path}', delim='::', header=false, auto_detect=false, "
            "columns={'user_id': 'BIGINT', 'item_id': 'BIGINT', 'rating': 'DOUBLE', 'ts': 'BIGINT'})"
        )
    else:
        reader = f"read_parquet('{str(source).replace(chr(39), chr(39) * 2)}')"
    with scratch_duckdb(wh_path.with_name("bare.duckdb"), threads, memory_limit) as con:
        seconds, cpu, users = timed_create(
            con,
            "CREATE TABLE user_lists AS SELECT user_id, list(item_id ORDER BY ts) AS items, "
            f"list(ts ORDER BY ts) AS ts_list, count(*) AS n FROM {reader} GROUP BY user_id",
            "user_lists",
        )
    return {"seconds": seconds, "step_cpu_seconds": cpu, "users": users}


# The floor of negative sampling, for `features.negatives_train`'s own ratio: per training sample r
# uniform item codes from hashed (seed, user, pos, draw), those the user had met up to pos dropped
# by one anti join with the events, the survivors written as rows. The model does this work and
# more: popularity-weighted draws, distinct negatives, r for every sample (extra draws and a top-up).
BARE_NEGATIVES = """
CREATE TABLE bare_negatives AS
WITH drawn AS (
    SELECT s.user_code, s.pos, d.draw,
        1 + (hash(xor(hash(xor(hash(s.user_code::UBIGINT), s.pos::UBIGINT)), d.draw::UBIGINT))
            % n.items)::INTEGER AS item_code
    FROM w.features.samples_train s
    CROSS JOIN (SELECT unnest(range(1, $ratio + 1)) AS draw) d
    CROSS JOIN (SELECT count(*)::UBIGINT AS items FROM w.features.vocab_item_id) n
)
SELECT d.user_code, d.pos, d.draw AS neg_rank, d.item_code AS neg_item_code
FROM drawn d
ANTI JOIN w.features.events e ON e.user_code = d.user_code AND e.item_code = d.item_code AND e.seq <= d.pos
"""


def step_bare_negatives(wh_path: Path, threads: int, memory_limit: str | None) -> dict[str, Any]:
    """DuckDB alone on the built warehouse (read-only): BARE_NEGATIVES with the default build's
    r, written to a DuckDB file beside it (as `bare` writes its lists)."""
    from rechub_store.data.build import BuildParams

    with scratch_duckdb(wh_path.with_name("bare_negatives.duckdb"), threads, memory_limit) as con:
        con.execute("SET preserve_insertion_order = false")  # as the build runs its models
        con.execute("ATTACH ? AS w (READ_ONLY)", [str(wh_path)])
        seconds, cpu, rows = timed_create(
            con, BARE_NEGATIVES, "bare_negatives", {"ratio": BuildParams().effective_neg_ratio}
        )
    return {"seconds": seconds, "step_cpu_seconds": cpu, "rows": rows}


def step_build(wh_path: Path, threads: int, memory_limit: str | None) -> dict[str, Any]:
    from rechub_store.data.build import BuildParams, build_features

    with _warehouse(wh_path, threads, memory_limit).session() as con:
        t0, c0 = time.perf_counter(), cpu_seconds()
        report = build_features(con, BuildParams())
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {
        "seconds": seconds,
        "step_cpu_seconds": cpu,
        "samples": report.samples,
        "split_report": report.split,
        "models": {m.model: m.seconds for m in report.models},
        "audits": report.audits,
        "audit_share": round(sum(report.audits.values()) / seconds, 4) if seconds else None,
        # models built in several passes (`-- partition:` header), e.g. negatives_train at 100M
        "partitions": {m.model: m.partitions for m in report.models if m.partitions > 1},
    }


def step_rechub(data_dir: Path, wh_path: Path) -> dict[str, Any]:
    """Torch-RecHub's matching pipeline with the settings of our default build (list-wise,
    4 negatives, popularity^0.75, users with >= 3 events, history 50) on the de-duplicated staging
    events of our warehouse, so both sides see the same log (ids label-encoded, as its tutorials do).
    It has no validation split: its train samples correspond to our train + valid samples."""
    import pandas as pd  # optional bench dependency
    from torch_rechub.utils.match import gen_model_input, generate_seq_feature_match

    from rechub_store.warehouse import Warehouse

    with Warehouse(wh_path).session(read_only=True) as con:
        df = con.execute(
            "SELECT u.code AS user_id, i.code AS item_id, epoch(s.ts)::BIGINT AS ts "
            "FROM staging.interactions s JOIN features.vocab_user_id u ON u.value = s.user_id "
            "JOIN features.vocab_item_id i ON i.value = s.item_id"
        ).df()
    t0 = time.perf_counter()
    df_train, df_test = generate_seq_feature_match(
        df,
        "user_id",
        "item_id",
        time_col="ts",
        item_attribute_cols=[],
        sample_method=1,  # popularity ** 0.75
        mode=2,  # list-wise
        neg_ratio=4,
        min_item=3,
    )
    user_profile = pd.DataFrame({"user_id": df["user_id"].unique()})
    item_profile = pd.DataFrame({"item_id": df["item_id"].unique()})
    train_input = gen_model_input(df_train, user_profile, "user_id", item_profile, "item_id", seq_max_len=50)
    test_input = gen_model_input(df_test, user_profile, "user_id", item_profile, "item_id", seq_max_len=50)
    return {
        "seconds": time.perf_counter() - t0,
        "settings": "mode=2 (list-wise), neg_ratio=4, sample_method=1, min_item=3, seq_max_len=50",
        "train_samples": len(train_input["user_id"]),
        "test_samples": len(test_input["user_id"]),
    }


def child(args: argparse.Namespace) -> None:
    data_dir, wh_path = Path(args.data_dir), Path(args.warehouse)
    cpu0 = cpu_seconds()
    if args.step == "generate":
        out = step_generate(args.n_events, data_dir)
    elif args.step == "ingest":
        out = step_ingest(data_dir, wh_path, args.threads, args.memory_limit)
    elif args.step == "ingest_movielens":
        out = step_ingest_movielens(data_dir / "movielens", wh_path, args.threads, args.memory_limit)
    elif args.step == "bare":
        source = data_dir / "movielens" if args.source == "movielens" else data_dir / "interactions.parquet"
        out = step_bare(source, wh_path, args.threads, args.memory_limit)
    elif args.step == "build":
        out = step_build(wh_path, args.threads, args.memory_limit)
    elif args.step == "bare_negatives":
        out = step_bare_negatives(wh_path, args.threads, args.memory_limit)
    else:
        out = step_rechub(data_dir, wh_path)
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    out["cpu_seconds"] = round(cpu_seconds() - cpu0, 2)  # includes imports and opening the warehouse
    print("RESULT " + json.dumps(out, default=str))


# ----------------------------------------------------------------------- parent


def run_step(
    step: str, n_events: int, data_dir: Path, wh_path: Path, args: argparse.Namespace
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        step,
        "--n-events",
        str(n_events),
        "--data-dir",
        str(data_dir),
        "--warehouse",
        str(wh_path),
        "--threads",
        str(args.threads),
    ]
    if args.memory_limit:
        cmd += ["--memory-limit", args.memory_limit]
    cmd += ["--source", args.source]
    env = dict(os.environ, RECHUB_THREADS=str(args.threads))
    if step == "rechub":
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": " | ".join(tail), "returncode": proc.returncode}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["process_seconds"] = round(wall, 2)
    return result


def rechub_available() -> str | None:
    """None when Torch-RecHub and pandas import, else why not (never installs anything)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import pandas, torch_rechub.utils.match"],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["import failed"])[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000], help="log sizes to run")
    ap.add_argument("--compare", type=int, nargs="*", default=[], help="sizes to also run Torch-RecHub on")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RECHUB_THREADS", "2")))
    ap.add_argument("--memory-limit", default=None, help="DuckDB memory limit, e.g. 10GB")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "work"), help="data + warehouses")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "featgen.json"))
    ap.add_argument("--drop-warehouse", action="store_true", help="delete each warehouse after its run")
    ap.add_argument(
        "--source",
        choices=["parquet", "movielens"],
        default="parquet",
        help="ingest the generated Parquet files (interactions, users, items) or the log as an ml-1m "
        "ratings.dat (`ingest movielens`); the bare DuckDB read-and-aggregate reads the same file",
    )
    # internal: one measured step in a child process
    ap.add_argument(
        "--child",
        choices=["generate", "ingest", "ingest_movielens", "bare", "build", "bare_negatives", "rechub"],
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--n-events", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    ap.add_argument("--warehouse", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.step = args.child
        child(args)
        return 0

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out_path.read_text()) if out_path.exists() else {}
    results: dict[str, Any] = previous.get("runs", {}) if isinstance(previous, dict) else {}
    why_no_rechub = rechub_available() if args.compare else None
    for n in args.events:
        data_dir = Path(args.work) / f"events_{n}"
        wh_path = Path(args.work) / f"wh_{n}" / "rechub.duckdb"
        entry: dict[str, Any] = {"events": n, "threads": args.threads, "memory_limit": args.memory_limit}
        if not (data_dir / "interactions.parquet").exists():
            entry["generate"] = run_step("generate", n, data_dir, wh_path, args)
        if wh_path.parent.exists():
            shutil.rmtree(wh_path.parent)
        entry["source"] = args.source
        if args.source == "movielens":
            from mlformat import write_ratings_dat

            write_ratings_dat(data_dir / "interactions.parquet", data_dir / "movielens")
        entry["bare"] = run_step("bare", n, data_dir, wh_path, args)
        entry["ingest"] = run_step(
            "ingest_movielens" if args.source == "movielens" else "ingest", n, data_dir, wh_path, args
        )
        entry["build"] = run_step("build", n, data_dir, wh_path, args)
        entry["bare_negatives"] = run_step("bare_negatives", n, data_dir, wh_path, args)
        if n in args.compare:
            if why_no_rechub:
                entry["rechub"] = {"skipped": why_no_rechub}
            else:
                entry["rechub"] = run_step("rechub", n, data_dir, wh_path, args)
                if "seconds" in entry["rechub"] and "seconds" in entry["build"]:
                    entry["speedup_vs_rechub"] = round(
                        entry["rechub"]["seconds"] / entry["build"]["seconds"], 1
                    )
        entry["ingest_plus_build_seconds"] = round(
            entry["ingest"].get("seconds", float("nan")) + entry["build"].get("seconds", float("nan")), 2
        )
        entry["peak_rss_mib"] = max(entry[s].get("peak_rss_mib", 0) for s in ("ingest", "build"))
        bare = entry["bare"].get("seconds")
        entry["ratio_to_bare"] = round(entry["ingest_plus_build_seconds"] / bare, 2) if bare else None
        # the same ratio in CPU seconds of the measured steps (imports and start-up excluded): on a
        # shared machine the wall-time ratio also measures how much of the cores each step got
        cpu = [entry[step].get("step_cpu_seconds") for step in ("ingest", "build", "bare")]
        entry["ratio_to_bare_cpu"] = round((cpu[0] + cpu[1]) / cpu[2], 2) if all(cpu) else None
        # the target split in two, each part against the floor of its own work: ingest + build
        # without negative sampling against the bare read, negative sampling against BARE_NEGATIVES
        negatives = (entry["build"].get("models") or {}).get("features.negatives_train")
        floor = entry["bare_negatives"].get("seconds")
        entry["negatives_train_seconds"] = negatives
        entry["ratio_to_bare_without_negatives"] = (
            round((entry["ingest_plus_build_seconds"] - negatives) / bare, 2) if bare and negatives else None
        )
        entry["negatives_to_bare_negatives"] = round(negatives / floor, 2) if negatives and floor else None
        if args.drop_warehouse and wh_path.parent.exists():
            shutil.rmtree(wh_path.parent)
        results[str(n) if args.source == "parquet" else f"{n}-{args.source}"] = entry
        b, ingest = entry["build"], entry["ingest"]
        line = (
            f"{n:>12,} events: ingest {ingest.get('seconds', float('nan')):.2f} s, "
            f"build {b.get('seconds', float('nan')):.2f} s (CPU {b.get('cpu_seconds', float('nan')):.2f} s), "
            f"peak RSS {entry['peak_rss_mib']:.0f} MiB"
        )
        line += f", samples {b['samples']}" if "samples" in b else f", error {b.get('error')}"
        line += (
            f", audits {sum((b.get('audits') or {}).values()):.2f} s ({b.get('audit_share')}), "
            f"bare read+aggregate {entry['bare'].get('seconds', float('nan')):.2f} s, "
            f"(ingest + build) / bare = {entry['ratio_to_bare']} "
            f"(in CPU seconds {entry['ratio_to_bare_cpu']}); without negatives_train "
            f"{entry['ratio_to_bare_without_negatives']}; negatives_train {negatives} s = "
            f"{entry['negatives_to_bare_negatives']} x bare negatives {floor or float('nan'):.2f} s"
        )
        if "rechub" in entry:
            line += f", Torch-RecHub {entry['rechub']}"
        print(line, flush=True)
    payload = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": results,
    }
    out_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
