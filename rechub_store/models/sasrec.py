"""SASRec: causal self-attention over the item history with learned positions."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rechub_store.data.specs import FeatureSchema
from rechub_store.models.features import Embeddings, embedding_features, fit_window, known_codes, sparse_codes
from rechub_store.models.space import TRAINER_SPACE, Choice, Float, Int, Range

# Searched by `rechub-store tune` (see models/space.py); embed_dim choices are divisible by every head count.
SEARCH_SPACE: dict[str, Range] = {
    **TRAINER_SPACE,
    "num_layers": Int(1, 3),
    "num_heads": Choice((1, 2, 4)),
    "dropout": Float(0.0, 0.5),
    "tie_items": Choice((True, False)),
}


class _Block(nn.Module):
    """Pre-norm causal multi-head attention + point-wise feed-forward, padding kept at zero."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor, keep: Tensor) -> Tensor:
        b, length, d = x.shape
        q, k, v = (
            self.qkv(self.norm1(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.dropout(self.out(att.transpose(1, 2).reshape(b, length, d)))
        x = x + self.dropout(self.ff(self.norm2(x)))
        return x * keep


class SASRec(nn.Module):
    """User vector = the last position's output; items are the history's item_id embeddings (dot), or
    their own output table with `tie_items=False`.

    Positions count from the window's first real item, and padded positions attend only to
    themselves and are zeroed after each block, so padding never changes a user vector.
    """

    name = "sasrec"
    score_kind = "dot"

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
        tie_items: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.schema = schema
        self.config: dict[str, Any] = dict(
            embed_dim=embed_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            dropout=dropout,
            tie_items=tie_items,
        )
        self.temperature = 1.0
        self.max_seq_len = schema.history.max_len
        self.emb = Embeddings(embedding_features(schema), embed_dim)
        self.positions = nn.Embedding(self.max_seq_len, embed_dim)
        nn.init.normal_(self.positions.weight, std=0.05)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.scale = math.sqrt(embed_dim)
        # tie_items=False: items are scored with their own output table, not the history's input
        # table, so "what follows i" need not resemble "i" (a chain i -> j is not symmetric)
        n_items = self.emb.table("item.item_id").num_embeddings
        self.output_items = None if tie_items else nn.Embedding(n_items, embed_dim, padding_idx=0)
        if self.output_items is not None:
            nn.init.normal_(self.output_items.weight, std=0.05)
            with torch.no_grad():
                self.output_items.weight[0].zero_()

    def _encode(self, hist: Tensor) -> Tensor:
        """[B, L] left-padded codes -> [B, L, D]: column j summarises the items up to column j."""
        if hist.shape[1] > self.max_seq_len:
            hist = fit_window(hist, self.max_seq_len)
        length = hist.shape[1]
        valid = hist > 0
        keep = valid.unsqueeze(-1).to(torch.float32)
        # positions count from the window's first real item: padding never shifts them, and a
        # prefix sees the same positions in training (all columns) as at inference (last column)
        position = (valid.long().cumsum(1) - 1).clamp(min=0)
        x = self.emb("hist", hist) * self.scale + self.positions(position)
        x = self.emb_dropout(x) * keep
        idx = torch.arange(length, device=hist.device)
        causal = idx.unsqueeze(1) >= idx.unsqueeze(0)  # query i sees keys j <= i
        eye = torch.eye(length, dtype=torch.bool, device=hist.device)
        allowed = (causal.unsqueeze(0) & valid.unsqueeze(1)) | eye.unsqueeze(0)
        allowed = allowed.unsqueeze(1)  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.norm(x)

    def user_tower(self, batch: dict[str, Tensor]) -> Tensor:
        return self._encode(batch["hist"])[:, -1]

    def sequence_outputs(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, L, D]: the user vector after each window column (causal), for all-position training."""
        return self._encode(batch["hist"])

    def item_tower(self, batch: dict[str, Tensor]) -> Tensor:
        n = batch["item_code"].shape[0]
        codes = sparse_codes(batch, "i.item_id", n)
        if self.output_items is not None:
            return self.output_items(known_codes(codes, self.output_items.num_embeddings))
        return self.emb("item.item_id", codes)
