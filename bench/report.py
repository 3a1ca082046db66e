"""Benchmark: the run report of a large run: build time, page weight, time to render in Chromium.

Fabricates, with SQL, a warehouse holding what a month of nightly runs at scale leaves behind:
30 runs (job_runs with step timings and details, one retrain a week with a 20-epoch history, feature
builds, ingested batches with rejects), evaluation_metrics for the model on both indexes and three
baselines at k = 10, 20, 50 (plus a seen_filter protocol column, beyond-accuracy metrics and slices
as the evaluation issue adds them), the current run's recommendations (USERS x 20 rows) over a
catalogue of ITEMS with Zipf-like popularity and categories, and the model's item vectors. Then it
builds the report in-process (timed), and opens the page and the index in headless Chromium
(fresh page each time, median of --repeats) recording navigation and paint timings:

    python bench/report.py                                  # 1M users (20M recommendation rows)
    python bench/report.py --users 10000 1000000            # side by side: the page does not grow with users

Targets (issue 15): the page of a 1M-user run renders in under 2 s and weighs under 2 MB.
Writes bench/out/report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "report"))

from conftest import FLAGS, find_browser  # noqa: E402

from rechub_store.data.ingest import ensure_raw_tables  # noqa: E402
from rechub_store.report import build_report  # noqa: E402
from rechub_store.results.tables import ensure_results_tables  # noqa: E402
from rechub_store.settings import Settings  # noqa: E402
from rechub_store.warehouse import Warehouse  # noqa: E402

K = 20
RUNS = 30
DIM = 64
CATEGORIES = 20
STEPS = {"ingest": 40.0, "build": 300.0, "train": 0.0, "score": 600.0, "evaluate": 200.0, "publish": 90.0}


def fabricate(wh: Warehouse, users: int, items: int) -> str:
    """Fill `wh` as 30 nightly runs at this scale would; returns the newest run id."""
    t0 = time.perf_counter()
    con = wh.connect()
    ensure_results_tables(con)
    ensure_raw_tables(con)
    runs = [f"nightly-2026-10-{d:02d}" for d in range(1, RUNS + 1)]
    model_ids = [f"sasrec-2026100{w}" for w in range(1, 6)]  # a retrain every 7 runs
    con.execute(
        "CREATE TEMP TABLE run_list AS SELECT * FROM unnest(?) WITH ORDINALITY AS t(run_id, n)", [runs]
    )
    # the catalogue: Zipf-like training counts, a category per item, tags
    con.execute(
        f"""
        CREATE TABLE features.vocab_item_id AS
        SELECT printf('i%07d', i) AS value, i::INTEGER AS code FROM range(1, {items} + 1) t(i);
        CREATE TABLE features.item_popularity AS
        SELECT i::INTEGER AS item_code, (5e6 / pow(i, 0.9))::BIGINT + 1 AS n_events,
               (4.5e6 / pow(i, 0.9))::BIGINT + 1 AS n_train FROM range(1, {items} + 1) t(i);
        CREATE TABLE staging.item_attributes AS
        SELECT printf('i%07d', i) AS item_id, 'category' AS name, 'cat' || (i % {CATEGORIES}) AS value,
               'sparse' AS kind FROM range(1, {items} + 1) t(i);
        INSERT INTO raw.item_tags
        SELECT printf('i%07d', i) AS item_id, 'tag' || ((i * j) % 50) AS tag, 1 AS batch_seq, i AS line
        FROM range(1, {items} + 1) t(i), range(1, 4) s(j);
        """
    )
    # this run's recommendations: USERS x K rows, items drawn with a popularity skew
    con.execute(
        f"""
        INSERT INTO main.recommendations_history
        SELECT printf('u%08d', u) AS user_id,
               printf('i%07d', 1 + (({items} - 1) * pow((hash(u, r) % 1000003) / 1000003.0, 3))::BIGINT),
               r::INTEGER, 10.0 - r / 10.0, '{runs[-1]}', '{model_ids[-1]}', TIMESTAMP '2026-10-30 03:00:00'
        FROM range({users}) t(u), range(1, {K} + 1) s(r)
        """
    )
    con.execute("INSERT INTO main.recommendations SELECT * FROM main.recommendations_history")
    con.execute("ALTER TABLE main.evaluation_metrics ADD COLUMN seen_filter VARCHAR")
    con.execute("ALTER TABLE main.evaluation_metrics ADD COLUMN slice VARCHAR")
    # metrics: model (exact, annoy) and baselines, k = 10/20/50, three protocols, beyond accuracy, slices
    con.execute(
        """
        CREATE TEMP TABLE who AS
        SELECT r.run_id, r.n, m.model_run_id, m.idx, m.level
        FROM run_list r,
             (SELECT * FROM (VALUES ('model', 'exact', 1.0), ('model', 'annoy', 0.96),
                                    ('popularity', 'exact', 0.25), ('itemknn', 'exact', 0.6),
                                    ('transition', 'exact', 0.7)) v(model_run_id, idx, level)) m
        """
    )
    con.execute(
        """
        INSERT INTO main.evaluation_metrics
        SELECT w.run_id,
               if(w.model_run_id = 'model', list_extract(?, 1 + (w.n - 1) // 7), w.model_run_id),
               'test', m.metric, k.k,
               w.level * m.base * (1 + ln(k.k / 10.0) / 3) * (1 + w.n / 300.0)
                   * (1 + 0.03 * ((hash(w.run_id, m.metric) % 100) / 100.0 - 0.5)) * p.f,
               100000, w.idx, TIMESTAMP '2026-10-01' + INTERVAL (w.n) DAY, p.seen_filter, s.slice
        FROM who w,
             (VALUES ('recall', 0.30), ('hit', 0.30), ('ndcg', 0.17), ('mrr', 0.13), ('precision', 0.03))
                 m(metric, base),
             (VALUES (10), (20), (50)) k(k),
             (VALUES ('except-target', 1.0), ('all', 0.8), ('none', 1.1)) p(seen_filter, f),
             (VALUES (NULL), ('cold'), ('active'), ('head'), ('tail'), ('repeat'), ('new')) s(slice)
        WHERE s.slice IS NULL OR (p.seen_filter = 'except-target' AND k.k = 10)
        """,
        [model_ids],
    )
    con.execute(
        """
        INSERT INTO main.evaluation_metrics
        SELECT w.run_id, list_extract(?, 1 + (w.n - 1) // 7), 'test', 'annoy_recall', k.k, 0.95, 100000,
               'annoy', TIMESTAMP '2026-10-01' + INTERVAL (w.n) DAY, 'except-target', NULL
        FROM (SELECT DISTINCT run_id, n FROM who) w, (VALUES (10), (20), (50)) k(k)
        """,
        [model_ids],
    )
    con.execute(
        f"""
        INSERT INTO main.evaluation_metrics
        SELECT w.run_id,
               if(w.model_run_id = 'model', list_extract(?, 1 + (w.n - 1) // 7), w.model_run_id),
               'test', b.metric, 10, b.value * w.level, {users}, w.idx,
               TIMESTAMP '2026-10-01' + INTERVAL (w.n) DAY, 'except-target', NULL
        FROM who w,
             (VALUES ('coverage', 0.35), ('gini', 0.8), ('popularity_percentile', 0.9), ('novelty', 11.0),
                     ('intra_list_diversity', 0.6), ('personalisation', 0.93), ('churn', 0.2))
                 b(metric, value)
        """,
        [model_ids],
    )
    # model runs: 20 epochs of history each
    root = wh.root.resolve()
    for i, mid in enumerate(model_ids):
        epochs = [
            {
                "epoch": e,
                "train_loss": 6.0 * 0.9**e + 2.0,
                "valid": {"ndcg@10": 0.17 * (1 - 0.8**e), "recall@10": 0.3 * (1 - 0.8**e)},
            }
            for e in range(1, 21)
        ]
        history = {"epochs": epochs, "popularity_valid": {"ndcg@10": 0.04}}
        con.execute(
            "INSERT INTO meta.model_runs (model_run_id, model, status, params, build_id, history, "
            "best_epoch, best_metric, artifact_path, wall_seconds, created_at, finished_at) VALUES "
            "(?, 'sasrec', 'success', ?, ?, ?, 18, ?, ?, 5400, ?, ?)",
            [
                mid,
                json.dumps({"epochs": 20, "embed_dim": DIM, "batch_size": 4096}),
                f"b{i}",
                json.dumps(history),
                epochs[17]["valid"]["ndcg@10"],
                str(root / "models" / mid),
                f"2026-10-{1 + 7 * i:02d} 01:00:00",
                f"2026-10-{1 + 7 * i:02d} 02:30:00",
            ],
        )
    # job runs: whole + steps, with the details the nightly writes
    models_folder = root / "models" / model_ids[-1]
    models_folder.mkdir(parents=True, exist_ok=True)
    annoy_meta = {
        "trials": [
            {"n_trees": 40, "search_k": s, "recall": min(0.99, 0.5 + s / 40000)} for s in (2000, 8000, 16000)
        ]
    }
    (models_folder / "items.ann.json").write_text(json.dumps(annoy_meta))
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    rows = []
    for n, run in enumerate(runs, start=1):
        model = model_ids[(n - 1) // 7]
        start = np.datetime64(f"2026-10-{n:02d}T02:30:00")
        t = start
        log_path = logs / f"{run}.log"
        log_path.write_text(f"{run} log\n")
        failed = n == 12
        for step, base in STEPS.items():
            seconds = base * (1 + 0.1 * ((n * len(step)) % 7) / 7)
            details: dict = {}
            status = "success"
            if step == "train":
                seconds = 5400.0 if (n - 1) % 7 == 0 else 0.01
                status = "success" if (n - 1) % 7 == 0 else "skipped"
                details = {"model_run_id": model}
            if step == "build":
                details = {"build_id": f"b{n}"}
            if step == "score":
                details = {
                    "users": users, "rows": users * K, "seconds": seconds, "index": "annoy", "k": K,
                    "model_run_id": model,
                    "seconds_by_phase": {"encode": seconds * 0.3, "topk": seconds * 0.5,
                                         "commit": seconds * 0.2},
                    "annoy": {"path": str(models_folder / "items.ann"), "metric": "dot", "n_trees": 40,
                              "search_k": 16000, "recall": 0.9, "target_recall": 0.95, "met_target": False},
                }  # fmt: skip
            if failed and step == "evaluate":
                status = "failed"
            end = t + np.timedelta64(int(seconds * 1000), "ms")
            rows.append((run, "nightly", step, status, str(t), str(end), seconds, None, json.dumps(details),
                         "RuntimeError: out of memory" if status == "failed" else None))  # fmt: skip
            t = end
            if status == "failed":
                break
        whole = {"model_run_id": model, "log": str(log_path)}
        rows.append((run, "nightly", "whole", "failed" if failed else "success", str(start), str(t),
                     float((t - start) / np.timedelta64(1, "s")), users * K, json.dumps(whole),
                     "RuntimeError: out of memory" if failed else None))  # fmt: skip
    con.executemany("INSERT INTO meta.job_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.execute("DELETE FROM main.evaluation_metrics WHERE run_id = ?", [runs[11]])
    # builds: 22 tables each
    tables = [f"features.table_{i:02d}" for i in range(22)]
    for n in range(1, RUNS + 1):
        models = {t: {"rows": int(users * 50 / (i + 1)), "seconds": 3.0 + i} for i, t in enumerate(tables)}
        con.execute(
            "INSERT INTO meta.builds VALUES (?, ?, ?, 'success', '{}', ?, ?, NULL)",
            [f"b{n}", f"2026-10-{n:02d} 02:31:00", f"2026-10-{n:02d} 02:36:00", json.dumps(models),
             json.dumps({"users_dropped_short": users // 50})],
        )  # fmt: skip
    # ingested batches (two files a night) with rejects under 6 reasons
    con.execute(
        f"""
        INSERT INTO raw.batches
        SELECT 'interactions-' || b, b, 'interactions', '/data/incoming/part-' || b || '.parquet', 'x',
               {users} * 5 + 1000, {users} * 5 + 1000 - (b * 37 % 500), b * 37 % 500,
               TIMESTAMP '2026-10-01 02:30:05' + INTERVAL ((b - 1) // 2) DAY + INTERVAL (b % 2) SECOND
        FROM range(1, {2 * RUNS} + 1) t(b);
        INSERT INTO raw.rejects
        SELECT 'interactions-' || b, '/data/incoming/part-' || b || '.parquet', l, 'u1,,' || l,
               ['empty id: item_id', 'unparsable time: ts', 'wrong field count', 'empty id: user_id',
                'unparsable number: rating', 'bad quoting'][1 + (l % 6)], now()::TIMESTAMP
        FROM range(1, {2 * RUNS} + 1) t(b), range(b * 37 % 500) s(l);
        """
    )
    # the model's item vectors: a centroid per category plus noise
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(CATEGORIES, DIM)).astype(np.float32)
    codes = np.arange(1, items + 1, dtype=np.int32)
    vecs = centroids[codes % CATEGORIES] + 0.6 * rng.normal(size=(items, DIM)).astype(np.float32)
    table = pa.table(
        {"code": codes, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM)}
    )
    pq.write_table(table, models_folder / "item_embeddings.parquet")
    con.close()
    print(
        f"fabricated {users:,} users x {K} ({users * K:,} rows), {items:,} items "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return runs[-1]


def render_times(path: Path, repeats: int) -> dict[str, float]:
    """Median navigation timings (ms) of `path` opened from disk in headless Chromium (fresh page each)."""
    from playwright.sync_api import sync_playwright

    executable = find_browser()
    if executable is None:
        raise SystemExit("no Chromium found (apt-get install chromium)")
    samples: dict[str, list[float]] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            for _ in range(repeats + 1):  # the first visit warms the browser up and is not counted
                page = browser.new_page()
                requests: list[str] = []
                page.on("request", lambda r, seen=requests: seen.append(r.url))
                page.goto(path.resolve().as_uri(), wait_until="load")
                timing = page.evaluate(
                    """() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => {
                        const nav = performance.getEntriesByType('navigation')[0];
                        const paint = performance.getEntriesByName('first-contentful-paint')[0];
                        done({dom_content_loaded_ms: nav.domContentLoadedEventEnd, load_ms: nav.loadEventEnd,
                              first_contentful_paint_ms: paint ? paint.startTime : null,
                              rendered_ms: performance.now(),
                              svg_elements: document.querySelectorAll('svg *').length});
                    })))"""
                )
                assert requests == [path.resolve().as_uri()], requests
                page.close()
                if _ == 0:
                    continue
                for key, value in timing.items():
                    if value is not None:
                        samples.setdefault(key, []).append(float(value))
        finally:
            browser.close()
    return {key: round(statistics.median(values), 1) for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the fabricated warehouses")
    args = parser.parse_args()
    results = []
    for users in args.users:
        folder = Path(tempfile.mkdtemp(prefix=f"rechub-report-{users}-"))
        wh = Settings.from_env(warehouse_path=folder / "rechub.duckdb").warehouse()
        try:
            run = fabricate(wh, users, args.items)
            t0 = time.perf_counter()
            report = build_report(wh, run)
            build_s = time.perf_counter() - t0
            page = Path(report.path)
            index = Path(report.index or "")
            row = {
                "users": users,
                "recommendation_rows": users * K,
                "items": args.items,
                "runs": RUNS,
                "build_seconds": round(build_s, 2),
                "page_bytes": page.stat().st_size,
                "index_bytes": index.stat().st_size,
                "page_render": render_times(page, args.repeats),
                "index_render": render_times(index, args.repeats),
            }
            results.append(row)
            print(json.dumps(row, indent=2))
        finally:
            if args.keep:
                print(f"kept {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
    out = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "threads": os.environ.get("RECHUB_THREADS"),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
        "targets": {"render_ms": 2000, "page_bytes": 2_000_000},
        "results": results,
    }
    dest = REPO / "bench" / "out" / "report.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
