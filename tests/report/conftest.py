"""Fixtures for the run reports: one small warehouse with three nightly runs, and one headless browser.

The warehouse is made once per session, the way a user makes one: `rechub-store demo` (run 1,
published), a nightly that ingests a file with bad rows and retrains (run 2, published), and a
nightly whose evaluate step fails (run 3). Tests that change it work on a copy.

The browser is the system Chromium (Debian's `chromium`, installed by .ci/setup) driven by
Playwright; no browser is downloaded. Without one the browser tests skip, except with
RECHUB_REQUIRE_BROWSER=1 (CI), where they fail.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.errors import UserError
from rechub_store.jobs.config import JobConfig
from rechub_store.jobs.job import run_nightly
from rechub_store.warehouse import Warehouse

REQUIRE_ENV = "RECHUB_REQUIRE_BROWSER"
BROWSER_ENV = "RECHUB_CHROMIUM"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
D2, D3 = dt.date(2031, 3, 2), dt.date(2031, 3, 3)  # run after the demo, whose run is dated today
RUN2, RUN3 = f"nightly-{D2.isoformat()}", f"nightly-{D3.isoformat()}"

JOB = """
[job]
name = "nightly"
[[ingest.sources]]
path = "incoming/*.csv"
user_col = "user_id"
item_col = "item_id"
time_col = "ts"
[ingest.sources.options]
max_reject_ratio = 0.5
[train]
policy = "{policy}"
model = "youtubednn"
[train.params]
epochs = 2
seed = 1
[score]
k = 10
[score.annoy]
sample_users = 200
[evaluate]
ks = [5, 10]
max_users = 250
[publish]
keep_runs = 5
"""


def fetch(path: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def write_job(root: Path, policy: str) -> JobConfig:
    path = root / f"job-{policy}.toml"
    path.write_text(JOB.format(policy=policy))
    return JobConfig.load(path)


def add_events(wh: Warehouse, name: str) -> None:
    """New events (a day after the last) for 40 users on items recommended to them, plus 3 bad rows."""
    rows = fetch(
        wh.analytics_path,
        "SELECT user_id, item_id FROM recommendations WHERE rank <= 3 AND user_id IN "
        "(SELECT DISTINCT user_id FROM recommendations ORDER BY user_id LIMIT 40) ORDER BY user_id, rank",
    )
    (last,) = fetch(wh.path, "SELECT max(ts) FROM raw.interactions")[0]
    lines = ["user_id,item_id,ts"]
    for i, (user, item) in enumerate(rows):
        ts = (last + dt.timedelta(days=1, seconds=i)).isoformat() + "Z"
        lines.append(f'"{user}","{item}",{ts}')
    lines += [
        f',"{rows[0][1]}",{last.isoformat()}Z',
        f'"{rows[0][0]}","{rows[0][1]}",not-a-time',
        "u1,,2020-01-01",
    ]
    folder = wh.root / "incoming"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n")


@dataclass
class ReportWarehouse:
    wh: Warehouse
    demo_output: str
    failed_error: str
    runs: list[str]  # oldest first: the demo's (published), a retrain (published), a failed one

    def copy(self, dest: Path) -> Warehouse:
        shutil.copytree(self.wh.root, dest)
        return Warehouse(dest / "rechub.duckdb", threads=2)


@pytest.fixture(scope="session")
def report_wh(tmp_path_factory: pytest.TempPathFactory) -> ReportWarehouse:
    root = tmp_path_factory.mktemp("report-wh")
    wh = Warehouse(root / "rechub.duckdb", threads=2)
    demo = CliRunner().invoke(
        app,
        ["--warehouse", str(wh.path), "demo", "--users", "300", "--items", "120", "--events", "6000",
         "--epochs", "1", "--k", "10", "--model", "gru4rec"],
    )  # fmt: skip
    assert demo.exit_code == 0, demo.output
    run1 = f"nightly-{dt.datetime.now(dt.UTC).date().isoformat()}"  # the demo runs for today
    assert (wh.root / "reports" / f"{run1}.html").exists()
    add_events(wh, "day2.csv")
    assert run_nightly(wh, write_job(root, "always"), D2).status == "success"
    os.environ["RECHUB_FAULT"] = "evaluate:fail"
    try:
        with pytest.raises(UserError) as failed:
            run_nightly(wh, write_job(root, "never"), D3)
    finally:
        del os.environ["RECHUB_FAULT"]
    return ReportWarehouse(wh, demo.output, str(failed.value), [run1, RUN2, RUN3])


# ---------------------------------------------------------------------------- the browser
def find_browser() -> str | None:
    explicit = os.environ.get(BROWSER_ENV)
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium for the session (Playwright driving the system browser)."""
    required = os.environ.get(REQUIRE_ENV) == "1"
    executable = find_browser()
    reason = None
    if executable is None:
        reason = f"no Chromium found (install Debian's `chromium`, or set {BROWSER_ENV})"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = reason or "Playwright for Python is not installed (pip install -e '.[dev]')"
    if reason:
        if required:
            pytest.fail(f"a browser is required ({REQUIRE_ENV}=1): {reason}")
        pytest.skip(reason)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Visit:
    """A page opened from disk, with what happened while it loaded."""

    page: Any
    console_errors: list[str]
    requests: list[str]
    load_ms: float


def visit(browser: Any, path: Path) -> Visit:
    page = browser.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    page.on("request", lambda req: requests.append(req.url))
    page.goto(path.resolve().as_uri(), wait_until="load")
    load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    return Visit(page, errors, requests, load_ms)
