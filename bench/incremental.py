"""Benchmark: a nightly run after 1 % new events, incremental against a full refresh, side by side.

    RECHUB_THREADS=2 python bench/incremental.py --events 1000000
    python bench/incremental.py --events 10000000 --model youtubednn --memory-limit 8GB
    python bench/incremental.py --events 10000000 --model sasrec --index auto

`--index` is night 2's `score.index` (both variants); `--night1-index` night 1's, which the
prepared base keeps (a base per night-1 index: `incremental-<events>` for annoy, the default,
`incremental-<events>-<index>` otherwise). Night 2 rescores incrementally from night 1's
scoring state only when both nights use the same index (a change of index rescores everyone).

A generated log (bench/featgen.py's shape) is cut by time: the first 99 % is ingested, built and
used to train a model (1 epoch) and to run night 1; the last 1 % (the newest events) is then
ingested and night 2 runs twice from the same state, on two copies of the warehouse: once as
the nightly job does by default (incremental build and rescoring), once with `--full-refresh`.
Printed and written to bench/out/incremental.json: seconds (wall and process CPU) per step of
each night 2, the ratio, users rescored, what evaluation reused of annoy's answers, the index each
night used (and what `auto` measured), the load average at start and end, the process's peak RSS,
and the check that both give identical feature tables, recommendations and metrics (exact
values). Work files under --work (default bench/out/work, git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from featgen import peak_rss_mib, sizes_for  # noqa: E402

JOB = """
[job]
name = "bench"
[train]
policy = "never"
[score]
k = 100
index = "{index}"
[evaluate]
ks = [10, 50]
max_users = 10000
list_users = 2000
"""


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


INDEXES = ("annoy", "exact", "auto")


def prepare(
    work: Path,
    n_events: int,
    new_share: float,
    threads: int,
    memory_limit: str | None,
    model: str,
    index: str = "annoy",
) -> Path:
    """Generated log cut by time, first part ingested, built, trained, night 1 run (scored with
    `index`): the base warehouse."""
    import duckdb

    from rechub_store.data.build import BuildParams, build_features
    from rechub_store.data.generate import generate, ingest_generated
    from rechub_store.jobs.config import JobConfig
    from rechub_store.jobs.job import run_nightly
    from rechub_store.pipeline.train import train
    from rechub_store.training.config import TrainConfig
    from rechub_store.warehouse import Warehouse

    data = work / (f"incremental-{n_events}" if index == "annoy" else f"incremental-{n_events}-{index}")
    base = data / "base" / "rechub.duckdb"
    ready = data / "base.ready"  # written last: a prepare killed half-way is redone, not reused
    if ready.exists() and base.exists():
        return base
    ready.unlink(missing_ok=True)
    n_users, n_items = sizes_for(n_events)
    if not (data / "interactions.parquet").exists():
        generate(data, n_users=n_users, n_items=n_items, n_events=n_events, seed=0, fmt="parquet")
    cut = duckdb.connect()
    src = str(data / "interactions.parquet")
    (split_ts,) = cut.execute(
        f"SELECT quantile_disc(ts, {1 - new_share}) FROM read_parquet(?)", [src]
    ).fetchone()
    for name, op in (("old", "<"), ("new", ">=")):
        cut.execute(
            f"COPY (SELECT * FROM read_parquet('{src}') WHERE ts {op} {split_ts}) TO '{data / name}.parquet'"
        )
    cut.close()
    if base.parent.exists():
        shutil.rmtree(base.parent)
    base.parent.mkdir(parents=True)
    wh = Warehouse(base, threads=threads, memory_limit=memory_limit)
    with wh.session() as con:
        ingest_generated(con, data / "old.parquet", data / "users.parquet", data / "items.parquet")
        build_features(con, BuildParams())
        # a cheap model (1 epoch, sampled softmax): the bench times the nightly, not training
        train(
            con,
            TrainConfig(
                model=model,
                epochs=1,
                batch_size=4096,
                embed_dim=32,
                neg_mode="listwise",
                neg_ratio=4,
                valid_users=1000,
                seed=0,
                progress=False,
            ),
            threads=threads,
        )
    job = JobConfig.from_mapping(__import__("tomllib").loads(JOB.format(index=index)), base_dir=base.parent)
    run_nightly(wh, job, dt.date(2030, 1, 1))
    ready.write_text(dt.datetime.now(dt.UTC).isoformat(timespec="seconds") + "\n")
    return base


def night1(base: Path) -> dict[str, Any]:
    """What the base's night 1 scored with, from its run record (`meta.job_runs`)."""
    import duckdb

    con = duckdb.connect(str(base), read_only=True)
    (details,) = con.execute(
        "SELECT details FROM meta.job_runs WHERE step = 'score' AND status = 'success' "
        "ORDER BY finished_at DESC LIMIT 1"
    ).fetchone()
    con.close()
    score = json.loads(details)
    return {"index": score.get("index"), "auto": score.get("auto"), "seconds": score.get("seconds")}


def night2(
    root: Path, threads: int, memory_limit: str | None, full_refresh: bool, index: str = "annoy"
) -> dict[str, Any]:
    import tomllib

    from rechub_store.data.generate import ingest_generated_interactions
    from rechub_store.jobs.config import JobConfig
    from rechub_store.jobs.job import run_nightly
    from rechub_store.warehouse import Warehouse

    wh = Warehouse(root / "rechub.duckdb", threads=threads, memory_limit=memory_limit)
    new = root.parent / "new.parquet"
    with wh.session() as con:
        ingest_generated_interactions(con, new)
    job = JobConfig.from_mapping(tomllib.loads(JOB.format(index=index)), base_dir=root)
    t0, c0 = time.perf_counter(), cpu_seconds()
    report = run_nightly(wh, job, dt.date(2030, 1, 2), full_refresh=full_refresh)
    out = {"seconds": round(time.perf_counter() - t0, 3), "cpu_seconds": round(cpu_seconds() - c0, 3)}
    out["status"] = report.status
    out["steps"] = {s.step: round(s.seconds, 3) for s in report.steps}
    steps = {s.step: s for s in report.steps}
    build = steps["build"].details or {}
    out["build_mode"] = build.get("mode")
    out["build_reason"] = build.get("mode_reason")
    score = steps["score"].details or {}
    out["users"] = score.get("users")
    out["rescored"] = score.get("rescored")
    out["rescoring"] = score.get("rescoring")
    out["score_phases"] = score.get("seconds_by_phase")
    out["score_index"] = score.get("index")  # what the run scored with (auto resolved)
    out["score_auto"] = score.get("auto")  # index = auto: what it measured and why it chose
    out["evaluate_answers"] = (steps["evaluate"].details or {}).get("annoy_answers")  # what was reused
    with wh.session(read_only=True) as con:
        (models,) = con.execute(
            "SELECT models FROM meta.builds WHERE status = 'success' ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()
    out["build_models"] = {k: (v["seconds"], v.get("mode")) for k, v in json.loads(models).items()}
    return out


def _differing(con: Any, table: str, cols: str) -> int:
    """Rows of `table` (these columns) in one attached warehouse and not the other, both ways."""
    a_not_b = f"SELECT count(*) FROM (SELECT {cols} FROM a.{table} EXCEPT ALL SELECT {cols} FROM b.{table})"
    b_not_a = f"SELECT count(*) FROM (SELECT {cols} FROM b.{table} EXCEPT ALL SELECT {cols} FROM a.{table})"
    (n,) = con.execute(f"SELECT ({a_not_b}) + ({b_not_a})").fetchone()
    return int(n)


def identical(a: Path, b: Path) -> dict[str, Any]:
    """Row-for-row comparison of every staging/feature table, the recommendations and the metrics."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
    tables = [
        r[0]
        for r in con.execute(
            "SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE database_name = 'a' "
            "AND schema_name IN ('staging', 'features') AND table_name <> 'changed_users' ORDER BY 1"
        ).fetchall()
    ]
    diff = {}
    for t in tables:
        diff[t] = _differing(con, t, "*")
    diff["main.recommendations"] = _differing(
        con, "main.recommendations", "user_id, item_id, rank, score, run_id, model_run_id"
    )
    # exact metric values: the beyond-accuracy SQL's means do not depend on the order rows are added in
    diff["main.evaluation_metrics"] = _differing(
        con,
        "main.evaluation_metrics",
        "run_id, model_run_id, split, metric, k, value, n_users, index, seen_filter, slice",
    )
    con.close()
    return {
        "tables": len(diff),
        "differing_rows": sum(diff.values()),
        "per_table": {k: v for k, v in diff.items() if v},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--new-share", type=float, default=0.01)
    ap.add_argument("--model", default="youtubednn")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB, torch and annoy threads")
    ap.add_argument("--memory-limit", default=None)
    ap.add_argument("--index", choices=INDEXES, default="annoy", help="night 2's score.index")
    ap.add_argument(
        "--night1-index", choices=INDEXES, default="annoy", help="night 1's score.index (the base's)"
    )
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "work")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "incremental.json")
    args = ap.parse_args()
    import torch

    load_start = os.getloadavg()
    # the code this process runs: HEAD when it started, and whether tracked files differed from it
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip()
    if subprocess.run([*git, "diff", "--quiet", "HEAD"]).returncode:
        commit += " + uncommitted changes"
    t0 = time.perf_counter()
    base = prepare(
        args.work, args.events, args.new_share, args.threads, args.memory_limit, args.model, args.night1_index
    )
    prepare_seconds = time.perf_counter() - t0
    runs = {}
    for name, full in (("incremental", False), ("full_refresh", True)):
        copy = base.parent.parent / name
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(base.parent, copy)
        runs[name] = night2(copy, args.threads, args.memory_limit, full, args.index)
        print(name, json.dumps({k: v for k, v in runs[name].items() if k != "build_models"}), flush=True)
    check = identical(
        base.parent.parent / "incremental" / "rechub.duckdb",
        base.parent.parent / "full_refresh" / "rechub.duckdb",
    )
    inc, full = runs["incremental"], runs["full_refresh"]
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "events": args.events,
        "new_share": args.new_share,
        "model": args.model,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "commit": commit,
        "index": args.index,
        "night1_index": args.night1_index,
        "night1": night1(base),
        "prepare_seconds": round(prepare_seconds, 1),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        # the whole process: preparation (when it ran), both nights and the comparison
        "peak_rss_gib": round(peak_rss_mib() / 1024, 2),
        "runs": runs,
        "ratio": {
            "night": round(inc["seconds"] / full["seconds"], 3),
            # the evaluation step is only partly incremental (annoy's answers are reused; the
            # baselines are refitted and every sampled user ranked): the night without it, side by side
            "night_without_evaluate": round(
                (inc["seconds"] - inc["steps"].get("evaluate", 0.0))
                / (full["seconds"] - full["steps"].get("evaluate", 0.0)),
                3,
            ),
            **{
                s: round(inc["steps"][s] / full["steps"][s], 3)
                for s in ("build", "score")
                if full["steps"].get(s)
            },
        },
        "identical": check,
    }
    print(json.dumps({"ratio": result["ratio"], "identical": check}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
