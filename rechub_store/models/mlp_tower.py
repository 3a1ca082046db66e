"""The MLP user tower of DSSM and YoutubeDNN: user_id, user attributes, dense columns and the pooled
history through an MLP to the embedding size, and the hyper-parameters `tune` searches for it.

The parts stay attributes of each model (`emb`, `user_mlp`), so saved state dicts keep their keys.
"""

from __future__ import annotations

from torch import Tensor, nn

from rechub_store.data.specs import FeatureSchema, Pooling
from rechub_store.models.features import (
    Embeddings,
    embedding_features,
    mlp,
    run_mlp,
    user_input_dim,
    user_inputs,
)
from rechub_store.models.space import TRAINER_SPACE, Choice, Float, Range

# Searched by `rechub-store tune` for either model (see models/space.py).
SEARCH_SPACE: dict[str, Range] = {
    **TRAINER_SPACE,
    "hidden": Choice(((256, 128), (128,), (512, 256))),
    "dropout": Float(0.0, 0.3),
    "temperature": Float(0.02, 0.2, log=True),
    "history_pooling": Choice(("mean", "sum")),
}


def build(
    model: nn.Module,
    schema: FeatureSchema,
    embed_dim: int,
    hidden: tuple[int, ...],
    dropout: float,
    temperature: float,
    history_pooling: Pooling,
) -> None:
    """Give `model` what every model exposes (`schema`, `config`: the keyword arguments that rebuild
    it, `temperature`, `max_seq_len`) and the user side: `emb` (the embedding tables of every sparse
    feature), `user_mlp` (input width from the schema) and `history_pooling`."""
    model.schema = schema
    model.config = dict(
        embed_dim=embed_dim,
        hidden=list(hidden),
        dropout=dropout,
        temperature=temperature,
        history_pooling=history_pooling,
    )
    model.temperature = temperature
    model.max_seq_len = schema.history.max_len
    model.history_pooling = history_pooling
    model.emb = Embeddings(embedding_features(schema), embed_dim)
    width = user_input_dim(schema, embed_dim, True, history_pooling)
    model.user_mlp = mlp([width, *hidden, embed_dim], dropout)


def user_vector(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """[B, D]: the user MLP over the user's sparse embeddings, dense columns and pooled history."""
    return run_mlp(model.user_mlp, user_inputs(model.schema, model.emb, batch, True, model.history_pooling))
