"""`TrainConfig`: every training knob, typed, validated, with good defaults per model.

Fields left as None are resolved per model and catalogue size by `resolve()`; the resolved
config is what gets stored in `meta.model_runs.params` and in the artifact.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from rechub_store.config import DEFAULT_SEEN_FILTER, TRAIN_NEG_MODES, TRAIN_NEG_SAMPLERS, check_seen_filter
from rechub_store.errors import UserError

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
# Models fitted without gradient training (pipeline/itemknn.py): only `model_params`, `seed` and
# `seen_filter` apply; their parameters and defaults.
NEIGHBOUR_MODELS: dict[str, dict[str, Any]] = {"itemknn": {"neighbours": 100, "recent": 20, "decay": 0.8}}
DEFAULT_NEG_RATIO = {"pointwise": 4, "pairwise": 1, "listwise": 20, "full": 0}


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. None = the model's default (see `resolve`)."""

    model: str = "sasrec"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0  # Adam L2 weight decay (dense parameters; embeddings too if not sparse)
    # row-sparse gradients + lazy Adam for embedding tables a step barely touches (chosen from the
    # first step; see training/optim.py); None = on unless weight_decay > 0 (lazy Adam has none)
    sparse_embeddings: bool | None = None
    embed_dim: int | None = None
    neg_mode: str | None = None  # pointwise (BCE) | pairwise (BPR) | listwise (softmax) | full softmax
    neg_ratio: int | None = None  # negatives per positive (pointwise/pairwise/listwise)
    neg_sampler: str = "uniform"  # uniform | popularity (count^alpha) | static (features.negatives_train)
    neg_alpha: float = 0.75
    in_batch: bool | None = None  # list-wise: add the other rows' positives as negatives
    logq: bool = True  # in-batch: subtract log(popularity) (sampling-bias correction)
    max_seq_len: int | None = None  # default: the feature build's max_seq_len
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping
    warmup_steps: int = 0  # learning rate rises linearly from 0 over this many optimizer steps
    seed: int = 42
    grad_clip: float = 5.0
    valid_users: int | None = None  # validate on a seeded subsample of this many users (None = all)
    # validation ranking: what is removed before the target is ranked (ranking.protocol.SEEN_FILTERS)
    seen_filter: str = DEFAULT_SEEN_FILTER
    streaming: bool = False  # stream training samples from DuckDB in record batches
    prefetch: bool = True  # prepare the next batch in a background thread during each step
    # all-position training for causal sequence models (one pass per window trains every target
    # in it); None = on where the model supports it (gru4rec, sasrec)
    seq_train: bool | None = None
    model_params: dict[str, Any] = field(default_factory=dict)  # e.g. dropout, hidden, temperature
    progress: bool = True

    def resolve(self, n_items: int) -> TrainConfig:
        """Fill model defaults and check values; raises UserError naming the bad option."""
        if self.model in NEIGHBOUR_MODELS:
            check_neighbour_params(self.model, self.model_params)
            check_seen_filter(self.seen_filter)
            return self
        if self.model not in MODEL_DEFAULTS:
            known = [*MODEL_DEFAULTS, *NEIGHBOUR_MODELS]
            raise UserError(f"--model: unknown model {self.model!r}; choose one of {', '.join(known)}")
        d = MODEL_DEFAULTS[self.model]
        neg_mode = self.neg_mode or ("full" if n_items <= FULL_SOFTMAX_MAX_ITEMS else "listwise")
        if neg_mode not in TRAIN_NEG_MODES:
            raise UserError(f"--neg-mode: expected one of {', '.join(TRAIN_NEG_MODES)}, got {neg_mode!r}")
        if self.neg_sampler not in TRAIN_NEG_SAMPLERS:
            raise UserError(
                f"--neg-sampler: expected one of {', '.join(TRAIN_NEG_SAMPLERS)}, got {self.neg_sampler!r}"
            )
        in_batch = (
            self.in_batch if self.in_batch is not None else (neg_mode == "listwise" and self.neg_mode is None)
        )
        if in_batch and neg_mode != "listwise":
            raise UserError("--in-batch: in-batch negatives need --neg-mode listwise")
        neg_ratio = self.neg_ratio if self.neg_ratio is not None else DEFAULT_NEG_RATIO[neg_mode]
        out = replace(
            self,
            epochs=d["epochs"] if self.epochs is None else self.epochs,
            batch_size=d["batch_size"] if self.batch_size is None else self.batch_size,
            lr=d["lr"] if self.lr is None else self.lr,
            embed_dim=d["embed_dim"] if self.embed_dim is None else self.embed_dim,
            neg_mode=neg_mode,
            neg_ratio=0 if neg_mode == "full" else neg_ratio,
            in_batch=bool(in_batch),
            sparse_embeddings=(
                self.weight_decay == 0 if self.sparse_embeddings is None else self.sparse_embeddings
            ),
        )
        checks = [
            ("--epochs", out.epochs, 1),
            ("--batch-size", out.batch_size, 1),
            ("--embed-dim", out.embed_dim, 1),
            ("--patience", out.patience, 1),
        ]
        for name, value, low in checks:
            if value is None or value < low:
                raise UserError(f"{name}: expected an integer >= {low}, got {value}")
        if out.lr is None or out.lr <= 0:
            raise UserError(f"--lr: expected a positive number, got {out.lr}")
        if neg_mode in ("pointwise", "pairwise") and out.neg_ratio < 1 and out.neg_sampler != "static":
            raise UserError(f"--neg-ratio: {neg_mode} training needs at least one negative per positive")
        if neg_mode == "listwise" and out.neg_ratio < 1 and not out.in_batch:
            raise UserError("--neg-ratio: list-wise training needs sampled negatives or --in-batch")
        check_seen_filter(out.seen_filter)
        if out.max_seq_len is not None and out.max_seq_len < 1:
            raise UserError(f"--max-seq-len: expected an integer >= 1, got {out.max_seq_len}")
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("progress")
        return data

    def validate(self) -> TrainConfig:
        """Check every value without a feature store (a job file is checked before any work starts):
        the model name, the ranges `resolve` checks (for any catalogue size) and the rest."""
        self.resolve(FULL_SOFTMAX_MAX_ITEMS)
        if self.neg_mode is None:
            self.resolve(FULL_SOFTMAX_MAX_ITEMS + 1)  # the other default objective
        checks = [
            ("weight_decay", self.weight_decay, 0.0),
            ("neg_alpha", self.neg_alpha, 0.0),
            ("grad_clip", self.grad_clip, 0.0),
        ]
        for name, value, low in checks:
            if not math.isfinite(value) or value < low:
                raise UserError(f"{name}: expected a finite number >= {low:g}, got {value}")
        for name, value in (
            ("neg_ratio", self.neg_ratio),
            ("seed", self.seed),
            ("warmup_steps", self.warmup_steps),
        ):
            if value is not None and value < 0:
                raise UserError(f"{name}: expected an integer >= 0, got {value}")
        if self.valid_users is not None and self.valid_users < 1:
            raise UserError(f"valid_users: expected an integer >= 1, got {self.valid_users}")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """From a mapping (a job file's `[train.params]`): unknown keys and values of the wrong type
        are a UserError naming the key."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise UserError(f"unknown keys {', '.join(sorted(unknown))} (known: {', '.join(sorted(names))})")
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            _check_type(key, value, hints[key])
        return cls(**data)


def check_neighbour_params(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """A neighbourhood model's parameters over its defaults: neighbours and recent integers >= 1,
    decay in (0, 1]; unknown keys are a UserError naming them."""
    defaults = NEIGHBOUR_MODELS[model]
    unknown = set(params) - set(defaults)
    if unknown:
        raise UserError(
            f"{model}: unknown model_params {', '.join(sorted(unknown))} (known: {', '.join(defaults)})"
        )
    merged = {**defaults, **params}
    for key in ("neighbours", "recent"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{model}: model_params.{key} must be an integer >= 1, got {value!r}")
    decay = merged["decay"]
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay <= 1:
        raise UserError(f"{model}: model_params.decay must be a number in (0, 1], got {decay!r}")
    return merged


def _check_type(key: str, value: Any, hint: Any) -> None:
    """`value` fits the field's annotation (int / float / bool / str / dict, optionally None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return
    for kind in options:
        origin = typing.get_origin(kind) or kind
        if origin is bool and isinstance(value, bool):
            return
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return
        if origin in (str, dict) and isinstance(value, origin):
            return
    expected = " or ".join(
        {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}.get(
            typing.get_origin(k) or k, str(k)
        )
        for k in options
        if k is not type(None)
    )
    raise UserError(f"{key}: expected {expected}, got {value!r}")
