"""Production scoring: every user's top-k unseen items from a model run, written to `recommendations`.

One `ScoringContext` per run holds the feature store, the model and its item vectors, and the
annoy index (built and tuned once, saved as `models/<model_run_id>/items.ann`); scoring and
evaluation share it. Users are scored in chunks (encode -> top-k -> stage), so memory stays
at one chunk of vectors plus the staged codes, whatever the number of users.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import torch

from rechub_store.config import AnnoySettings, check_index
from rechub_store.data.readers import FeatureStore
from rechub_store.errors import UserError
from rechub_store.models.features import reads_item_popularity
from rechub_store.pipeline.itemknn import NAME as ITEMKNN
from rechub_store.pipeline.itemknn import load_knn
from rechub_store.ranking.embeddings import (
    annoy_metric,
    encode_current_users,
    encode_items,
    normalize_for_index,
    user_tower_reads,
)
from rechub_store.ranking.exact import Seen, exact_topk, scorer_topk
from rechub_store.ranking.itemknn import ItemKNN
from rechub_store.retrieval import rescoring
from rechub_store.retrieval.annoy_index import (
    AnnoyItems,
    Tuning,
    load_or_build,
    measure_recall,
    sample_rows,
)
from rechub_store.retrieval.autoindex import Calibration, calibrate
from rechub_store.training.registry import LoadedModel, load_artifact, models_dir, resolve_run

log = logging.getLogger(__name__)

ANNOY_FILE = "items.ann"
EVAL_ANNOY_FILE = "items-eval.ann"  # over the evaluation item vectors, when they differ


@dataclass
class ScoringContext:
    """What one run scores with; loaded once, shared by `score_run` and `evaluate_run`."""

    store: FeatureStore
    loaded: LoadedModel
    item_vecs: np.ndarray  # prepared for the index: [n_items, D], row 0 = padding (current features)
    metric: str  # annoy metric: 'dot' | 'angular'
    model_dir: Path  # <warehouse>/models/<model_run_id>: items.ann, *_embeddings.parquet
    annoy: AnnoyItems | None = None
    tuning: Tuning | None = None
    annoy_built: bool = False
    measured_recall: dict[int, float] = field(default_factory=dict)  # k -> annoy recall@k this run
    answers: dict[str, str] = field(default_factory=dict)  # annoy_lists name -> what it reused
    # evaluation encodes items as of training (`FeatureStore.train_popularity`); the same array as
    # item_vecs (and the same annoy index) unless the item tower reads popularity
    eval_item_vecs: np.ndarray | None = None
    eval_annoy: AnnoyItems | None = None
    threads: int | None = None  # annoy build and search threads (the warehouse's); None = every core
    # an item-kNN model run: users are scored from their recent items through its neighbour matrix
    # (exact ranking only; `item_vecs` is then a placeholder column that nothing ranks with)
    knn: ItemKNN | None = None
    knn_run: str | None = None

    @property
    def model_run_id(self) -> str:
        return self.knn_run if self.knn_run is not None else self.loaded.model_run_id

    @property
    def score_kind(self) -> str:
        return self.loaded.score_kind

    def user_vectors(self, user_codes: np.ndarray) -> Any:
        """Prepared vectors of users' whole current histories (production), each the same bit for
        bit whichever users are encoded with it (`encode_current_users`); for item-kNN, the users'
        recency-weighted recent items (sparse [U, n_items])."""
        if self.knn is not None:
            return self.knn.history_weights(user_codes, self.store.history_length(user_codes))
        vecs = encode_current_users(self.loaded.model, self.store, user_codes)
        return normalize_for_index(vecs, self.score_kind)

    def input_digests(self, user_codes: np.ndarray) -> np.ndarray:
        """uint64 per user: a hash of the user-tower inputs the model reads (item-kNN: zeros)."""
        if self.knn is not None:
            return np.zeros(len(user_codes), dtype=np.uint64)
        model = self.loaded.model
        reads = user_tower_reads(model, self.store)
        return rescoring.input_digests(self.store, user_codes, model.max_seq_len, reads)

    def production_users(self) -> np.ndarray:
        """Every user code with at least one event, ascending."""
        return np.flatnonzero(np.diff(self.store.hist_offsets) > 0).astype(np.int64)


def load_context(
    con: duckdb.DuckDBPyConnection,
    model_run_id: str | None = None,
    splits: tuple[str, ...] = (),
    threads: int | None = None,
) -> ScoringContext:
    """Load the feature store (with the given evaluation splits), the model and its item vectors;
    `threads` for annoy and torch (the warehouse's thread count; scoring and evaluation would
    otherwise run torch on every core). An item-kNN run loads its neighbour matrix."""
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    run_id, model_name, path = resolve_run(con, model_run_id)
    if model_name == ITEMKNN:
        store = FeatureStore.load(con, None, splits=splits)
        if store.n_items < 2:
            raise UserError(
                "the catalogue is empty: nothing to recommend (ingest events, then build-features)"
            )
        return ScoringContext(
            store=store,
            loaded=None,  # type: ignore[arg-type]  # no torch model: `knn` scores
            item_vecs=np.zeros((store.n_items, 1), dtype=np.float32),
            metric="dot",
            model_dir=models_dir(con) / run_id,
            threads=threads,
            knn=load_knn(path, store),
            knn_run=run_id,
        )
    loaded = load_artifact(path)
    store = FeatureStore.load(con, loaded.max_seq_len, splits=splits)
    items = normalize_for_index(encode_items(loaded.model, store), loaded.score_kind)
    eval_items = items
    if store.train_popularity is not None and reads_item_popularity(loaded.model, store):
        eval_items = encode_items(loaded.model, store, popularity=store.train_popularity)
        eval_items = normalize_for_index(eval_items, loaded.score_kind)
    # Items newer than the model (codes past its vocabulary, added by a later build) would all
    # share the padding embedding and tie: leave them out of retrieval until a retrain learns them.
    n_unknown = items.shape[0] - loaded.schema.n_items
    if n_unknown > 0:
        log.warning(
            "%d items are newer than model %s and are not recommended until it is retrained",
            n_unknown,
            loaded.model_run_id,
        )
        same = eval_items is items
        items = items[: loaded.schema.n_items]
        eval_items = items if same else eval_items[: loaded.schema.n_items]
    if items.shape[0] < 2:
        raise UserError("the catalogue is empty: nothing to recommend (ingest events, then build-features)")
    return ScoringContext(
        store=store,
        loaded=loaded,
        item_vecs=items,
        eval_item_vecs=eval_items,
        metric=annoy_metric(loaded.score_kind),
        # the warehouse's own folder (not the artifact path recorded at training time), so a
        # copied or moved warehouse writes its index and embeddings inside itself
        model_dir=models_dir(con) / loaded.model_run_id,
        threads=threads,
    )


def _load_or_build(
    ctx: ScoringContext, vecs: np.ndarray, file: str, k: int, settings: AnnoySettings | None
) -> tuple[AnnoyItems, Tuning, bool]:
    settings = settings or AnnoySettings()
    users = ctx.production_users()
    sample = users[sample_rows(len(users), settings.sample_users, settings.seed)]
    sample_vecs = ctx.user_vectors(sample) if len(sample) else vecs[1:2]
    items, t, built = load_or_build(
        ctx.model_dir / file,
        vecs,
        sample_vecs,
        ctx.metric,
        k,
        target_recall=settings.target_recall,
        n_trees=settings.n_trees,
        max_trees=settings.max_trees,
        search_k=settings.search_k,
        seed=settings.seed,
        n_threads=ctx.threads,
    )
    log.info(
        "annoy index %s: %s, n_trees=%d search_k=%d recall@%d=%.4f (target %.2f)",
        ctx.model_dir / file,
        "built" if built else "reused",
        t.n_trees,
        t.search_k,
        t.k,
        t.recall,
        t.target_recall,
    )
    return items, t, built


def ensure_annoy(
    ctx: ScoringContext, k: int, settings: AnnoySettings | None = None, evaluation: bool = False
) -> AnnoyItems:
    """The run's annoy index: loaded if already tuned for these vectors, else built, tuned, saved.

    `evaluation`: the index over the evaluation item vectors (the production one when they are the
    same vectors; otherwise its own file, `items-eval.ann`).
    """
    if evaluation and ctx.eval_item_vecs is not None and ctx.eval_item_vecs is not ctx.item_vecs:
        if ctx.eval_annoy is None:
            ctx.eval_annoy, _, _ = _load_or_build(ctx, ctx.eval_item_vecs, EVAL_ANNOY_FILE, k, settings)
        return ctx.eval_annoy
    if ctx.annoy is None:
        ctx.annoy, ctx.tuning, ctx.annoy_built = _load_or_build(ctx, ctx.item_vecs, ANNOY_FILE, k, settings)
    return ctx.annoy


def annoy_recall_now(ctx: ScoringContext, k: int, settings: AnnoySettings | None = None) -> float:
    """annoy's recall@k against exact on this run's seeded sample of users (seen items removed, as
    in production), measured every run whether the index was just built or reused."""
    if k in ctx.measured_recall:
        return ctx.measured_recall[k]
    settings = settings or AnnoySettings()
    items = ensure_annoy(ctx, k, settings)
    users = ctx.production_users()
    sample = users[sample_rows(len(users), settings.sample_users, settings.seed)]
    ends = ctx.store.history_length(sample)
    recall = measure_recall(
        items, ctx.user_vectors(sample), k, Seen(*ctx.store.seen(sample, ends)), ctx.threads
    )
    ctx.measured_recall[k] = recall
    log.info("annoy recall@%d against exact this run: %.4f (%d sampled users)", k, recall, len(sample))
    return recall


def topk(
    ctx: ScoringContext,
    user_vecs: np.ndarray,
    k: int,
    seen: Seen | None,
    index: str,
    annoy_settings: AnnoySettings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (codes, scores) by the chosen index, ties by code; seen items and padding never returned."""
    if ctx.knn is not None:  # item-kNN: exact, from the neighbour matrix (user_vecs: its history rows)
        return scorer_topk(ctx.knn.rows_scorer(user_vecs), k, seen)
    if check_index(index) == "exact":
        return exact_topk(user_vecs, ctx.item_vecs, k, seen)  # ~256 MB score blocks
    return ensure_annoy(ctx, k, annoy_settings).topk(user_vecs, k, seen, n_threads=ctx.threads)


def choose_index(
    ctx: ScoringContext, k: int, annoy_settings: AnnoySettings | None = None, exclude_seen: bool = True
) -> Calibration:
    """`index = auto`: time exact and annoy on the run's seeded sample of users (the one annoy's
    recall is measured on) and pick the faster one that meets the recall target (autoindex.py)."""
    settings = annoy_settings or AnnoySettings()
    users = ctx.production_users()
    sample = users[sample_rows(len(users), settings.sample_users, settings.seed)]
    ends = ctx.store.history_length(sample)
    vecs = ctx.user_vectors(sample)
    seen = Seen(*ctx.store.seen(sample, ends)) if exclude_seen else None
    if len(sample) == 0:
        return calibrate(0, 0, lambda: None, lambda: None, lambda: 1.0, settings.target_recall)
    items = ensure_annoy(ctx, k, settings)
    return calibrate(
        len(users),
        len(sample),
        exact=lambda: exact_topk(vecs, ctx.item_vecs, k, seen),
        annoy=lambda: items.topk(vecs, k, seen, n_threads=ctx.threads),
        annoy_recall=lambda: annoy_recall_now(ctx, k, settings),
        target_recall=settings.target_recall,
    )


def annoy_lists(
    ctx: ScoringContext,
    name: str,
    users: np.ndarray,
    vecs: np.ndarray,
    k: int,
    exclude: Seen | None,
    settings: AnnoySettings | None = None,
    evaluation: bool = False,
    reuse: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """annoy's top-k (codes, scores) of these rows, reusing the answers the last run stored under
    `name` (in the model run's folder) for rows whose index, vector and exclusions are the same
    (`rescoring.reuse_lists`; `reuse=False` asks annoy for every row): evaluation asks the same
    users every night."""
    items = ensure_annoy(ctx, k, settings, evaluation=evaluation)
    codes, scores, note = rescoring.reuse_lists(
        ctx.model_dir / f"annoy_answers_{name}.parquet",
        {"index": rescoring.scoring_key(items.item_vecs, items.identity(k))},
        users,
        vecs,
        exclude,
        lambda v, e: items.topk(v, k, e, n_threads=ctx.threads),
        reuse=reuse and bool(items.file_sha256),  # an index not saved to a file has no identity
    )
    log.info("annoy lists %s: %s", name, note)
    ctx.answers[name] = note
    return codes, scores


def production_lists(
    ctx: ScoringContext,
    users: np.ndarray,
    k: int,
    index: str,
    annoy_settings: AnnoySettings | None = None,
    exclude_seen: bool = True,
    reuse: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What production recommends these users: (prepared user vectors, codes, scores). Users are
    encoded from their whole current history; `exclude_seen` removes everything they interacted with.
    annoy's lists reuse the last run's answers where they hold (`annoy_lists`, `reuse`)."""
    ends = ctx.store.history_length(users)
    vecs = ctx.user_vectors(users)
    seen = Seen(*ctx.store.seen(users, ends)) if exclude_seen else None
    if ctx.knn is None and check_index(index) == "annoy":
        codes, scores = annoy_lists(ctx, "production", users, vecs, k, seen, annoy_settings, reuse=reuse)
    else:
        codes, scores = topk(ctx, vecs, k, seen, index, annoy_settings)
    return vecs, codes, scores
