"""YoutubeDNN: pooled watch history + user features through an MLP; items are their embeddings."""

from __future__ import annotations

from torch import Tensor, nn

from rechub_store.data.specs import FeatureSchema, Pooling
from rechub_store.models import mlp_tower
from rechub_store.models.features import sparse_codes

SEARCH_SPACE = mlp_tower.SEARCH_SPACE  # searched by `rechub-store tune` (models/space.py)


class YoutubeDNN(nn.Module):
    """User tower: MLP([user sparse, dense, mean-pooled history]); item tower: the item_id embedding,
    which the history shares (as in the paper's candidate generator). Cosine / temperature score."""

    name = "youtubednn"
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
        mlp_tower.build(self, schema, embed_dim, hidden, dropout, temperature, history_pooling)

    def user_tower(self, batch: dict[str, Tensor]) -> Tensor:
        return mlp_tower.user_vector(self, batch)

    def item_tower(self, batch: dict[str, Tensor]) -> Tensor:
        n = batch["item_code"].shape[0]
        return self.emb("item.item_id", sparse_codes(batch, "i.item_id", n))
