"""The embedding/pooling layer every model shares, over the feature specs of `data.specs`.

Code 0 is padding/unknown everywhere: its embedding row is zero and it is masked out of pooling.
Codes at or above a table's vocabulary size (values added by a later build) are mapped to 0, so
an older model keeps working on a newer feature store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rechub_store.data.readers import FeatureStore
from rechub_store.data.specs import DenseFeature, FeatureSchema, Pooling, SequenceFeature, SparseFeature


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
        # pooled lookups return row-sparse gradients unless this is off (DDP averages dense ones)
        self.sparse_pooling = True
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

    def part(self, name: str, codes: Tensor) -> InputPart:
        """A tower input block: the lookup itself for a table with no more rows than columns (its
        projection by `linear_over_parts` then costs no more than the row-by-row product), else
        the looked-up vectors."""
        table = self.table(name)
        if table.num_embeddings <= table.embedding_dim and not table.sparse:
            return SmallLookup(table.weight, known_codes(codes, self._vocab[name]))
        return self(name, codes)

    def pooled(self, name: str, codes: Tensor, mode: Pooling) -> Tensor:
        """Pool a [B, L] code matrix with padding (code 0) left out.

        mean/sum run as one `embedding_bag` over the real codes only (flat, with offsets) and
        a row-sparse backward. Its dense backward sorts every code on CPU; the sparse one
        gathers the gradient rows and lets them be added into the table's gradient. A table
        the optimizer keeps dense gets that gradient densified (`training/optim.py`).
        """
        if mode == "concat":
            return pool(self(name, codes), codes, mode)
        codes = known_codes(codes, self._vocab[name])
        real = codes > 0
        count = real.sum(1)
        offsets = torch.cumsum(count, 0) - count
        weight = self.table(name).weight
        return F.embedding_bag(codes[real], weight, offsets, mode=mode, sparse=self.sparse_pooling)


def pool(emb: Tensor, codes: Tensor, mode: Pooling) -> Tensor:
    """Pool [B, L, D] over L with code-0 positions masked out (an all-padding row pools to zeros)."""
    mask = (codes > 0).unsqueeze(-1).to(emb.dtype)
    if mode == "concat":
        return (emb * mask).flatten(1)
    summed = (emb * mask).sum(1)
    if mode == "sum":
        return summed
    return summed / mask.sum(1).clamp(min=1.0)


@dataclass(frozen=True)
class SmallLookup:
    """An embedding lookup left unevaluated: `weight[codes]`, row 0 = padding (zero, never trained)."""

    weight: Tensor  # [V, D]
    codes: Tensor  # [B]


InputPart = Tensor | SmallLookup


def linear_over_parts(linear: nn.Linear, parts: list[InputPart]) -> Tensor:
    """`linear(torch.cat(parts, 1))` with the lookups evaluated, computed block by block.

    Small-vocabulary lookups (age bucket, country, ...) are not multiplied row by row: each table
    is projected whole (`table @ W_block.T`, V rows), the projections are stacked, and one
    multi-hot [B, sum V] matmul adds every row's entries. Same numbers up to float rounding, same
    parameters; with a user's four attribute columns it takes 4 x 64 of YoutubeDNN's 386
    first-layer inputs out of the per-row matmul, the largest cost of its step on CPU.
    """
    weight = linear.weight
    dense, dense_cols, projections, codes = [], [], [], []
    col, offset = 0, 0
    for part in parts:
        if isinstance(part, SmallLookup):
            width = part.weight.shape[1]
            # row 0 (padding) is left out of the product: it stays zero and receives no gradient
            proj = part.weight[1:] @ weight[:, col : col + width].T
            projections.append(F.pad(proj, (0, 0, 1, 0)))
            codes.append(part.codes + offset)
            offset += proj.shape[0] + 1
        else:
            width = part.shape[1]
            dense.append(part)
            dense_cols.append(torch.arange(col, col + width))
        col += width
    if col != weight.shape[1]:
        raise ValueError(f"tower inputs have {col} columns, the first layer expects {weight.shape[1]}")
    n = (dense[0] if dense else codes[0]).shape[0]
    if dense:
        cols = torch.cat(dense_cols).to(weight.device)
        out = F.linear(torch.cat(dense, dim=1), weight.index_select(1, cols), linear.bias)
    else:
        out = linear.bias.expand(n, -1)
    if projections:
        hot = torch.zeros(n, offset, dtype=weight.dtype, device=weight.device)
        hot.scatter_(1, torch.stack(codes, dim=1), 1.0)
        out = torch.addmm(out, hot, torch.cat(projections))
    return out


def run_mlp(net: nn.Sequential, parts: list[InputPart]) -> Tensor:
    """`net(torch.cat(parts, 1))` for an `mlp(...)` whose first layer is computed by `linear_over_parts`."""
    first = net[0]
    if not isinstance(first, nn.Linear):
        raise TypeError("run_mlp: the network must start with nn.Linear")
    return net[1:](linear_over_parts(first, parts))


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
) -> list[InputPart]:
    """User-side input blocks (for `run_mlp`): user sparse embeddings + dense columns (+ pooled
    history), in the column order of `user_input_dim`."""
    hist = batch["hist"]
    n = hist.shape[0]
    parts = [emb.part(f"user.{f.name}", sparse_codes(batch, f"u.{f.name}", n)) for f in schema.user_sparse]
    parts.append(stack_dense(batch, "ud.", schema.user_dense, n))
    if use_history:
        if history_pooling == "concat" and hist.shape[1] != schema.history.max_len:
            hist = fit_window(hist, schema.history.max_len)
        parts.append(emb.pooled("hist", hist, history_pooling))
    return parts


def item_input_dim(schema: FeatureSchema, dim: int) -> int:
    return dim * (len(schema.item_sparse) + (1 if schema.tags else 0)) + len(schema.item_dense)


def item_inputs(schema: FeatureSchema, emb: Embeddings, batch: dict[str, Tensor]) -> list[InputPart]:
    """Item-side input blocks (for `run_mlp`): item sparse embeddings (item_id first) + pooled
    tags + dense, in the column order of `item_input_dim`."""
    n = batch["item_code"].shape[0]
    parts: list[InputPart] = [
        emb.part(f"item.{f.name}", sparse_codes(batch, f"i.{f.name}", n)) for f in schema.item_sparse
    ]
    if schema.tags is not None:
        tags = batch.get("tags")
        if tags is None:
            tags = torch.zeros(n, 1, dtype=torch.long)
        parts.append(emb.pooled("tags", tags, schema.tags.pooling))
    parts.append(stack_dense(batch, "id.", schema.item_dense, n))
    return parts


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


def reads_item_popularity(model: nn.Module, store: FeatureStore) -> bool:
    """Does the model's item tower read item popularity? Asked of the tower itself (two batches that
    differ only in popularity), so the trainer needs no knowledge of the model's internals."""
    if "popularity" not in store.item_dense or store.n_items < 2:
        return False
    codes = np.arange(1, min(store.n_items, 17), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            low = model.item_tower(store.item_batch(codes, popularity=np.zeros(len(codes), np.float32)))
            high = model.item_tower(store.item_batch(codes, popularity=np.ones(len(codes), np.float32)))
    finally:
        model.train(was_training)
    return not torch.equal(low, high)
