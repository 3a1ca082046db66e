"""Pooling masks padding; shared tables are one table; schemas round-trip through artifacts."""

from __future__ import annotations

import torch

from rechub_store.data.readers import FeatureStore
from rechub_store.models.features import Embeddings, FeatureSchema, SequenceFeature, SparseFeature, pool


def test_pool_masks_padding() -> None:
    emb = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [9.0, 9.0]]])
    codes = torch.tensor([[0, 4, 2]])
    torch.testing.assert_close(pool(emb, codes, "mean"), torch.tensor([[6.0, 7.0]]))
    torch.testing.assert_close(pool(emb, codes, "sum"), torch.tensor([[12.0, 14.0]]))
    torch.testing.assert_close(pool(emb, codes, "concat"), torch.tensor([[0.0, 0.0, 3.0, 5.0, 9.0, 9.0]]))
    empty = torch.zeros(1, 3, dtype=torch.long)
    torch.testing.assert_close(pool(emb, empty, "mean"), torch.zeros(1, 2))


def test_shared_embedding_is_one_table_and_padding_is_zero() -> None:
    emb = Embeddings([SparseFeature("item", 10), SequenceFeature("hist", 10, shared_with="item")], 4)
    assert emb.table("hist") is emb.table("item")
    assert len(list(emb.parameters())) == 1
    assert torch.equal(emb("hist", torch.tensor([0])), torch.zeros(1, 4))
    # codes past the vocabulary (a newer build) read as padding
    assert torch.equal(emb("item", torch.tensor([10, 99])), torch.zeros(2, 4))


def test_schema_is_derived_from_the_store_and_round_trips(store: FeatureStore) -> None:
    schema = store.schema()
    assert schema.n_items == 31 and schema.n_users == 201
    assert [f.name for f in schema.user_sparse] == ["user_id", "gender"]
    assert [f.name for f in schema.item_sparse] == ["item_id", "parity"]
    assert [f.name for f in schema.user_dense] == ["age", "event_count"]
    assert [f.name for f in schema.item_dense] == ["popularity", "price"]
    assert schema.tags is not None and schema.tags.vocab_size == 4
    assert schema.history.max_len == 8 and schema.history.shared_with == "item_id"
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
