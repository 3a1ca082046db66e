"""The public data API: feature tables as Polars DataFrames, samples as torch datasets, and the
README's own-model example run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from torch.utils.data import DataLoader

from rechub_store.data import FeatureTables, collate
from rechub_store.errors import UserError
from rechub_store.warehouse import Warehouse

README = Path(__file__).resolve().parents[2] / "README.md"


def test_tables_are_polars_frames_of_the_contract_tables(planted_warehouse: Warehouse) -> None:
    tables = FeatureTables(planted_warehouse)
    train = tables.samples("train")
    assert isinstance(train, pl.DataFrame) and len(train) > 0
    assert {"user_code", "target_item_code", "pos"} <= set(train.columns)
    assert train.select(["user_code", "pos"]).rows() == sorted(train.select(["user_code", "pos"]).rows())
    assert tables.vocab("item_id").get_column("code").min() == 1
    assert len(tables.history()) == 200
    with pytest.raises(UserError, match="split: expected one of train, valid, test"):
        tables.samples("training")
    with pytest.raises(UserError, match=r"expected features\.<table>"):
        tables.table("meta.builds")


def test_datasets_cut_the_history_before_each_target(planted_warehouse: Warehouse) -> None:
    tables = FeatureTables(planted_warehouse)
    history = {r[0]: r[1] for r in tables.history().select(["user_code", "item_codes"]).rows()}
    samples = tables.samples("train")
    data = tables.dataset("train", max_seq_len=4)
    assert len(data) == len(samples)
    for i in (0, 7, len(data) - 1):
        user, target, pos = samples.row(i)[:3]
        row = data[i]
        before = history[user][:pos][-4:]
        assert row["history"].tolist() == [0] * (4 - len(before)) + before  # left-padded, most recent
        assert int(row["target"]) == target == history[user][pos]
    batch = next(iter(DataLoader(data, batch_size=16, collate_fn=collate)))
    assert batch["history"].shape == (16, 4) and batch["target"].dtype == torch.int64
    stream = tables.stream("train", batch_size=32, max_seq_len=4, seed=1)
    seen = np.concatenate([b["target"].numpy() for b in DataLoader(stream, batch_size=None)])
    assert sorted(seen.tolist()) == sorted(samples.get_column("target_item_code").to_list())


def test_readme_own_model_example_runs_as_written(planted_warehouse: Warehouse) -> None:
    block = re.search(
        r"### Your own model on the feature store.*?```python\n(.*?)```", README.read_text(), re.S
    )
    assert block is not None
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 20
    code = code.replace('"warehouse/rechub.duckdb"', repr(str(planted_warehouse.path)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert torch.isfinite(scope["loss"])
