"""Run reports: one static HTML page per run, and an index of runs, in `<warehouse folder>/reports/`.

`build_report` is the public entry point (the CLI's `rechub-store report` calls it, and the
nightly job calls it after publish with its own connection). Data comes from SQL over the
warehouse, or the published analytics file while a job holds the warehouse (`source.py`,
`data.py`, `sql/`); charts are matplotlib figures inlined as SVG (`charts.py`); `page.py`
assembles the HTML. Files are written atomically (a temporary file renamed into place), so a
browser or a static file server never sees half a page.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb

from rechub_store.errors import UserError
from rechub_store.publish.analytics import _file_stem
from rechub_store.report import page
from rechub_store.report.charts import quiet_matplotlib
from rechub_store.report.data import TREND_RUNS, gather, index_metrics, list_runs, local_file
from rechub_store.report.source import Source, attach, open_source
from rechub_store.results.tables import utcnow
from rechub_store.warehouse import Warehouse

log = logging.getLogger(__name__)

REPORTS_DIR = "reports"
INDEX_FILE = "index.html"
INDEX_RUNS = 200  # runs listed in the index, newest first


@dataclass
class ReportResult:
    run_id: str
    status: str  # the run's status
    path: str
    index: str | None
    bytes: int
    seconds: float
    source: str  # the database read: the warehouse or analytics.duckdb

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reports_dir(warehouse: Warehouse) -> Path:
    return warehouse.root / REPORTS_DIR


def page_path(warehouse: Warehouse, run_id: str) -> Path:
    """`reports/<run_id>.html` (run ids that are not safe file names get a hashed stem)."""
    return reports_dir(warehouse) / f"{_file_stem(run_id)}.html"


def write_atomic(path: Path, text: str) -> int:
    """Write `path` through a temporary file in the same folder, fsync it, rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = text.encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write the report {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return len(data)


@contextlib.contextmanager
def _source(warehouse: Warehouse, con: duckdb.DuckDBPyConnection | None) -> Any:
    if con is not None:
        with attach(con, warehouse) as src:
            yield src
    else:
        with open_source(warehouse) as src:
            yield src


def build_report(
    warehouse: Warehouse,
    run_id: str | None = None,
    out: Path | str | None = None,
    *,
    con: duckdb.DuckDBPyConnection | None = None,
    trend_runs: int = TREND_RUNS,
) -> ReportResult:
    """Write the page of `run_id` (default: the newest run) and, in the reports folder, refresh the index.

    `out` is a file or an existing folder; by default `<warehouse folder>/reports/<run_id>.html`.
    Only a page written into the reports folder refreshes `reports/index.html` and links to it.
    `con` is an open warehouse connection to read through (the nightly job's); without it the
    warehouse is opened read-only, or analytics.duckdb while a job holds the warehouse.
    """
    t0 = time.perf_counter()
    generated = utcnow()
    folder = reports_dir(warehouse)
    with _source(warehouse, con) as src, quiet_matplotlib():
        data = gather(src, run_id, trend_runs=trend_runs)
        target = page_path(warehouse, data.run.run_id)
        if out is not None:
            out = Path(out)
            target = out / target.name if out.is_dir() else out
        in_reports = target.parent.resolve() == folder.resolve()
        links: dict[str, str | None] = {"index": INDEX_FILE if in_reports else None, "log": None}
        log_file = local_file(Path(data.run.log_path), warehouse.logs_dir) if data.run.log_path else None
        if log_file and log_file.exists():
            links["log"] = page.href(log_file, target.parent)
        size = write_atomic(target, page.run_page(data, links, generated))
        index = write_index(src, folder, generated) if in_reports else None
    seconds = round(time.perf_counter() - t0, 3)
    log.info("report for %s written to %s (%d bytes, %.2fs)", data.run.run_id, target, size, seconds)
    return ReportResult(
        data.run.run_id,
        data.run.status,
        str(target),
        str(index) if index else None,
        size,
        seconds,
        str(src.path),
    )


def write_index(src: Source, folder: Path, generated: dt.datetime | None = None) -> Path:
    """`reports/index.html`: the latest runs, newest first, linking the pages that exist in `folder`."""
    runs = list_runs(src)[-INDEX_RUNS:]
    pages, logs = {}, {}
    for r in runs:
        candidate = folder / f"{_file_stem(r.run_id)}.html"
        if candidate.exists():
            pages[r.run_id] = page.href(candidate, folder)
        log_file = local_file(Path(r.log_path), src.warehouse.logs_dir) if r.log_path else None
        if log_file and log_file.exists():
            logs[r.run_id] = page.href(log_file, folder)
    metric, headline = index_metrics(src, runs)
    html = page.index_page(runs, headline, metric, pages, logs, src.path.name, generated or utcnow())
    path = folder / INDEX_FILE
    write_atomic(path, html)
    return path


__all__ = ["REPORTS_DIR", "ReportResult", "build_report", "page_path", "reports_dir", "write_index"]
