"""Reliability-suite fixtures: a real PostgreSQL server (shared with tests/publish), a baseline
warehouse with one published nightly run, and the tally (tests/tally.py) of hostile queries,
malformed inputs and fault points tried and passed that the session prints at the end
(tests/conftest.py; recorded in bench/RESULTS.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pgserver import LocalPostgres, new_database
from rel_helpers import BASE_DATE, make_events, run_in_process, write_job
from tally import TALLY, Tally


@pytest.fixture
def tally() -> Tally:
    return TALLY


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
