"""`rechub-store demo`: synthetic data end to end on the embedded default warehouse."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import duckdb

from rechub_store.config import BASELINE_NAMES
from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import generate_into
from rechub_store.jobs.config import EvaluateSettings, JobConfig, ScoreSettings, TrainSettings
from rechub_store.jobs.job import NightlyReport, run_nightly
from rechub_store.pipeline.train import train
from rechub_store.training.config import TrainConfig
from rechub_store.warehouse import Warehouse


@dataclass
class DemoReport:
    nightly: NightlyReport
    metrics: list[dict[str, Any]]
    sample: list[dict[str, Any]]
    data_dir: str
    seconds: float


def run_demo(
    warehouse: Warehouse,
    *,
    n_users: int = 2000,
    n_items: int = 1000,
    n_events: int = 60_000,
    model: str = "sasrec",
    epochs: int = 5,
    k: int = 20,
    seed: int = 0,
    run_date: dt.date | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoReport:
    """Synthetic data end to end: generate, ingest, build, train, then nightly (score, evaluate, publish)."""
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    data_dir = warehouse.root / "demo-data"
    with warehouse.session() as con:
        say(f"generating {n_users} users x {n_items} items x {n_events} events into {data_dir}")
        generate_into(con, data_dir, n_users=n_users, n_items=n_items, n_events=n_events, seed=seed)
        say("building features")
        build_features(con, BuildParams(), user_dir=warehouse.user_sql_dir)
        say(f"training {model} ({epochs} epochs)")
        train(con, TrainConfig(model=model, epochs=epochs, seed=seed, progress=False), warehouse.threads)
    job = JobConfig(
        name="demo",
        train=TrainSettings(policy="never"),
        score=replace(ScoreSettings(), k=k),
        evaluate=replace(EvaluateSettings(), ks=tuple(x for x in (10, 20, 50) if x <= max(k, 10)) or (k,)),
    )
    say("nightly: score, evaluate, publish")
    report = run_nightly(warehouse, job, run_date)
    con = duckdb.connect(str(warehouse.analytics_path), read_only=True)
    try:
        cur = con.execute(
            """
            PIVOT (SELECT model_run_id, "index", k, metric, value FROM evaluation_metrics
                   WHERE run_id = ? AND split = 'test' AND slice = 'all')
            ON metric IN ('recall', 'hit', 'ndcg', 'mrr', 'precision', 'annoy_recall') USING first(value)
            ORDER BY k, list_contains(?, model_run_id), model_run_id, "index"
            """,
            [report.run_id, list(BASELINE_NAMES)],
        )
        names = [d[0] for d in cur.description]
        metrics = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        cur = con.execute(
            "SELECT user_id, rank, item_id, round(score, 4) AS score FROM recommendations "
            "WHERE user_id IN (SELECT DISTINCT user_id FROM recommendations ORDER BY user_id LIMIT 2) "
            "AND rank <= 5 ORDER BY user_id, rank"
        )
        names = [d[0] for d in cur.description]
        sample = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()
    return DemoReport(report, metrics, sample, str(data_dir), round(time.perf_counter() - t0, 3))
