"""Production scoring: every user's top-k unseen items from a model run, written to `recommendations`.

One `ScoringContext` per run holds the feature store, the model and its item vectors, and the
annoy index (built and tuned once, saved as `models/<model_run_id>/items.ann`); scoring and
evaluation share it. Users are scored in chunks (encode -> top-k -> stage), so memory stays
at one chunk of vectors plus the staged codes, whatever the number of users.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rechub_store.data.readers import FeatureStore
from rechub_store.errors import UserError
from rechub_store.jobconfig import AnnoySettings
from rechub_store.paths import thread_count
from rechub_store.publish.analytics import RecommendationWriter
from rechub_store.ranking.embeddings import (
    annoy_metric,
    encode_items,
    encode_users,
    normalize_for_index,
    reads_item_popularity,
)
from rechub_store.ranking.exact import Seen, exact_topk
from rechub_store.retrieval import rescoring
from rechub_store.retrieval.annoy_index import (
    AnnoyItems,
    Tuning,
    load_or_build,
    measure_recall,
    sample_rows,
)
from rechub_store.training.registry import LoadedModel, load_model, models_dir
from rechub_store.warehouse import Warehouse

log = logging.getLogger(__name__)

INDEXES = ("annoy", "exact")
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
    # evaluation encodes items as of training (`FeatureStore.train_popularity`); the same array as
    # item_vecs (and the same annoy index) unless the item tower reads popularity
    eval_item_vecs: np.ndarray | None = None
    eval_annoy: AnnoyItems | None = None

    @property
    def model_run_id(self) -> str:
        return self.loaded.model_run_id

    @property
    def score_kind(self) -> str:
        return self.loaded.score_kind

    def user_vectors(self, user_codes: np.ndarray, hist_end: np.ndarray | None = None) -> np.ndarray:
        """Prepared user vectors from histories cut at `hist_end` (None = whole current history)."""
        vecs = encode_users(self.loaded.model, self.store, user_codes, hist_end)
        return normalize_for_index(vecs, self.score_kind)

    def production_users(self) -> np.ndarray:
        """Every user code with at least one event, ascending."""
        return np.flatnonzero(np.diff(self.store.hist_offsets) > 0).astype(np.int64)


def load_context(
    con: duckdb.DuckDBPyConnection, model_run_id: str | None = None, splits: tuple[str, ...] = ()
) -> ScoringContext:
    """Load the feature store (with the given evaluation splits), the model and its item vectors."""
    loaded = load_model(con, model_run_id)
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
        items, ctx.user_vectors(sample, ends), k, Seen(*ctx.store.seen(sample, ends)), thread_count()
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
    if index == "exact":
        return exact_topk(user_vecs, ctx.item_vecs, k, seen)  # ~256 MB score blocks
    if index == "annoy":
        return ensure_annoy(ctx, k, annoy_settings).topk(user_vecs, k, seen, n_threads=thread_count())
    raise UserError(f"--index: expected annoy or exact, got {index!r}")


def production_lists(
    ctx: ScoringContext,
    users: np.ndarray,
    k: int,
    index: str,
    annoy_settings: AnnoySettings | None = None,
    exclude_seen: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What production recommends these users: (prepared user vectors, codes, scores). Users are
    encoded from their whole current history; `exclude_seen` removes everything they interacted with."""
    ends = ctx.store.history_length(users)
    vecs = ctx.user_vectors(users, ends)
    seen = Seen(*ctx.store.seen(users, ends)) if exclude_seen else None
    codes, scores = topk(ctx, vecs, k, seen, index, annoy_settings)
    return vecs, codes, scores


@dataclass
class ScoreReport:
    run_id: str
    model_run_id: str
    index: str
    k: int
    users: int
    rows: int
    seconds: float
    seconds_by_phase: dict[str, float] = field(default_factory=dict)
    annoy: dict[str, Any] | None = None
    rescored: int = 0  # users whose lists were computed this run (the others kept theirs)
    rescoring: str = ""  # why everyone or only those

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _UserEmbeddingsWriter:
    """`models/<model_run_id>/user_embeddings.parquet` (code, vector) for the users just scored."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.schema = pa.schema([("code", pa.int32()), ("vector", pa.list_(pa.float32(), dim))])
        self.writer = pq.ParquetWriter(self.tmp, self.schema)

    def add(self, codes: np.ndarray, vecs: np.ndarray) -> None:
        flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).ravel())
        vectors = pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1])
        self.writer.write_table(pa.table([pa.array(codes.astype(np.int32)), vectors], schema=self.schema))

    def close(self, keep: bool = True) -> None:
        """Finish the file; `keep=False` (a failed run) discards it and leaves the old one."""
        self.writer.close()
        if keep:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_item_embeddings(ctx: ScoringContext) -> Path:
    """`models/<model_run_id>/item_embeddings.parquet` (code, vector), rows 1.. (padding left out)."""
    ctx.model_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.model_dir / "item_embeddings.parquet"
    vecs = ctx.item_vecs[1:]
    flat = pa.array(np.ascontiguousarray(vecs).ravel())
    table = pa.table(
        {
            "code": pa.array(np.arange(1, len(ctx.item_vecs), dtype=np.int32)),
            "vector": pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1]),
        }
    )
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


ChunkSource = Callable[[np.ndarray], tuple[np.ndarray, Seen | None]]  # user codes -> (vectors, seen)
Search = Callable[[np.ndarray, Seen | None], tuple[np.ndarray, np.ndarray]]  # -> (codes, scores)


def write_topk(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    model_run_id: str,
    users: np.ndarray,
    source: ChunkSource,
    search: Search,
    *,
    keep_runs: int = 30,
    chunk_users: int = 65_536,
    progress: Callable[[int, int], None] | None = None,
    keep_users: np.ndarray | None = None,
) -> tuple[int, dict[str, float]]:
    """The scoring loop, model-agnostic: per chunk of users get vectors + seen, search, stage; commit.

    `keep_users`: users whose rows of the current `recommendations` are staged again unchanged
    (incremental scoring). Returns (rows written, seconds per phase). `bench/score.py` drives it
    with synthetic vectors.
    """
    phases = {"encode": 0.0, "topk": 0.0, "stage": 0.0}
    writer = RecommendationWriter(con, run_id, model_run_id)
    if keep_users is not None:
        t0 = time.perf_counter()
        writer.keep_previous(keep_users)
        phases["keep"] = time.perf_counter() - t0
    for lo in range(0, len(users), chunk_users):
        part = users[lo : lo + chunk_users]
        t0 = time.perf_counter()
        vecs, seen = source(part)
        t1 = time.perf_counter()
        codes, scores = search(vecs, seen)
        t2 = time.perf_counter()
        writer.add(part, codes, scores)
        phases["encode"] += t1 - t0
        phases["topk"] += t2 - t1
        phases["stage"] += time.perf_counter() - t2
        if progress is not None:
            progress(min(lo + chunk_users, len(users)), len(users))
    t3 = time.perf_counter()
    rows = writer.commit(keep_runs=keep_runs)
    phases["commit"] = time.perf_counter() - t3
    return rows, phases


def score_run(
    con: duckdb.DuckDBPyConnection,
    ctx: ScoringContext,
    run_id: str,
    *,
    k: int = 100,
    index: str = "annoy",
    annoy_settings: AnnoySettings | None = None,
    keep_runs: int = 30,
    chunk_users: int = 65_536,
    save_embeddings: bool = True,
    progress: Callable[[int, int], None] | None = None,
    exclude_seen: bool = True,
    incremental: bool = False,
) -> ScoreReport:
    """Score every user with events and replace the warehouse's `recommendations` with run `run_id`.

    Users are encoded from their whole current history; everything they have interacted with
    is excluded (`exclude_seen=False`: re-consumption domains, where repeats are welcome). The
    history keeps `keep_runs` runs; re-scoring a run_id replaces it.
    `incremental`: users whose vector and seen items equal the previous run's, under the same
    model run, item vectors and settings, keep their rows (see `rescoring`); the result is the
    same as rescoring everyone. Annoy only (its candidates are rescored row by row); the exact
    index always rescores everyone.
    """
    if index not in INDEXES:
        raise UserError(f"--index: expected annoy or exact, got {index!r}")
    t0 = time.perf_counter()
    if index == "annoy":
        ensure_annoy(ctx, k, annoy_settings)
        annoy_recall_now(ctx, k, annoy_settings)
    index_seconds = time.perf_counter() - t0
    users = ctx.production_users()
    ctx.model_dir.mkdir(parents=True, exist_ok=True)
    key = rescoring.scoring_key(
        ctx.item_vecs,
        rescoring.settings_of(ctx.model_run_id, k, index, exclude_seen, annoy_settings, ctx.tuning),
    )
    previous, why = (None, "full rescore requested")
    if incremental and index == "exact":
        # the blocked matmul's float results for a user depend on the other rows of its block
        # (measured: a few ulp), so a subset scored alone would not equal a full rescore bit for bit
        why = "the exact index rescores everyone"
    elif incremental and ctx.annoy_built:
        why = "annoy index built this run"
    elif incremental:
        previous, why = rescoring.load_previous(con, ctx.model_dir, key)
    rescoring.forget(ctx.model_dir)
    n_seen, seen_hash = rescoring.history_state(ctx.store, users)
    emb = None
    if save_embeddings or previous is not None:
        write_item_embeddings(ctx)
        emb = _UserEmbeddingsWriter(ctx.model_dir / "user_embeddings.parquet", ctx.item_vecs.shape[1])

    keep_users = None
    todo = users
    t_plan = time.perf_counter()
    if previous is not None:
        # encode everyone once (the embeddings file holds every scored user), compare with the previous run
        # (the changed users' vectors are kept for their top-k: the numbers a full rescore uses)
        assert emb is not None
        changed = np.zeros(len(users), dtype=bool)
        changed_vecs = []
        for lo in range(0, len(users), chunk_users):
            part = users[lo : lo + chunk_users]
            vecs = ctx.user_vectors(part, ctx.store.history_length(part))
            emb.add(part, vecs)
            same = previous.unchanged(
                part, vecs, n_seen[lo : lo + chunk_users], seen_hash[lo : lo + chunk_users]
            )
            changed[lo : lo + chunk_users] = ~same
            changed_vecs.append(vecs[~same])
        keep_users, todo = users[~changed], users[changed]
        todo_vecs = np.concatenate(changed_vecs)
        why = f"{len(todo)} of {len(users)} users changed since {previous.run_id}"
    plan_seconds = time.perf_counter() - t_plan
    log.info("scoring %s: %s", "incrementally" if previous is not None else "every user", why)

    done = 0

    def source(part: np.ndarray) -> tuple[np.ndarray, Seen | None]:
        nonlocal done
        ends = ctx.store.history_length(part)
        if previous is None:
            vecs = ctx.user_vectors(part, ends)
            if emb is not None:
                emb.add(part, vecs)
        else:  # the changed users are scored in order, chunk after chunk
            vecs = todo_vecs[done : done + len(part)]
            done += len(part)
        return vecs, Seen(*ctx.store.seen(part, ends)) if exclude_seen else None

    try:
        rows, phases = write_topk(
            con,
            run_id,
            ctx.model_run_id,
            todo,
            source,
            lambda vecs, seen: topk(ctx, vecs, k, seen, index, annoy_settings),
            keep_runs=keep_runs,
            chunk_users=chunk_users,
            progress=progress,
            keep_users=keep_users,
        )
    except BaseException:
        if emb is not None:
            emb.close(keep=False)
        raise
    if emb is not None:
        emb.close()
        rescoring.save_state(ctx.model_dir, run_id, key, users, n_seen, seen_hash)
    phases["index"] = index_seconds
    phases["compare"] = plan_seconds
    report = ScoreReport(
        run_id=run_id,
        model_run_id=ctx.model_run_id,
        index=index,
        k=k,
        users=len(users),
        rows=rows,
        seconds=round(time.perf_counter() - t0, 3),
        seconds_by_phase={name: round(v, 3) for name, v in phases.items()},
        annoy=_annoy_summary(ctx, k) if index == "annoy" else None,
        rescored=len(todo),
        rescoring=why,
    )
    log.info("scored %d users -> %d rows in %.1fs (%s)", report.users, rows, report.seconds, index)
    return report


def _annoy_summary(ctx: ScoringContext, k: int) -> dict[str, Any] | None:
    if ctx.tuning is None:
        return None
    t = ctx.tuning
    measured = ctx.measured_recall.get(k)
    return {
        "measured_recall": None if measured is None else round(measured, 5),  # this run, at k
        "measured_k": k,
        "path": str(ctx.model_dir / ANNOY_FILE),
        "built": ctx.annoy_built,
        "metric": t.metric,
        "n_trees": t.n_trees,
        "search_k": t.search_k,
        "tuned_k": t.k,
        "recall": round(t.recall, 5),  # at tuning time, recall@tuned_k
        "target_recall": t.target_recall,
        "met_target": t.met_target,
        "sample_users": t.sample_users,
        "build_seconds": t.build_seconds,
        "tune_seconds": t.tune_seconds,
    }


def score(
    warehouse: Warehouse,
    *,
    model_run_id: str | None = None,
    run_id: str | None = None,
    k: int = 100,
    index: str = "annoy",
    annoy_settings: AnnoySettings | None = None,
    keep_runs: int = 30,
    exclude_seen: bool = True,
) -> ScoreReport:
    """`rechub-store score`: load the model run (default: latest) and score into the working copy."""
    with warehouse.session() as con:
        ctx = load_context(con, model_run_id)
        run_id = run_id or f"manual-{ctx.model_run_id}"
        return score_run(
            con,
            ctx,
            run_id,
            k=k,
            index=index,
            annoy_settings=annoy_settings,
            keep_runs=keep_runs,
            exclude_seen=exclude_seen,
        )
