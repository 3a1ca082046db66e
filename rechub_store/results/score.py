"""Scoring into the working copy: every user's top-k into `recommendations` (+ history), and the
user/item embeddings as Parquet beside the model artifact.

The search itself (context, annoy or exact top-k) is `retrieval.scoring`; this module records it.
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

from rechub_store.config import INDEXES, AnnoySettings, as_choice
from rechub_store.ranking.exact import Seen
from rechub_store.results.similar_items import write_similar_items
from rechub_store.results.tables import RecommendationWriter
from rechub_store.retrieval import rescoring
from rechub_store.retrieval.rescoring import Search
from rechub_store.retrieval.scoring import (
    ANNOY_FILE,
    ScoringContext,
    annoy_recall_now,
    choose_index,
    ensure_annoy,
    load_context,
    topk,
)
from rechub_store.warehouse import Warehouse

log = logging.getLogger(__name__)


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
    auto: dict[str, Any] | None = None  # index = auto: what was measured and why `index` was chosen
    rescored: int = 0  # users whose lists were computed this run (the others kept theirs)
    rescoring: str = ""  # why everyone or only those

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(
        cls,
        ctx: ScoringContext,
        run_id: str,
        index: str,
        k: int,
        users: int,
        rows: int,
        started: float,
        phases: dict[str, float],
        **more: Any,
    ) -> ScoreReport:
        """The report of a scoring run that started at `started` (perf_counter), for either engine."""
        return cls(
            run_id=run_id,
            model_run_id=ctx.model_run_id,
            index=index,
            k=k,
            users=users,
            rows=rows,
            seconds=round(time.perf_counter() - started, 3),
            seconds_by_phase={name: round(v, 3) for name, v in phases.items()},
            annoy=_annoy_summary(ctx, k) if index == "annoy" else None,
            **more,
        )


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
    recheck_users: int = 256,
) -> ScoreReport:
    """Score every user with events and replace the warehouse's `recommendations` with run `run_id`.

    Users are encoded from their whole current history; everything they have interacted with
    is excluded (`exclude_seen=False`: re-consumption domains, where repeats are welcome). The
    history keeps `keep_runs` runs; re-scoring a run_id replaces it.
    `incremental`: users whose user-tower inputs and seen items equal the previous run's, under the
    same model run, item vectors and settings, keep their vectors and rows and are not encoded
    (see `rescoring`); the result is the same as rescoring everyone, and a sample of the kept users
    is encoded and their lists computed again to check it (`recheck_users`; any difference
    rescores everyone). Annoy and exact vectors; an item-kNN run rescores everyone.
    """
    as_choice(index, "--index", (*INDEXES, "auto"))
    if ctx.knn is not None:
        if index != "exact":
            log.info("item-kNN run %s is ranked exactly (it has no vectors for annoy)", ctx.model_run_id)
        index, save_embeddings = "exact", False
    t0 = time.perf_counter()
    calibration = None
    if index == "auto":  # measured on this run's users (retrieval/autoindex.py)
        calibration = choose_index(ctx, k, annoy_settings, exclude_seen)
        index = calibration.index
        log.info("index auto: %s (%s)", index, calibration.reason)
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
    if incremental and ctx.knn is not None:
        why = "item-kNN runs rescore everyone (no user vectors to compare)"
    elif incremental and ctx.annoy_built:
        why = "annoy index built this run"
    elif incremental:
        previous, why = rescoring.load_previous(con, ctx.model_dir, key)
    rescoring.forget(ctx.model_dir)
    n_seen, seen_hash = rescoring.history_state(ctx.store, users)
    keeps_state = save_embeddings or previous is not None  # the embeddings file and score state are written
    t_inputs = time.perf_counter()
    inputs = ctx.input_digests(users) if keeps_state else None
    inputs_seconds = time.perf_counter() - t_inputs
    digests: list[np.ndarray] = []  # `list_digest` of the lists computed this run, in `todo` order

    def search(vecs: np.ndarray, seen: Seen | None) -> tuple[np.ndarray, np.ndarray]:
        codes, scores = topk(ctx, vecs, k, seen, index, annoy_settings)
        digests.append(rescoring.list_digest(codes, scores))
        return codes, scores

    recheck_seconds = None
    kept = np.zeros(len(users), dtype=bool)
    if previous is not None:
        assert inputs is not None
        t_check = time.perf_counter()
        kept = previous.same_inputs(users, n_seen, seen_hash, inputs)
        differ, rechecked = _recheck(ctx, previous, users[kept], exclude_seen, recheck_users, search)
        digests.clear()
        recheck_seconds = time.perf_counter() - t_check
        if differ:
            why = f"{differ} of {rechecked} re-checked users differ from run {previous.run_id}: rescore all"
            previous = None
            kept[:] = False
    emb = None
    if keeps_state:
        write_item_embeddings(ctx)
        emb = _UserEmbeddingsWriter(ctx.model_dir / "user_embeddings.parquet", ctx.item_vecs.shape[1])

    keep_users = None
    todo = users[~kept]
    todo_vecs = None
    encode_seconds = 0.0
    if previous is not None:
        # only the changed users are encoded; the file keeps every scored user (the others' vectors
        # are the previous run's, which encoding them would give bit for bit)
        assert emb is not None
        t_encode = time.perf_counter()
        todo_vecs = ctx.user_vectors(todo)
        vectors = np.zeros((len(users), todo_vecs.shape[1]), dtype=np.float32)
        vectors[kept] = previous.vectors[users[kept]]
        vectors[~kept] = todo_vecs
        emb.add(users, vectors)
        encode_seconds = time.perf_counter() - t_encode
        keep_users = users[kept]
        why = f"{len(todo)} of {len(users)} users changed since {previous.run_id}"
        why += f" ({rechecked} kept users encoded and their lists computed again: equal)"
    log.info("scoring %s: %s", "incrementally" if previous is not None else "every user", why)

    done = 0

    def source(part: np.ndarray) -> tuple[np.ndarray, Seen | None]:
        nonlocal done
        if todo_vecs is None:
            vecs = ctx.user_vectors(part)
            if emb is not None:
                emb.add(part, vecs)
        else:  # the changed users are scored in order, chunk after chunk
            vecs = todo_vecs[done : done + len(part)]
            done += len(part)
        return vecs, Seen(*ctx.store.seen(part, ctx.store.history_length(part))) if exclude_seen else None

    try:
        rows, phases = write_topk(
            con,
            run_id,
            ctx.model_run_id,
            todo,
            source,
            search,
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
        digest = np.zeros(len(users), dtype=np.uint64)
        digest[~kept] = np.concatenate(digests) if digests else digest[:0]
        if previous is not None:
            digest[kept] = previous.digest[users[kept]]
        assert inputs is not None
        rescoring.save_state(ctx.model_dir, run_id, key, users, n_seen, seen_hash, digest, inputs)
    phases["index"] = index_seconds
    if recheck_seconds is not None:
        phases["recheck"] = recheck_seconds
    if ctx.knn is not None:
        t_similar = time.perf_counter()
        write_similar_items(con, ctx.knn.similar, ctx.model_run_id, k)
        phases["similar_items"] = time.perf_counter() - t_similar
    phases["encode"] += encode_seconds
    phases["compare"] = inputs_seconds
    report = ScoreReport.of(
        ctx,
        run_id,
        index,
        k,
        len(users),
        rows,
        t0,
        phases,
        auto=None if calibration is None else calibration.as_dict(),
        rescored=len(todo),
        rescoring=why,
    )
    log.info("scored %d users -> %d rows in %.1fs (%s)", report.users, rows, report.seconds, index)
    return report


def _recheck(
    ctx: ScoringContext,
    previous: rescoring.Previous,
    same: np.ndarray,
    exclude_seen: bool,
    n: int,
    search: Search,
) -> tuple[int, int]:
    """Encode again up to `n` (evenly spaced) of the users `same` that would be kept, and compute
    their lists: the check that a kept vector and list are what a full rescore would write (each
    compared bit for bit with the stored vector and list digest).
    Returns (how many users differ, how many were checked)."""
    pick = same[rescoring.evenly_spaced(len(same), n)]
    if not len(pick):
        return 0, 0
    vecs = ctx.user_vectors(pick)
    ends = ctx.store.history_length(pick)
    seen = Seen(*ctx.store.seen(pick, ends)) if exclude_seen else None
    codes, scores = search(vecs, seen)
    differ = (vecs != previous.vectors[pick]).any(axis=1)
    differ |= rescoring.list_digest(codes, scores) != previous.digest[pick]
    return int(differ.sum()), len(pick)


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
        ctx = load_context(con, model_run_id, threads=warehouse.threads)
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
