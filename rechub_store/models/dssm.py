"""DSSM: a user MLP and an item MLP over sparse + dense features, cosine score with temperature."""

from __future__ import annotations

from torch import Tensor, nn

from rechub_store.data.specs import FeatureSchema, Pooling
from rechub_store.models import mlp_tower
from rechub_store.models.features import item_input_dim, item_inputs, mlp, run_mlp

SEARCH_SPACE = mlp_tower.SEARCH_SPACE  # searched by `rechub-store tune` (models/space.py)


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
        mlp_tower.build(self, schema, embed_dim, hidden, dropout, temperature, history_pooling)
        self.item_mlp = mlp([item_input_dim(schema, embed_dim), *hidden, embed_dim], dropout)

    def user_tower(self, batch: dict[str, Tensor]) -> Tensor:
        return mlp_tower.user_vector(self, batch)

    def item_tower(self, batch: dict[str, Tensor]) -> Tensor:
        return run_mlp(self.item_mlp, item_inputs(self.schema, self.emb, batch))
