"""Two-tower models, one per file, and the name -> builder registry the trainer and loader use.

Every model exposes `user_tower(batch) -> [B, D]`, `item_tower(batch) -> [N, D]` (each usable
alone), `score_kind` ('dot' or 'cosine'), `temperature`, `max_seq_len`, `schema` and `config`
(the keyword arguments that rebuild it).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rechub_store.data.specs import FeatureSchema
from rechub_store.errors import UserError
from rechub_store.models.dssm import DSSM
from rechub_store.models.gru4rec import GRU4Rec
from rechub_store.models.sasrec import SASRec
from rechub_store.models.youtubednn import YoutubeDNN

MODELS: dict[str, type[nn.Module]] = {
    "dssm": DSSM,
    "youtubednn": YoutubeDNN,
    "gru4rec": GRU4Rec,
    "sasrec": SASRec,
}


def build_model(name: str, schema: FeatureSchema, **kwargs: Any) -> nn.Module:
    """Instantiate model `name` over `schema`; unknown names are a UserError listing the choices."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}") from None
    return cls(schema, **kwargs)


__all__ = ["DSSM", "MODELS", "GRU4Rec", "SASRec", "YoutubeDNN", "build_model"]
