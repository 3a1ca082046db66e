"""`TrainConfig`: every training knob, typed, validated, with good defaults per model.

Fields left as None are resolved per model and catalogue size by `resolve()`; the resolved
config is what gets stored in `meta.model_runs.params` and in the artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, field
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from rechub_store.config import (
    DEFAULT_SEEN_FILTER,
    SEEN_FILTERS,
    TRAIN_NEG_MODES,
    TRAIN_NEG_SAMPLERS,
    Bool,
    Float,
    Int,
    Invalid,
    Names,
    Str,
    check_nested,
    flags,
    settings_class,
    typed,
)

# Per model: trainer defaults, then model keyword arguments.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "dssm": dict(epochs=20, batch_size=512, lr=1e-3, embed_dim=64),
    "youtubednn": dict(epochs=20, batch_size=512, lr=1e-3, embed_dim=64),
    # GRU4Rec at 1e-3 stalls early on small logs (early stopping at epoch 2 of 5 on a 12.5k-event
    # log); 3e-3 won on every generated shape measured (bench/RESULTS.md, "Tuning and log shapes")
    "gru4rec": dict(epochs=50, batch_size=512, lr=3e-3, embed_dim=64),
    "sasrec": dict(epochs=50, batch_size=512, lr=1e-3, embed_dim=64),
}
# Up to this many items, softmax over the whole catalogue ('full') is cheap and the most accurate
# objective; above it the default is list-wise sampled softmax with in-batch negatives + logQ.
FULL_SOFTMAX_MAX_ITEMS = 100_000


@settings_class
class ItemKNNParams:
    """`model_params` of itemknn (pipeline/itemknn.py)."""

    neighbours: Annotated[Int, Field(ge=1)] = 100
    recent: Annotated[Int, Field(ge=1)] = 20
    decay: Annotated[Float, Field(gt=0.0, le=1.0)] = 0.8
    self_weight: Annotated[Float, Field(ge=0.0)] = 1.0  # an item's similarity to itself (ranking/itemknn.py)


# Models fitted without gradient training (pipeline/itemknn.py): only `model_params`, `seed` and
# `seen_filter` apply; the class of their parameters (with the defaults).
NEIGHBOUR_MODELS: dict[str, type] = {"itemknn": ItemKNNParams}
MODEL_NAMES = (*MODEL_DEFAULTS, *NEIGHBOUR_MODELS)
DEFAULT_NEG_RATIO = {"pointwise": 4, "pairwise": 1, "listwise": 20, "full": 0}

Count = Annotated[Int | None, Field(ge=1)]  # None = the model's default
NonNegative = Annotated[Float, Field(ge=0.0)]


@settings_class
class TrainConfig:
    """What to train and how. None = the model's default (see `resolve`)."""

    model: Literal[MODEL_NAMES] = "sasrec"
    epochs: Count = None
    batch_size: Count = None
    lr: Annotated[Float | None, Field(gt=0.0)] = None
    weight_decay: NonNegative = 0.0  # Adam L2 weight decay (dense parameters; embeddings too if not sparse)
    # row-sparse gradients + lazy Adam for embedding tables a step barely touches (chosen from the
    # first step; see training/optim.py); None = on unless weight_decay > 0 (lazy Adam has none)
    sparse_embeddings: Bool | None = None
    embed_dim: Count = None
    # pointwise (BCE) | pairwise (BPR) | listwise (softmax) | full softmax
    neg_mode: Literal[TRAIN_NEG_MODES] | None = None
    # negatives per positive (pointwise/pairwise/listwise)
    neg_ratio: Annotated[Int | None, Field(ge=0)] = None
    # uniform | popularity (count^alpha) | static (features.negatives_train)
    neg_sampler: Literal[TRAIN_NEG_SAMPLERS] = "uniform"
    neg_alpha: NonNegative = 0.75
    in_batch: Bool | None = None  # list-wise: add the other rows' positives as negatives
    logq: Bool = True  # in-batch: subtract log(popularity) (sampling-bias correction)
    max_seq_len: Count = None  # default: the feature build's max_seq_len
    patience: Annotated[Int, Field(ge=1)] = 3  # epochs without a better validation NDCG@10 before stopping
    warmup_steps: Annotated[Int, Field(ge=0)] = 0  # learning rate rises linearly from 0 over this many steps
    seed: Annotated[Int, Field(ge=0)] = 42
    grad_clip: NonNegative = 5.0
    valid_users: Count = None  # validate on a seeded subsample of this many users (None = all)
    # validation ranking: what is removed before the target is ranked (ranking.protocol)
    seen_filter: Literal[SEEN_FILTERS] = DEFAULT_SEEN_FILTER
    streaming: Bool = False  # stream training samples from DuckDB in record batches
    prefetch: Bool = True  # prepare the next batch in a background thread during each step
    # all-position training for causal sequence models (one pass per window trains every target
    # in it); None = on where the model supports it (gru4rec, sasrec)
    seq_train: Bool | None = None
    model_params: dict[Str, Any] = field(default_factory=dict)  # e.g. dropout, hidden, temperature
    progress: Bool = True

    @model_validator(mode="after")
    def _rules(self) -> TrainConfig:
        """Rules across fields; on a resolved config every one of them is decided."""
        if self.model in NEIGHBOUR_MODELS:
            check_nested(NEIGHBOUR_MODELS[self.model], self.model_params, "model_params")
            return self
        if self.in_batch and self.neg_mode not in (None, "listwise"):
            raise Invalid("in_batch", "in-batch negatives need {neg_mode} listwise")
        if self.neg_ratio is not None and self.neg_ratio < 1:
            if self.neg_mode in ("pointwise", "pairwise") and self.neg_sampler != "static":
                raise Invalid(
                    "neg_ratio", f"{self.neg_mode} training needs at least one negative per positive"
                )
            if self.neg_mode == "listwise" and not self.in_batch:
                raise Invalid("neg_ratio", "list-wise training needs sampled negatives or {in_batch}")
        return self

    def resolve(self, n_items: int, names: Names = flags) -> TrainConfig:
        """Fill model defaults for this catalogue size; raises UserError naming the bad option
        (`names`: how the caller's keys are written, CLI flags by default)."""
        if self.model in NEIGHBOUR_MODELS:
            return self
        d = MODEL_DEFAULTS[self.model]
        neg_mode = self.neg_mode or ("full" if n_items <= FULL_SOFTMAX_MAX_ITEMS else "listwise")
        in_batch = (
            self.in_batch if self.in_batch is not None else (neg_mode == "listwise" and self.neg_mode is None)
        )
        neg_ratio = self.neg_ratio if self.neg_ratio is not None else DEFAULT_NEG_RATIO[neg_mode]
        resolved = {
            **self.to_dict(),
            "progress": self.progress,
            "epochs": d["epochs"] if self.epochs is None else self.epochs,
            "batch_size": d["batch_size"] if self.batch_size is None else self.batch_size,
            "lr": d["lr"] if self.lr is None else self.lr,
            "embed_dim": d["embed_dim"] if self.embed_dim is None else self.embed_dim,
            "neg_mode": neg_mode,
            "neg_ratio": 0 if neg_mode == "full" else neg_ratio,
            "in_batch": bool(in_batch),
            "sparse_embeddings": (
                self.weight_decay == 0 if self.sparse_embeddings is None else self.sparse_embeddings
            ),
        }
        return typed(TrainConfig, resolved, names)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("progress")
        return data

    def validate(self, names: Names = flags) -> TrainConfig:
        """Check the rules `resolve` decides for any catalogue size (a job file is checked before any
        work starts, without a feature store)."""
        self.resolve(FULL_SOFTMAX_MAX_ITEMS, names)
        if self.neg_mode is None:
            self.resolve(FULL_SOFTMAX_MAX_ITEMS + 1, names)  # the other default objective
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], names: Names = flags) -> TrainConfig:
        """From a mapping (a job file's `[train.params]`, stored parameters); UserError naming the key."""
        return typed(cls, dict(data), names)


def neighbour_params(model: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A neighbourhood model's parameters over its defaults (checked when its TrainConfig was made)."""
    return asdict(NEIGHBOUR_MODELS[model](**params))
