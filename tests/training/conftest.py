"""Fixtures: a warehouse whose feature tables hold a tiny planted-pattern dataset (sql/README.md schema)."""

from __future__ import annotations

import pytest
from planted import cycle_histories, write_feature_store

from rechub_store.data.readers import FeatureStore
from rechub_store.warehouse import Warehouse


@pytest.fixture
def planted_warehouse(warehouse: Warehouse) -> Warehouse:
    """200 users walking a 30-item cycle; features.* written directly, one successful build."""
    with warehouse.session() as con:
        write_feature_store(con, cycle_histories(200, 30, 6, 14, seed=0), 30, max_seq_len=8)
    return warehouse


@pytest.fixture(scope="session")
def planted_store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    wh = Warehouse(tmp_path_factory.mktemp("planted") / "rechub.duckdb", threads=2)
    with wh.session() as con:
        write_feature_store(con, cycle_histories(200, 30, 6, 14, seed=0), 30, max_seq_len=8)
        return FeatureStore.load(con, static_negatives=True)
