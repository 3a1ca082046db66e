"""Shared fixtures: a fresh warehouse per test, and deterministic small thread counts; and the
reliability tally's end-of-session summary, added up over pytest-xdist's workers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RECHUB_THREADS", "2")

from pgserver import REQUIRE_ENV, LocalPostgres, PostgresUnavailable, acquire, release
from planted import cycle_histories, write_feature_store
from tally import TALLY

from rechub_store.data.readers import FeatureStore
from rechub_store.warehouse import Warehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    """An empty warehouse in its own folder (the DuckDB file is created on first connect)."""
    return Warehouse(tmp_path / "wh" / "rechub.duckdb", threads=2)


@pytest.fixture
def planted_warehouse(warehouse: Warehouse) -> Warehouse:
    """200 users walking a 30-item cycle (tests/planted.py); features.* written directly, one build."""
    with warehouse.session() as con:
        write_feature_store(con, cycle_histories(200, 30, 6, 14, seed=0), 30, max_seq_len=8)
    return warehouse


@pytest.fixture(scope="session")
def planted_store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    wh = Warehouse(tmp_path_factory.mktemp("planted") / "rechub.duckdb", threads=2)
    with wh.session() as con:
        write_feature_store(con, cycle_histories(200, 30, 6, 14, seed=0), 30, max_seq_len=8)
        return FeatureStore.load(con, static_negatives=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server on 127.0.0.1 for the session (tests/pgserver.py).

    Skips when none can be started, except with RECHUB_REQUIRE_POSTGRES=1 (CI), where it fails.
    """
    try:
        server = acquire()
    except PostgresUnavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL required ({REQUIRE_ENV}=1) but unavailable: {exc}")
        pytest.skip(f"no local PostgreSQL server could be started: {exc}")
    yield server
    release()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Spark tests first: their module fixture (a Spark build) is the longest single step, and
    started last it would leave the other xdist worker idle at the end."""
    items.sort(key=lambda item: item.get_closest_marker("spark") is None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its reliability tally to the controller (`pytest_testnodedown`)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["reliability_tally"] = dict(TALLY.counts)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """The controller adds up what each worker sent (only called under xdist)."""
    TALLY.add(getattr(node, "workeroutput", {}).get("reliability_tally", {}))


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: pytest.Config) -> None:
    """The reliability line, printed by the process the user sees (never by an xdist worker)."""
    if getattr(config, "workeroutput", None) is not None or not any(TALLY.counts.values()):
        return
    terminalreporter.write_line(TALLY.summary())
    out = os.environ.get("RECHUB_RELIABILITY_REPORT")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(TALLY.counts, indent=2) + "\n")
