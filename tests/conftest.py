"""Shared fixtures: a fresh warehouse per test, and deterministic small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RECHUB_THREADS", "2")

from rechub_store.warehouse import Warehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    """An empty warehouse in its own folder (the DuckDB file is created on first connect)."""
    return Warehouse(tmp_path / "wh" / "rechub.duckdb", threads=2)
