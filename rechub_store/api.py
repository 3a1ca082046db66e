"""The public Python API: what the CLI, cron, notebooks and Airflow tasks call.

Every function takes the warehouse first: a `Warehouse`, a path to its DuckDB file, or None for
`Settings.from_env()` (`RECHUB_WAREHOUSE`, else `warehouse/rechub.duckdb`). Results are the same
report objects the CLI prints (`.as_dict()` / `.to_dict()` give what `--json` prints). Bad input
raises `rechub_store.errors.UserError` with a one-line message.

    from rechub_store import api
    api.ingest_interactions("wh/rechub.duckdb", "events.parquet", user_col="u", item_col="i", time_col="t")
    api.build("wh/rechub.duckdb")
    run = api.train("wh/rechub.duckdb", TrainConfig(model="sasrec", epochs=5))
    api.nightly("wh/rechub.duckdb")
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from rechub_store.data.build import BuildParams, BuildReport, build_features
from rechub_store.data.generate import generate_into
from rechub_store.data.ingest import IngestResult
from rechub_store.data.ingest import ingest_interactions as _ingest_interactions
from rechub_store.data.ingest import ingest_items as _ingest_items
from rechub_store.data.ingest import ingest_users as _ingest_users
from rechub_store.data.movielens import ingest_movielens as _ingest_movielens
from rechub_store.data.sqlmodels import Progress
from rechub_store.jobs.config import JobConfig
from rechub_store.jobs.demo import DemoReport, run_demo
from rechub_store.jobs.job import NightlyReport, run_nightly
from rechub_store.jobs.status import job_status
from rechub_store.pipeline.train import train as _train
from rechub_store.publish.readonly import query_readonly
from rechub_store.publish.server import PublishResult, publish_to_url
from rechub_store.report import ReportResult, build_report
from rechub_store.results.evaluate import EvaluationReport
from rechub_store.results.evaluate import evaluate as _evaluate
from rechub_store.results.score import ScoreReport
from rechub_store.results.score import score as _score
from rechub_store.settings import Settings
from rechub_store.training.config import TrainConfig
from rechub_store.training.trainer import ModelRunResult
from rechub_store.warehouse import Warehouse

WarehouseLike = Warehouse | Path | str | None

__all__ = [
    "BuildParams",
    "JobConfig",
    "Settings",
    "TrainConfig",
    "Warehouse",
    "build",
    "demo",
    "evaluate",
    "generate",
    "ingest_interactions",
    "ingest_items",
    "ingest_movielens",
    "ingest_users",
    "nightly",
    "open_warehouse",
    "publish",
    "query",
    "report",
    "score",
    "status",
    "train",
]


def open_warehouse(warehouse: WarehouseLike = None) -> Warehouse:
    """The warehouse to work on: as given, at a path, or from the environment (`Settings.from_env`)."""
    if isinstance(warehouse, Warehouse):
        return warehouse
    return Settings.from_env(warehouse_path=warehouse).warehouse()


def ingest_interactions(warehouse: WarehouseLike, path: Path | str, **options: Any) -> IngestResult:
    """Load an interaction log (CSV or Parquet) into `raw.interactions`; options as
    `data.ingest.ingest_interactions` (user_col, item_col, time_col, rating_col, time_format, ...)."""
    with open_warehouse(warehouse).session() as con:
        return _ingest_interactions(con, path, **options)


def ingest_users(warehouse: WarehouseLike, path: Path | str, **options: Any) -> IngestResult:
    """Load user attributes (id_col, sparse_cols, dense_cols, ...) into `raw.user_attributes`."""
    with open_warehouse(warehouse).session() as con:
        return _ingest_users(con, path, **options)


def ingest_items(warehouse: WarehouseLike, path: Path | str, **options: Any) -> IngestResult:
    """Load item attributes (id_col, sparse_cols, dense_cols, text_cols, tags_col, ...)."""
    with open_warehouse(warehouse).session() as con:
        return _ingest_items(con, path, **options)


def ingest_movielens(warehouse: WarehouseLike, folder: Path | str, **options: Any) -> list[IngestResult]:
    """Load a MovieLens ml-1m or ml-100k folder (ratings, users, movies)."""
    with open_warehouse(warehouse).session() as con:
        return _ingest_movielens(con, folder, **options)


def generate(
    warehouse: WarehouseLike, out_dir: Path | str, *, n_users: int, n_items: int, n_events: int, seed: int = 0
) -> list[IngestResult]:
    """Write a synthetic log (Parquet) to `out_dir` and ingest it (interactions, users, items)."""
    with open_warehouse(warehouse).session() as con:
        return generate_into(con, out_dir, n_users=n_users, n_items=n_items, n_events=n_events, seed=seed)


def build(
    warehouse: WarehouseLike = None,
    params: BuildParams | None = None,
    *,
    select: str | None = None,
    progress: Progress | None = None,
) -> BuildReport:
    """Build the feature store from `raw.*` (with the warehouse's own SQL models folder, if set);
    `select` rebuilds one model and what depends on it."""
    wh = open_warehouse(warehouse)
    with wh.session() as con:
        return build_features(con, params, select=select, progress=progress, user_dir=wh.user_sql_dir)


def train(warehouse: WarehouseLike, config: TrainConfig) -> ModelRunResult:
    """Train one model run (validation under the evaluation protocol), registered in meta.model_runs."""
    return _train(open_warehouse(warehouse), config)


def score(warehouse: WarehouseLike = None, **options: Any) -> ScoreReport:
    """Every user's top-k into the warehouse's `recommendations` (options as `results.score.score`:
    model_run_id, run_id, k, index, annoy_settings, keep_runs, exclude_seen)."""
    return _score(open_warehouse(warehouse), **options)


def evaluate(warehouse: WarehouseLike = None, **options: Any) -> EvaluationReport:
    """Leave-one-out metrics of a model run beside the baselines, into `evaluation_metrics` (options
    as `results.evaluate.evaluate`: model_run_id, ks, splits, indexes, baselines, seen_filter, ...)."""
    return _evaluate(open_warehouse(warehouse), **options)


def publish(warehouse: WarehouseLike, url: str, **options: Any) -> PublishResult:
    """Copy the current run's results to a server database (SQLAlchemy URL), atomically; the retry
    policy defaults to the warehouse's settings."""
    wh = open_warehouse(warehouse)
    if options.get("retries") is None:
        options["retries"] = wh.publish_retries
    if options.get("backoff_s") is None:
        options["backoff_s"] = wh.publish_backoff_s
    return publish_to_url(wh, url, **options)


def nightly(
    warehouse: WarehouseLike = None,
    job: JobConfig | Path | str | None = None,
    run_date: dt.date | None = None,
    *,
    echo: bool = False,
) -> NightlyReport:
    """The nightly job (a job file, a `JobConfig`, or the warehouse's data with default settings)."""
    config = JobConfig.load(job) if isinstance(job, Path | str) else job
    return run_nightly(open_warehouse(warehouse), config, run_date, echo=echo)


def report(
    warehouse: WarehouseLike = None, run_id: str | None = None, out: Path | str | None = None
) -> ReportResult:
    """The HTML report of a run (default: the latest), `reports/<run_id>.html` beside the warehouse."""
    return build_report(open_warehouse(warehouse), run_id, out)


def demo(warehouse: WarehouseLike = None, **options: Any) -> DemoReport:
    """Synthetic data end to end (options as `jobs.demo.run_demo`: n_users, n_items, n_events, ...)."""
    return run_demo(open_warehouse(warehouse), **options)


def query(warehouse: WarehouseLike, sql: str, limit: int | None = None) -> tuple[list[str], list[tuple], str]:
    """A read-only analyst query on the published analytics file: (column names, rows, file read)."""
    return query_readonly(open_warehouse(warehouse), sql, limit=limit)


def status(warehouse: WarehouseLike = None, limit: int = 10) -> dict[str, Any]:
    """Last job runs, latest model run, the published run and the lock."""
    return job_status(open_warehouse(warehouse), limit=limit)
