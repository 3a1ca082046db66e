"""`TrainConfig`: every training knob, typed, validated, with good defaults per model.

Fields left as None are resolved per model and catalogue size by `resolve()`; the resolved
config is what gets stored in `meta.model_runs.params` and in the artifact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from rechub_store.errors import UserError

NEG_MODES = ("pointwise", "pairwise", "listwise", "full")
NEG_SAMPLERS = ("uniform", "popularity", "static")

# Per model: trainer defaults, then model keyword arguments.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "dssm": dict(epochs=20, batch_size=512, lr=1e-3, embed_dim=64),
    "youtubednn": dict(epochs=20, batch_size=512, lr=1e-3, embed_dim=64),
    "gru4rec": dict(epochs=50, batch_size=512, lr=1e-3, embed_dim=64),
    "sasrec": dict(epochs=50, batch_size=512, lr=1e-3, embed_dim=64),
}
# Up to this many items, softmax over the whole catalogue ('full') is cheap and the most accurate
# objective; above it the default is list-wise sampled softmax with in-batch negatives + logQ.
FULL_SOFTMAX_MAX_ITEMS = 100_000
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
    seed: int = 42
    grad_clip: float = 5.0
    valid_users: int | None = None  # validate on a seeded subsample of this many users (None = all)
    streaming: bool = False  # stream training samples from DuckDB in record batches
    prefetch: bool = True  # prepare the next batch in a background thread during each step
    # all-position training for causal sequence models (one pass per window trains every target
    # in it); None = on where the model supports it (gru4rec, sasrec)
    seq_train: bool | None = None
    model_params: dict[str, Any] = field(default_factory=dict)  # e.g. dropout, hidden, temperature
    progress: bool = True

    def resolve(self, n_items: int) -> TrainConfig:
        """Fill model defaults and check values; raises UserError naming the bad option."""
        if self.model not in MODEL_DEFAULTS:
            raise UserError(
                f"--model: unknown model {self.model!r}; choose one of {', '.join(MODEL_DEFAULTS)}"
            )
        d = MODEL_DEFAULTS[self.model]
        neg_mode = self.neg_mode or ("full" if n_items <= FULL_SOFTMAX_MAX_ITEMS else "listwise")
        if neg_mode not in NEG_MODES:
            raise UserError(f"--neg-mode: expected one of {', '.join(NEG_MODES)}, got {neg_mode!r}")
        if self.neg_sampler not in NEG_SAMPLERS:
            raise UserError(
                f"--neg-sampler: expected one of {', '.join(NEG_SAMPLERS)}, got {self.neg_sampler!r}"
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
        if out.max_seq_len is not None and out.max_seq_len < 1:
            raise UserError(f"--max-seq-len: expected an integer >= 1, got {out.max_seq_len}")
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("progress")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise UserError(f"train config: unknown keys {', '.join(sorted(unknown))}")
        return cls(**data)
