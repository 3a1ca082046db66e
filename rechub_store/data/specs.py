"""Feature specs: what a model may read from the feature store, split by tower.

Specs are derived from the feature store's metadata (`FeatureStore.schema()`), never typed in
by hand, and are stored in model artifacts as plain dicts so a module can be rebuilt later.
They live in the data layer (plain dataclasses, no torch) so that readers and models share them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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
