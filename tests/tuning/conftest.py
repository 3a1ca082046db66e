"""A warehouse holding a tiny planted-pattern feature store (tests/training/planted.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "planted", Path(__file__).parents[1] / "training" / "planted.py"
)
planted = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(planted)  # type: ignore[union-attr]

from rechub_store.warehouse import Warehouse  # noqa: E402


@pytest.fixture
def planted_warehouse(warehouse: Warehouse) -> Warehouse:
    """200 users walking a 30-item cycle; features.* written directly, one successful build."""
    with warehouse.session() as con:
        planted.write_feature_store(con, planted.cycle_histories(200, 30, 6, 14, seed=0), 30, max_seq_len=8)
    return warehouse
