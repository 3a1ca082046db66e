"""DSSM: a user MLP and an item MLP over sparse + dense features, cosine score with temperature."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rechub_store.data.specs import FeatureSchema, Pooling
from rechub_store.models.features import (
    Embeddings,
    embedding_features,
    item_input_dim,
    item_inputs,
    mlp,
    run_mlp,
    user_input_dim,
    user_inputs,
)


class DSSM(nn.Module):
    """Two MLP towers. User: user_id + user attributes + dense + pooled history; item: item_id +
    item attributes + pooled tags + dense. Vectors are compared by cosine / temperature."""

    name = "dssm"
    score_kind = "cosine"

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 64,
        hidden: tuple[int, ...] = (256, 128),
        dropout: float = 0.0,
        temperature: float = 0.05,
        history_pooling: Pooling = "mean",
    ) -> None:
        super().__init__()
        self.schema = schema
        self.config: dict[str, Any] = dict(
            embed_dim=embed_dim,
            hidden=list(hidden),
            dropout=dropout,
            temperature=temperature,
            history_pooling=history_pooling,
        )
        self.temperature = temperature
        self.max_seq_len = schema.history.max_len
        self.history_pooling: Pooling = history_pooling
        self.emb = Embeddings(embedding_features(schema), embed_dim)
        u_in = user_input_dim(schema, embed_dim, True, history_pooling)
        self.user_mlp = mlp([u_in, *hidden, embed_dim], dropout)
        self.item_mlp = mlp([item_input_dim(schema, embed_dim), *hidden, embed_dim], dropout)

    def user_tower(self, batch: dict[str, Tensor]) -> Tensor:
        return run_mlp(self.user_mlp, user_inputs(self.schema, self.emb, batch, True, self.history_pooling))

    def item_tower(self, batch: dict[str, Tensor]) -> Tensor:
        return run_mlp(self.item_mlp, item_inputs(self.schema, self.emb, batch))
