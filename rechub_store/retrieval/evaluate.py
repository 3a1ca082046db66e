"""Offline evaluation of a model run on the leave-one-out splits, written to `evaluation_metrics`.

Protocol: for each sample of the split (one per user), the user is encoded from the history
before the target (`pos`), those history items are excluded, and the top-k is ranked over the
whole catalogue with annoy and/or exactly. Rows: every metric x k x index, plus
`annoy_recall` (share of the exact top-k that annoy returned) and the most-popular baseline
(model_run_id = 'popularity', training counts, same exclusions), always beside the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np

from rechub_store.errors import UserError
from rechub_store.jobconfig import AnnoySettings
from rechub_store.publish.analytics import write_metrics
from rechub_store.retrieval.annoy_index import overlap_at_k, sample_rows
from rechub_store.retrieval.exact import Seen
from rechub_store.retrieval.metrics import METRICS, ranking_metrics
from rechub_store.retrieval.scoring import INDEXES, ScoringContext, load_context, topk
from rechub_store.training.trainer import evaluate_popularity
from rechub_store.warehouse import Warehouse

log = logging.getLogger(__name__)

POPULARITY = "popularity"


@dataclass
class EvaluationReport:
    run_id: str
    model_run_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    annoy: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[dict[str, Any]]:
        """One row per (model_run_id, split, index, k) with the metrics as columns, for printing."""
        grouped: dict[tuple, dict[str, Any]] = {}
        for r in self.rows:
            key = (r["model_run_id"], r["split"], r["index"], r["k"])
            row = grouped.setdefault(
                key,
                {
                    "model_run_id": key[0],
                    "split": key[1],
                    "index": key[2],
                    "k": key[3],
                    "n_users": r["n_users"],
                },
            )
            row[r["metric"]] = r["value"]
        return list(grouped.values())


def _rows(
    run_id: str, model_run_id: str, split: str, index: str, n_users: int, metrics: dict[str, dict[int, float]]
) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run_id,
            "model_run_id": model_run_id,
            "split": split,
            "metric": metric,
            "k": k,
            "value": value,
            "n_users": n_users,
            "index": index,
        }
        for metric, per_k in metrics.items()
        for k, value in per_k.items()
    ]


def evaluate_run(
    con: duckdb.DuckDBPyConnection,
    ctx: ScoringContext,
    run_id: str,
    *,
    ks: Sequence[int] = (10, 20, 50),
    splits: Sequence[str] = ("test",),
    indexes: Sequence[str] = INDEXES,
    popularity: bool = True,
    annoy_settings: AnnoySettings | None = None,
    max_users: int | None = None,
    seed: int = 0,
) -> EvaluationReport:
    """Compute and store (replacing this run's earlier rows) the metrics; returns them.

    `max_users` evaluates a seeded sample of that many users per split (the standard error of
    a mean over 100k users is small; a full pass over millions would double the nightly time).
    """
    t0 = time.perf_counter()
    ks = sorted(set(int(k) for k in ks))
    max_k = max(ks)
    for index in indexes:
        if index not in INDEXES:
            raise UserError(f"--index: expected annoy or exact, got {index!r}")
    report = EvaluationReport(run_id, ctx.model_run_id)
    for split in splits:
        samples = ctx.store.samples.get(split)
        if samples is None:
            raise UserError(f"split {split!r} was not loaded (load the context with splits=({split!r},))")
        if len(samples) == 0:
            log.warning(
                "features.samples_%s is empty: no %s metrics (validation off, or too few events)",
                split,
                split,
            )
            continue
        if max_users is not None and len(samples) > max_users:
            samples = samples.take(sample_rows(len(samples), max_users, seed))
        vecs = ctx.user_vectors(samples.user_code, samples.pos)
        seen = Seen(*ctx.store.seen(samples.user_code, samples.pos))
        ranked: dict[str, np.ndarray] = {}
        for index in indexes:
            codes, _ = topk(ctx, vecs, max_k, seen, index, annoy_settings)
            ranked[index] = codes
            metrics = ranking_metrics(codes, samples.target, ks)
            report.rows += _rows(run_id, ctx.model_run_id, split, index, len(samples), metrics)
        if "annoy" in ranked and "exact" in ranked:
            recall = {k: overlap_at_k(ranked["annoy"], ranked["exact"], k) for k in ks}
            report.rows += _rows(
                run_id, ctx.model_run_id, split, "annoy", len(samples), {"annoy_recall": recall}
            )
        if popularity:
            metrics = evaluate_popularity(ctx.store, samples, tuple(ks))
            report.rows += _rows(run_id, POPULARITY, split, "exact", len(samples), metrics)
    write_metrics(con, report.rows)
    report.seconds = round(time.perf_counter() - t0, 3)
    if ctx.tuning is not None:
        report.annoy = {
            "n_trees": ctx.tuning.n_trees,
            "search_k": ctx.tuning.search_k,
            "recall": ctx.tuning.recall,
        }
    log.info(
        "evaluated %s on %s: %d metric rows in %.1fs",
        ctx.model_run_id,
        ",".join(splits),
        len(report.rows),
        report.seconds,
    )
    return report


def evaluate(
    warehouse: Warehouse,
    *,
    model_run_id: str | None = None,
    run_id: str | None = None,
    ks: Sequence[int] = (10, 20, 50),
    splits: Sequence[str] = ("test",),
    indexes: Sequence[str] = INDEXES,
    popularity: bool = True,
    annoy_settings: AnnoySettings | None = None,
    max_users: int | None = None,
) -> EvaluationReport:
    """`rechub-store evaluate`: evaluate a model run (default: latest) into the working copy."""
    with warehouse.session() as con:
        ctx = load_context(con, model_run_id, splits=tuple(splits))
        run_id = run_id or f"manual-{ctx.model_run_id}"
        return evaluate_run(
            con,
            ctx,
            run_id,
            ks=ks,
            splits=splits,
            indexes=indexes,
            popularity=popularity,
            annoy_settings=annoy_settings,
            max_users=max_users,
        )


__all__ = ["METRICS", "POPULARITY", "EvaluationReport", "evaluate", "evaluate_run"]
