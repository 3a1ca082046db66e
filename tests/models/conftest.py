"""A tiny planted-pattern feature store (see tests/planted.py) shared by the model tests."""

from __future__ import annotations

import duckdb
import planted
import pytest

from rechub_store.data.readers import FeatureStore


@pytest.fixture(scope="session")
def store() -> FeatureStore:
    con = duckdb.connect()
    planted.write_feature_store(con, planted.cycle_histories(200, 30, 6, 14, seed=0), 30, max_seq_len=8)
    return FeatureStore.load(con)
