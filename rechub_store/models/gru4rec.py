"""GRU4Rec: a GRU over the item history; the user vector is the state after the last real item."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rechub_store.data.specs import FeatureSchema
from rechub_store.models.features import Embeddings, embedding_features, sparse_codes


def right_align(hist: Tensor) -> tuple[Tensor, Tensor]:
    """Left-padded [B, L] -> right-padded [B, L] and lengths, so the GRU meets no padding before
    the last real item (its output there cannot depend on how much padding follows)."""
    length = (hist > 0).sum(1)
    cols = torch.arange(hist.shape[1], device=hist.device)
    src = (cols.unsqueeze(0) + (hist.shape[1] - length).unsqueeze(1)) % hist.shape[1]
    return hist.gather(1, src), length


class GRU4Rec(nn.Module):
    """Item embeddings -> GRU -> linear projection; items are the (shared) item_id embeddings.
    Dot-product score."""

    name = "gru4rec"
    score_kind = "dot"

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.schema = schema
        self.config: dict[str, Any] = dict(
            embed_dim=embed_dim, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout
        )
        self.temperature = 1.0
        self.max_seq_len = schema.history.max_len
        self.emb = Embeddings(embedding_features(schema), embed_dim)
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(embed_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.proj = nn.Linear(hidden_size, embed_dim)

    def user_tower(self, batch: dict[str, Tensor]) -> Tensor:
        hist, length = right_align(batch["hist"])
        out, _ = self.gru(self.emb_dropout(self.emb("hist", hist)))
        last = out[torch.arange(out.shape[0], device=out.device), (length - 1).clamp(min=0)]
        last = last * (length > 0).unsqueeze(1).to(last.dtype)  # no history: zero state
        return self.proj(last)

    def sequence_outputs(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, L, D]: the user vector after each window column, in the left-padded layout
        (padding columns hold meaningless values), for all-position training."""
        hist, length = right_align(batch["hist"])
        out, _ = self.gru(self.emb_dropout(self.emb("hist", hist)))
        width = hist.shape[1]
        cols = torch.arange(width, device=hist.device)
        src = (cols.unsqueeze(0) - (width - length).unsqueeze(1)) % width  # left column -> right column
        return self.proj(out.gather(1, src.unsqueeze(-1).expand(-1, -1, out.shape[2])))

    def item_tower(self, batch: dict[str, Tensor]) -> Tensor:
        n = batch["item_code"].shape[0]
        return self.emb("item.item_id", sparse_codes(batch, "i.item_id", n))
