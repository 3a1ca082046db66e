"""Feature specs and the embedding/pooling layer every model shares.

Specs are derived from the feature store's metadata (`FeatureStore.schema()`), never typed in
by hand, and are stored in model artifacts as plain dicts so a module can be rebuilt later.
Code 0 is padding/unknown everywhere: its embedding row is zero and it is masked out of pooling.
Codes at or above a table's vocabulary size (values added by a later build) are mapped to 0, so
an older model keeps working on a newer feature store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Pooling = Literal["mean", "sum", "concat"]


@dataclass(frozen=True)
class SparseFeature:
    """A categorical column: integer codes 1..vocab_size-1, 0 = padding/unknown."""

    name: str
    vocab_size: int
    shared_with: str | None = None  # name of the feature whose embedding table this one uses


@dataclass(frozen=True)
class DenseFeature:
    """A numeric column, already min-max scaled to [0, 1] by the feature store."""

    name: str


@dataclass(frozen=True)
class SequenceFeature:
    """A padded list of codes (history, tags); pooled with padding masked out."""

    name: str
    vocab_size: int
    pooling: Pooling = "mean"
    max_len: int = 50
    shared_with: str | None = None


@dataclass(frozen=True)
class FeatureSchema:
    """Every feature a model may use, split by tower. Batch keys: see `rechub_store.data.readers`."""

    user_sparse: tuple[SparseFeature, ...]
    user_dense: tuple[DenseFeature, ...]
    item_sparse: tuple[SparseFeature, ...]
    item_dense: tuple[DenseFeature, ...]
    history: SequenceFeature
    tags: SequenceFeature | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return self.item("item_id").vocab_size

    @property
    def n_users(self) -> int:
        return next(f.vocab_size for f in self.user_sparse if f.name == "user_id")

    def item(self, name: str) -> SparseFeature:
        return next(f for f in self.item_sparse if f.name == name)

    def vocab_sizes(self) -> dict[str, int]:
        out = {f"user.{f.name}": f.vocab_size for f in self.user_sparse}
        out.update({f"item.{f.name}": f.vocab_size for f in self.item_sparse})
        if self.tags is not None:
            out["item.tags"] = self.tags.vocab_size
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        return cls(
            user_sparse=tuple(SparseFeature(**f) for f in data["user_sparse"]),
            user_dense=tuple(DenseFeature(**f) for f in data["user_dense"]),
            item_sparse=tuple(SparseFeature(**f) for f in data["item_sparse"]),
            item_dense=tuple(DenseFeature(**f) for f in data["item_dense"]),
            history=SequenceFeature(**data["history"]),
            tags=SequenceFeature(**data["tags"]) if data.get("tags") else None,
            extra=dict(data.get("extra") or {}),
        )


def known_codes(codes: Tensor, vocab_size: int) -> Tensor:
    """Map codes outside [0, vocab_size) (new values of a later build) to the padding code 0."""
    return torch.where((codes >= 0) & (codes < vocab_size), codes, torch.zeros_like(codes))


def _key(name: str) -> str:
    return name.replace(".", "__")


class Embeddings(nn.Module):
    """Named embedding tables with padding row 0; `shared_with` reuses another feature's table."""

    def __init__(self, features: list[SparseFeature | SequenceFeature], dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.tables = nn.ModuleDict()
        self._table_of: dict[str, str] = {}
        self._vocab: dict[str, int] = {}
        for f in features:
            if f.shared_with is None and _key(f.name) not in self.tables:
                self.tables[_key(f.name)] = nn.Embedding(f.vocab_size, dim, padding_idx=0)
        for f in features:
            owner = _key(f.shared_with or f.name)
            if owner not in self.tables:
                raise ValueError(
                    f"feature {f.name} shares the table of {f.shared_with}, which is not declared"
                )
            self._table_of[f.name] = owner
            self._vocab[f.name] = self.tables[owner].num_embeddings
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[0].zero_()

    def table(self, name: str) -> nn.Embedding:
        return self.tables[self._table_of[name]]

    def forward(self, name: str, codes: Tensor) -> Tensor:
        codes = known_codes(codes, self._vocab[name])
        return self.table(name)(codes)

    def pooled(self, name: str, codes: Tensor, mode: Pooling) -> Tensor:
        """Pool a [B, L] code matrix; mean/sum run as one embedding_bag with padding 0 excluded."""
        if mode == "concat":
            return pool(self(name, codes), codes, mode)
        codes = known_codes(codes, self._vocab[name])
        return F.embedding_bag(codes, self.table(name).weight, mode=mode, padding_idx=0)


def pool(emb: Tensor, codes: Tensor, mode: Pooling) -> Tensor:
    """Pool [B, L, D] over L with code-0 positions masked out (an all-padding row pools to zeros)."""
    mask = (codes > 0).unsqueeze(-1).to(emb.dtype)
    if mode == "concat":
        return (emb * mask).flatten(1)
    summed = (emb * mask).sum(1)
    if mode == "sum":
        return summed
    return summed / mask.sum(1).clamp(min=1.0)


def mlp(dims: list[int], dropout: float = 0.0, last_activation: bool = False) -> nn.Sequential:
    """Linear layers with ReLU (and dropout) between them."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def stack_dense(batch: dict[str, Tensor], prefix: str, features: tuple[DenseFeature, ...], n: int) -> Tensor:
    """Dense columns as [n, len(features)]; a column missing from the batch reads as 0."""
    cols = [batch.get(f"{prefix}{f.name}") for f in features]
    ref = next(iter(batch.values()))
    return (
        torch.stack([c.float() if c is not None else torch.zeros(n, device=ref.device) for c in cols], dim=1)
        if cols
        else torch.zeros(n, 0, device=ref.device)
    )


def sparse_codes(batch: dict[str, Tensor], key: str, n: int) -> Tensor:
    """A sparse column from a batch; a column the batch lacks (older store) reads as padding."""
    value = batch.get(key)
    if value is None:
        ref = next(iter(batch.values()))
        return torch.zeros(n, dtype=torch.long, device=ref.device)
    return value


def user_input_dim(schema: FeatureSchema, dim: int, use_history: bool, history_pooling: Pooling) -> int:
    hist_width = dim * (schema.history.max_len if history_pooling == "concat" else 1)
    return dim * len(schema.user_sparse) + len(schema.user_dense) + (hist_width if use_history else 0)


def user_inputs(
    schema: FeatureSchema,
    emb: Embeddings,
    batch: dict[str, Tensor],
    use_history: bool,
    history_pooling: Pooling,
) -> Tensor:
    """Concatenated user-side input: user sparse embeddings + dense columns (+ pooled history)."""
    hist = batch["hist"]
    n = hist.shape[0]
    parts = [emb(f"user.{f.name}", sparse_codes(batch, f"u.{f.name}", n)) for f in schema.user_sparse]
    parts.append(stack_dense(batch, "ud.", schema.user_dense, n))
    if use_history:
        if history_pooling == "concat" and hist.shape[1] != schema.history.max_len:
            hist = fit_window(hist, schema.history.max_len)
        parts.append(emb.pooled("hist", hist, history_pooling))
    return torch.cat(parts, dim=1)


def item_input_dim(schema: FeatureSchema, dim: int) -> int:
    return dim * (len(schema.item_sparse) + (1 if schema.tags else 0)) + len(schema.item_dense)


def item_inputs(schema: FeatureSchema, emb: Embeddings, batch: dict[str, Tensor]) -> Tensor:
    """Concatenated item-side input: item sparse embeddings (item_id first) + pooled tags + dense."""
    n = batch["item_code"].shape[0]
    parts = [emb(f"item.{f.name}", sparse_codes(batch, f"i.{f.name}", n)) for f in schema.item_sparse]
    if schema.tags is not None:
        tags = batch.get("tags")
        if tags is None:
            tags = torch.zeros(n, 1, dtype=torch.long)
        parts.append(emb.pooled("tags", tags, schema.tags.pooling))
    parts.append(stack_dense(batch, "id.", schema.item_dense, n))
    return torch.cat(parts, dim=1)


def fit_window(hist: Tensor, length: int) -> Tensor:
    """Left-pad or cut (keeping the most recent items) a left-padded window to `length` columns."""
    cur = hist.shape[1]
    if cur >= length:
        return hist[:, cur - length :]
    return torch.nn.functional.pad(hist, (length - cur, 0))


def embedding_features(schema: FeatureSchema) -> list[SparseFeature | SequenceFeature]:
    """Every embedded feature under its tower-qualified name; history shares the item_id table."""
    feats: list[SparseFeature | SequenceFeature] = []
    feats += [SparseFeature(f"item.{f.name}", f.vocab_size) for f in schema.item_sparse]
    feats += [SparseFeature(f"user.{f.name}", f.vocab_size) for f in schema.user_sparse]
    feats.append(
        SequenceFeature(
            "hist", schema.n_items, schema.history.pooling, schema.history.max_len, shared_with="item.item_id"
        )
    )
    if schema.tags is not None:
        feats.append(
            SequenceFeature("tags", schema.tags.vocab_size, schema.tags.pooling, schema.tags.max_len)
        )
    return feats
