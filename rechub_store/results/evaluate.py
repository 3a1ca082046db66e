"""Offline evaluation of a model run, written to `evaluation_metrics` (protocol: `ranking.protocol`).

Accuracy: for each sample of the split (one held-out target per user, a stable seeded sample of
`max_users` users), the user is encoded from the history before the target with its point-in-time
features, the seen filter removes items from the ranking, and the target's rank over the whole
catalogue is taken exactly (pessimistic ties) and, for `annoy`, among the candidates annoy returns
(rescored exactly, same tie rule). Rows: every metric x k x index x slice, `annoy_recall` (share of
the exact top-k that annoy returned), and every baseline (`popularity`, `itemknn`, `transition`,
index `exact`) under the same protocol, always beside the model. Every row records its seen filter,
slice and the number of users whose target was a repeat.

Beyond accuracy (split `production`): the lists production gives a stable seeded sample of
`list_users` users (whole current history, the production seen rule), from the model (each index)
and from every baseline, are stored in `evaluation_lists`; the SQL models of `sql/metrics/` turn
them into coverage, Gini, popularity percentile, novelty, intra-list diversity, personalisation
and overlap with the previous run (churn = 1 - overlap).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np

from rechub_store.config import (
    BASELINE_NAMES,
    DEFAULT_SEEN_FILTER,
    INDEXES,
    AnnoySettings,
    check_index,
    check_seen_filter,
)
from rechub_store.data.readers import Samples
from rechub_store.data.sqlmodels import run_metric_models
from rechub_store.errors import UserError
from rechub_store.ranking.baselines import Baseline, Popularity, Transition
from rechub_store.ranking.exact import Seen, exact_ranks, exact_topk, scorer_ranks, scorer_topk
from rechub_store.ranking.itemknn import ItemKNN
from rechub_store.ranking.metrics import METRICS
from rechub_store.ranking.protocol import (
    SliceMetrics,
    evaluation_vectors,
    exclusions,
    repeat_targets,
    slice_masks,
    slice_metrics,
)
from rechub_store.results.tables import previous_list_run, write_evaluation_lists, write_metrics
from rechub_store.retrieval.annoy_index import overlap_at_k
from rechub_store.retrieval.scoring import (
    ScoringContext,
    annoy_lists,
    ensure_annoy,
    load_context,
    production_lists,
)
from rechub_store.warehouse import Warehouse

log = logging.getLogger(__name__)

POPULARITY = "popularity"
PRODUCTION = "production"  # the split of the beyond-accuracy rows: production lists, no held-out target
BASELINES: dict[str, type[Popularity] | type[ItemKNN] | type[Transition]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "transition": Transition,
}
assert tuple(BASELINES) == BASELINE_NAMES


@dataclass
class EvaluationReport:
    run_id: str
    model_run_id: str
    seen_filter: str = DEFAULT_SEEN_FILTER
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    annoy: dict[str, Any] | None = None
    annoy_answers: dict[str, str] = field(default_factory=dict)  # per split / production: what was reused

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self, slices: Sequence[str] = ("all",)) -> list[dict[str, Any]]:
        """One row per (model_run_id, split, index, slice, k) with the metrics as columns, for printing."""
        grouped: dict[tuple, dict[str, Any]] = {}
        for r in self.rows:
            if r["slice"] not in slices:
                continue
            key = (r["model_run_id"], r["split"], r["index"], r["slice"], r["k"])
            row = grouped.setdefault(
                key,
                {
                    "model_run_id": key[0],
                    "split": key[1],
                    "index": key[2],
                    "slice": key[3],
                    "k": key[4],
                    "n_users": r["n_users"],
                },
            )
            row[r["metric"]] = r["value"]
        return list(grouped.values())


def _rows(
    run_id: str,
    model_run_id: str,
    split: str,
    index: str,
    seen_filter: str | None,
    results: Sequence[SliceMetrics],
) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run_id,
            "model_run_id": model_run_id,
            "split": split,
            "metric": metric,
            "k": k,
            "value": value,
            "n_users": r.n_users,
            "index": index,
            "seen_filter": seen_filter,
            "slice": r.slice,
            "n_repeat_targets": r.n_repeat_targets,
        }
        for r in results
        for metric, per_k in r.metrics.items()
        for k, value in per_k.items()
    ]


def fit_baselines(ctx: ScoringContext, names: Sequence[str]) -> dict[str, Baseline]:
    """The named baselines fitted on the context's feature store (once per run)."""
    out: dict[str, Baseline] = {}
    for name in names:
        if name not in BASELINES:
            raise UserError(f"unknown baseline {name!r}: choose from {', '.join(BASELINES)}")
        t0 = time.perf_counter()
        out[name] = BASELINES[name]().fit(ctx.store)
        log.info("baseline %s fitted in %.1fs", name, time.perf_counter() - t0)
    return out


def stable_user_sample(users: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The `n` users with the smallest seeded hash of their code, ascending: a sample that stays the
    same from run to run as users come and go (so churn compares the same people)."""
    if len(users) <= n:
        return np.sort(users)
    with np.errstate(over="ignore"):  # splitmix64: wrapping arithmetic is the point
        x = users.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return np.sort(users[np.argsort(x, kind="stable")[:n]])


def accuracy_sample(samples: Samples, max_users: int, seed: int) -> Samples:
    """The samples of `stable_user_sample`'s users: the same people from run to run as users come
    and go (a sample of row positions would reshuffle whenever users are added), so nightly
    metrics and the gate on a metric drop compare like with like."""
    chosen = stable_user_sample(np.unique(samples.user_code), max_users, seed)
    return samples.take(np.flatnonzero(np.isin(samples.user_code, chosen)))


def evaluate_split(
    ctx: ScoringContext,
    run_id: str,
    split: str,
    *,
    ks: Sequence[int],
    indexes: Sequence[str],
    baselines: dict[str, Baseline],
    seen_filter: str,
    annoy_settings: AnnoySettings | None,
    max_users: int | None,
    seed: int,
    reuse: bool = True,
) -> list[dict[str, Any]]:
    """Accuracy rows of one split: the model by each index, annoy's recall, and the baselines.
    `reuse`: annoy's answers for users unchanged since the last evaluation are reused (`annoy_lists`)."""
    samples = ctx.store.samples.get(split)
    if samples is None:
        raise UserError(f"split {split!r} was not loaded (load the context with splits=({split!r},))")
    if len(samples) == 0:
        log.warning(
            "features.samples_%s is empty: no %s metrics (validation off, or too few events)", split, split
        )
        return []
    if max_users is not None and len(samples) > max_users:
        samples = accuracy_sample(samples, max_users, seed)
    store, max_k = ctx.store, max(ks)
    repeat = repeat_targets(store, samples)
    masks = slice_masks(store, samples, repeat)
    exclude = exclusions(store, samples.user_code, samples.pos, samples.target, seen_filter)
    rows: list[dict[str, Any]] = []
    if ctx.knn is not None:  # an item-kNN model run: exact ranking from its neighbour matrix
        ranks = scorer_ranks(ctx.knn.scorer(samples.user_code, samples.pos), samples.target, exclude)
        results = slice_metrics(ranks, masks, repeat, ks)
        rows += _rows(run_id, ctx.model_run_id, split, "exact", seen_filter, results)
        indexes = ()
    else:
        users, items = evaluation_vectors(ctx.loaded.model, store, samples, ctx.eval_item_vecs)
    annoy_found: tuple[np.ndarray, np.ndarray] | None = None  # annoy's top-k, asked once
    for index in indexes:
        if index == "exact":
            ranks = exact_ranks(users, items, samples.target, exclude)
        else:
            annoy = ensure_annoy(ctx, max_k, annoy_settings, evaluation=True)
            annoy_found = annoy_lists(
                ctx, split, samples.user_code, users, max_k, exclude, annoy_settings, True, reuse
            )
            ranks = annoy.target_ranks(users, samples.target, max_k, exclude, found=annoy_found)
        results = slice_metrics(ranks, masks, repeat, ks)
        rows += _rows(run_id, ctx.model_run_id, split, index, seen_filter, results)
    if annoy_found is not None and "exact" in indexes:
        truth, _ = exact_topk(users, items, max_k, exclude)
        recall = {k: overlap_at_k(annoy_found[0], truth, k) for k in ks}
        whole = SliceMetrics("all", len(samples), int(repeat.sum()), {"annoy_recall": recall})
        rows += _rows(run_id, ctx.model_run_id, split, "annoy", seen_filter, [whole])
    for name, baseline in baselines.items():
        scorer = baseline.scorer(samples.user_code, samples.pos)
        ranks = scorer_ranks(scorer, samples.target, exclude)
        rows += _rows(run_id, name, split, "exact", seen_filter, slice_metrics(ranks, masks, repeat, ks))
    return rows


def beyond_accuracy(
    con: duckdb.DuckDBPyConnection,
    ctx: ScoringContext,
    run_id: str,
    *,
    ks: Sequence[int],
    indexes: Sequence[str],
    baselines: dict[str, Baseline],
    annoy_settings: AnnoySettings | None,
    list_users: int,
    exclude_seen: bool,
    seed: int,
    reuse: bool = True,
) -> list[dict[str, Any]]:
    """Production lists of a stable user sample (model by each index, every baseline) into
    `evaluation_lists`, then the `sql/metrics/` models over them; rows for `evaluation_metrics`."""
    users = stable_user_sample(ctx.production_users(), list_users, seed)
    if len(users) == 0:
        return []
    max_k = max(ks)
    ends = ctx.store.history_length(users)
    seen = Seen(*ctx.store.seen(users, ends)) if exclude_seen else None
    lists = []
    for index in indexes:
        _, codes, scores = production_lists(ctx, users, max_k, index, annoy_settings, exclude_seen, reuse)
        lists.append(("model", ctx.model_run_id, index, users, codes, scores))
    for name, baseline in baselines.items():
        codes, scores = scorer_topk(baseline.scorer(users, ends), max_k, seen)
        lists.append((name, name, "exact", users, codes, scores))
    previous = previous_list_run(con, run_id)
    write_evaluation_lists(con, run_id, lists, keep=previous)
    outputs = run_metric_models(
        con, variables={"run_id": run_id, "previous_run_id": previous, "ks": list(ks), "seed": seed}
    )
    seen_filter = "all" if exclude_seen else "none"
    return [
        {
            "run_id": run_id,
            "model_run_id": r["model_run_id"],
            "split": PRODUCTION,
            "metric": r["metric"],
            "k": int(r["k"]),
            "value": float(r["value"]),
            "n_users": int(r["n_users"]),
            "index": r["index"],
            "seen_filter": seen_filter,
            "slice": "all",
            "n_repeat_targets": None,
        }
        for rows in outputs.values()
        for r in rows
        if r["value"] is not None
    ]


def evaluate_run(
    con: duckdb.DuckDBPyConnection,
    ctx: ScoringContext,
    run_id: str,
    *,
    ks: Sequence[int] = (10, 20, 50),
    splits: Sequence[str] = ("test",),
    indexes: Sequence[str] = INDEXES,
    baselines: Sequence[str] = BASELINE_NAMES,
    seen_filter: str = DEFAULT_SEEN_FILTER,
    annoy_settings: AnnoySettings | None = None,
    max_users: int | None = None,
    list_users: int = 10_000,
    exclude_seen: bool = True,
    seed: int = 0,
    reuse: bool = True,
) -> EvaluationReport:
    """Compute and store (replacing this run's earlier rows per split) the metrics; returns them.

    `max_users` evaluates a stable seeded sample of that many users per split (the standard error of
    a mean over 100k users is small; a full pass over millions would double the nightly time).
    `list_users` users get beyond-accuracy metrics (0 = none); `exclude_seen` is the production
    rule their lists follow (as `score`). `reuse`: annoy's answers stored by the last evaluation of
    this model run serve the users whose vector and exclusions are unchanged (the metrics are the
    same either way; `nightly --full-refresh` passes False).
    """
    t0 = time.perf_counter()
    ks = sorted(set(int(k) for k in ks))
    for index in indexes:
        check_index(index)
    if ctx.knn is not None:  # item-kNN model runs have no vectors for annoy: exact only
        indexes = ("exact",)
    check_seen_filter(seen_filter)
    report = EvaluationReport(run_id, ctx.model_run_id, seen_filter)
    fitted = fit_baselines(ctx, baselines)
    for split in splits:
        report.rows += evaluate_split(
            ctx,
            run_id,
            split,
            ks=ks,
            indexes=indexes,
            baselines=fitted,
            seen_filter=seen_filter,
            annoy_settings=annoy_settings,
            max_users=max_users,
            seed=seed,
            reuse=reuse,
        )
    if list_users > 0:
        report.rows += beyond_accuracy(
            con,
            ctx,
            run_id,
            ks=ks,
            indexes=indexes,
            baselines=fitted,
            annoy_settings=annoy_settings,
            list_users=list_users,
            exclude_seen=exclude_seen,
            seed=seed,
            reuse=reuse,
        )
    write_metrics(con, report.rows)
    report.annoy_answers = dict(ctx.answers)
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
    baselines: Sequence[str] = BASELINE_NAMES,
    seen_filter: str = DEFAULT_SEEN_FILTER,
    annoy_settings: AnnoySettings | None = None,
    max_users: int | None = None,
    list_users: int = 10_000,
    exclude_seen: bool = True,
) -> EvaluationReport:
    """`rechub-store evaluate`: evaluate a model run (default: latest) into the working copy."""
    check_seen_filter(seen_filter)
    with warehouse.session() as con:
        ctx = load_context(con, model_run_id, splits=tuple(splits), threads=warehouse.threads)
        run_id = run_id or f"manual-{ctx.model_run_id}"
        return evaluate_run(
            con,
            ctx,
            run_id,
            ks=ks,
            splits=splits,
            indexes=indexes,
            baselines=baselines,
            seen_filter=seen_filter,
            annoy_settings=annoy_settings,
            max_users=max_users,
            list_users=list_users,
            exclude_seen=exclude_seen,
        )


__all__ = ["METRICS", "POPULARITY", "EvaluationReport", "evaluate", "evaluate_run"]
