"""Reliability-suite fixtures: a real PostgreSQL server (shared with tests/publish), a baseline
warehouse with one published nightly run, and the tally (rel_helpers.Tally) of hostile queries,
malformed inputs and fault points tried and passed that the suite prints at the end (recorded in
bench/RESULTS.md)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from pgserver import LocalPostgres, new_database
from rel_helpers import BASE_DATE, TALLY, Tally, make_events, run_in_process, write_job


@pytest.fixture
def tally() -> Tally:
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not any(TALLY.counts.values()):
        return
    terminalreporter.write_line(TALLY.summary())
    out = os.environ.get("RECHUB_RELIABILITY_REPORT")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(TALLY.counts, indent=2) + "\n")


@pytest.fixture
def pg_url(pg_server: LocalPostgres) -> str:
    """A fresh database; the URL carries a password (trust auth ignores it) to check masking."""
    return new_database(pg_server, "rel", credentials="rechub:s3cretpw")


@pytest.fixture(scope="session")
def baseline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse after one successful nightly (trained model, analytics.duckdb published)."""
    root = tmp_path_factory.mktemp("baseline")
    make_events(root / "data" / "events-1.csv", n_users=60, n_items=40, seed=1, t0=1_700_000_000)
    write_job(root / "data" / "job.toml")
    run_in_process(root / "wh" / "rechub.duckdb", root / "data" / "job.toml", BASE_DATE)
    return root


@pytest.fixture
def baseline(baseline_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the baseline (warehouse folder + data folder) for one test."""
    dest = tmp_path / "case"
    shutil.copytree(baseline_dir, dest)
    return dest
