"""A tiny planted-pattern feature store (see tests/training/planted.py) shared by the model tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb
import pytest

_spec = importlib.util.spec_from_file_location(
    "planted", Path(__file__).parents[1] / "training" / "planted.py"
)
planted = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(planted)  # type: ignore[union-attr]

from rechub_store.data.readers import FeatureStore  # noqa: E402


@pytest.fixture(scope="session")
def store() -> FeatureStore:
    con = duckdb.connect()
    planted.write_feature_store(con, planted.cycle_histories(200, 30, 6, 14, seed=0), 30, max_seq_len=8)
    return FeatureStore.load(con)
