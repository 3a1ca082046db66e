"""Named choices and value checks shared by every configuration path (CLI options, job file,
build and training parameters), in a core module without heavy imports.

What the choices mean lives with their code: seen filters and slices in `ranking.protocol`,
baselines in `ranking.baselines`, negative sampling in `sql/features/splits/negatives_train.sql`
(build) and `training.trainer` (objectives). Every check raises `UserError` naming the key the value
came from (`score.annoy.target_recall` in the job file, `--index` on the command line).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from rechub_store.errors import UserError

SEEN_FILTERS = ("except-target", "all", "none")
DEFAULT_SEEN_FILTER = "except-target"
BASELINE_NAMES = ("popularity", "itemknn", "transition")
SLICES = ("all", "cold", "active", "head", "tail", "repeat", "new")
INDEXES = ("annoy", "exact")  # how top-k lists are found: approximate (annoy) or brute force
# Negative sampling of the feature build (`features.negatives_train`), and the training objectives:
# the same modes plus `full` softmax over the catalogue; training may also reuse the built ones.
NEG_MODES = ("pointwise", "pairwise", "listwise")
NEG_SAMPLERS = ("uniform", "popularity")
TRAIN_NEG_MODES = (*NEG_MODES, "full")
TRAIN_NEG_SAMPLERS = (*NEG_SAMPLERS, "static")


def check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def as_int(value: Any, key: str, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise UserError(f"{key}: expected an integer {bound}, got {value!r}")
    return value


def as_float(value: Any, key: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo < value <= hi:
        raise UserError(f"{key}: expected a number in ({lo}, {hi}], got {value!r}")
    return float(value)


def as_choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def check_seen_filter(value: str, key: str = "--seen-filter") -> str:
    return as_choice(value, key, SEEN_FILTERS)


def check_index(value: str, key: str = "--index") -> str:
    return as_choice(value, key, INDEXES)


@dataclass(frozen=True)
class AnnoySettings:
    """Auto-tuning: raise search_k (then n_trees) until recall@k vs exact reaches target_recall."""

    n_trees: int = 10  # starting point
    max_trees: int = 160
    search_k: int | None = None  # fixed search_k: skips tuning when set
    target_recall: float = 0.95
    sample_users: int = 1000
    seed: int = 0

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "score.annoy") -> AnnoySettings:
        check_keys(data, {f.name for f in fields(cls)}, where)
        search_k = data.get("search_k")
        return cls(
            n_trees=as_int(data.get("n_trees", cls.n_trees), f"{where}.n_trees"),
            max_trees=as_int(data.get("max_trees", cls.max_trees), f"{where}.max_trees"),
            search_k=None if search_k is None else as_int(search_k, f"{where}.search_k"),
            target_recall=as_float(
                data.get("target_recall", cls.target_recall), f"{where}.target_recall", 0.0, 1.0
            ),
            sample_users=as_int(data.get("sample_users", cls.sample_users), f"{where}.sample_users"),
            seed=as_int(data.get("seed", cls.seed), f"{where}.seed", lo=0),
        )
