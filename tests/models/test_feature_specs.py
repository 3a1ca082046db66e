"""Pooling masks padding; shared tables are one table; schemas round-trip through artifacts; the
fast paths (index_add pooling, small lookups projected through the first layer) are exact."""

from __future__ import annotations

import torch

from rechub_store.data.readers import FeatureStore
from rechub_store.data.specs import FeatureSchema, SequenceFeature, SparseFeature
from rechub_store.models.features import Embeddings, SmallLookup, linear_over_parts, pool


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


def test_pooled_lookup_matches_the_masked_mean_in_values_and_gradients() -> None:
    torch.manual_seed(0)
    emb = Embeddings([SparseFeature("item", 12), SequenceFeature("hist", 12, shared_with="item")], 3)
    codes = torch.tensor([[0, 0, 5, 7], [3, 3, 3, 11], [0, 0, 0, 0], [1, 2, 0, 4]])
    weight = emb.table("item").weight
    for mode in ("mean", "sum"):
        weight.grad = None
        out = emb.pooled("hist", codes, mode)
        out.pow(2).sum().backward()
        assert weight.grad.is_sparse  # row-sparse backward; the optimizer densifies it for dense tables
        got = weight.grad.to_dense()
        weight.grad = None
        want = pool(torch.nn.functional.embedding(codes, weight, padding_idx=0), codes, mode)
        want.pow(2).sum().backward()
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(got, weight.grad)
        assert torch.count_nonzero(got[0]) == 0  # padding never trained


def test_first_layer_over_small_lookups_equals_the_concatenated_linear() -> None:
    torch.manual_seed(0)
    feats = [SparseFeature("user_id", 500), SparseFeature("gender", 4), SparseFeature("country", 7)]
    emb = Embeddings(feats, 8)
    linear = torch.nn.Linear(8 * 3 + 2, 5)
    codes = {"user_id": torch.randint(0, 500, (64,)), "gender": torch.randint(0, 4, (64,))}
    codes["country"] = torch.randint(0, 7, (64,))
    dense = torch.rand(64, 2)
    parts = [emb.part(name, codes[name]) for name in ("user_id", "gender", "country")] + [dense]
    assert [isinstance(p, SmallLookup) for p in parts[:3]] == [False, True, True]  # rows <= dim
    out = linear_over_parts(linear, parts)
    grads_fused = torch.autograd.grad(out.square().sum(), [*emb.parameters(), *linear.parameters()])
    full = torch.cat([emb(name, codes[name]) for name in ("user_id", "gender", "country")] + [dense], 1)
    ref = linear(full)
    grads_ref = torch.autograd.grad(ref.square().sum(), [*emb.parameters(), *linear.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads_fused, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gender_grad = grads_fused[1]
    assert torch.count_nonzero(gender_grad[0]) == 0  # the padding row gets no gradient
