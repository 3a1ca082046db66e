"""Shared fixtures: a fresh warehouse per test, and deterministic small thread counts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RECHUB_THREADS", "2")

from pgserver import REQUIRE_ENV, LocalPostgres, PostgresUnavailable, acquire, release
from planted import cycle_histories, write_feature_store

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
