"""`score --engine spark`: the top-k search as a Spark job, results through the existing publish path.

The driver does what local scoring does before its search (load the model run, build or reuse the
tuned annoy index and measure its recall, encode each user from the whole current history and
collect the items to exclude) and writes the users as Parquet: user_code, vector, seen.
Executors get the item vectors and the annoy index file through `SparkContext.addFile` (fetched
once per node; annoy memory-maps the file), users are hash-partitioned by user_code, and each
partition runs the same top-k code as local scoring (`AnnoyItems.topk` or `exact_topk`) in
`mapInArrow`. The job's Parquet output is then staged and committed by `RecommendationWriter`,
so `recommendations`, its history and `rechub-store publish` (analytics.duckdb, server
databases) work exactly as after local scoring. The same vectors, index and search give the same
rows as `score` (tests/spark/test_scoring.py).
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import SparkFiles

from rechub_store.config import INDEXES, AnnoySettings
from rechub_store.errors import UserError
from rechub_store.ranking.exact import Seen, exact_topk
from rechub_store.results.score import (
    ScoreReport,
    _UserEmbeddingsWriter,
    write_item_embeddings,
)
from rechub_store.results.tables import RecommendationWriter
from rechub_store.retrieval.annoy_index import AnnoyItems
from rechub_store.retrieval.scoring import (
    ANNOY_FILE,
    ScoringContext,
    annoy_recall_now,
    ensure_annoy,
    load_context,
)
from rechub_store.spark.session import sql_path

ITEMS_FILE = "items.npy"
OUTPUT_SCHEMA = "user_code long, rank int, item_code long, score double"


def _users_table(codes: np.ndarray, vecs: np.ndarray, seen: Seen | None) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).ravel())
    seen = seen or Seen.empty(len(codes))
    return pa.table(
        {
            "user_code": pa.array(codes.astype(np.int64)),
            "vector": pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1]),
            "seen": pa.ListArray.from_arrays(pa.array(seen.indptr.astype(np.int32)), pa.array(seen.indices)),
        }
    )


def _search(k: int, index: str, metric: str, search_k: int, tuned_k: int, items_file: str, annoy_file: str):
    """The function each partition runs (pickled to the executors: plain values only)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        items = np.load(SparkFiles.get(items_file), mmap_mode="r")
        annoy = None
        if index == "annoy":
            annoy = AnnoyItems.load(Path(SparkFiles.get(annoy_file)), items, metric, search_k, tuned_k)
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            users = batch.column("user_code").to_numpy()
            # Spark hands lists over as variable-size lists (flatten() honours a batch's slicing)
            vecs = batch.column("vector").flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
            seen_col = batch.column("seen")
            offsets = seen_col.offsets.to_numpy().astype(np.int64)
            seen = Seen(
                offsets - offsets[0], seen_col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
            )
            if annoy is not None:
                codes, scores = annoy.topk(vecs, k, seen, n_threads=1)
            else:
                codes, scores = exact_topk(vecs, np.asarray(items), k, seen)
            yield pa.RecordBatch.from_pydict(
                {
                    "user_code": np.repeat(users, k),
                    "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
                    "item_code": codes.reshape(-1).astype(np.int64),
                    "score": scores.reshape(-1).astype(np.float64),
                }
            )

    return run


def score_spark(
    spark,
    con: duckdb.DuckDBPyConnection,
    ctx: ScoringContext,
    run_id: str,
    *,
    k: int = 100,
    index: str = "annoy",
    annoy_settings: AnnoySettings | None = None,
    keep_runs: int = 30,
    work_dir: Path,
    partitions: int | None = None,
    chunk_users: int = 65_536,
    exclude_seen: bool = True,
) -> ScoreReport:
    """Score every user with events on Spark; replace `recommendations` with run `run_id`."""
    if index not in INDEXES:
        raise UserError(f"--index: expected annoy or exact, got {index!r}")
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    if index == "annoy":
        ensure_annoy(ctx, k, annoy_settings)
        annoy_recall_now(ctx, k, annoy_settings)
    phases["index"] = time.perf_counter() - t0
    job = Path(work_dir) / f"score-{run_id}-{uuid.uuid4().hex[:6]}"
    users_dir = job / "users"
    users_dir.mkdir(parents=True)
    try:
        t1 = time.perf_counter()
        users = ctx.production_users()
        write_item_embeddings(ctx)
        emb = _UserEmbeddingsWriter(ctx.model_dir / "user_embeddings.parquet", ctx.item_vecs.shape[1])
        try:
            for n, lo in enumerate(range(0, len(users), chunk_users)):
                part = users[lo : lo + chunk_users]
                ends = ctx.store.history_length(part)
                vecs = ctx.user_vectors(part)
                emb.add(part, vecs)
                seen = Seen(*ctx.store.seen(part, ends)) if exclude_seen else None
                pq.write_table(_users_table(part, vecs, seen), users_dir / f"part-{n:06d}.parquet")
        except BaseException:
            emb.close(keep=False)
            raise
        emb.close()
        # per-job names: addFile refuses a second, different file under a name it already serves
        items_file = f"{job.name}-{ITEMS_FILE}"
        np.save(job / items_file, np.ascontiguousarray(ctx.item_vecs, dtype=np.float32))
        phases["encode"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        sc = spark.sparkContext
        sc.addFile(str(job / items_file))
        annoy_file = ""
        search_k, tuned_k = -1, 1
        if index == "annoy":
            assert ctx.annoy is not None
            annoy_file = f"{job.name}-{ANNOY_FILE}"
            shutil.copyfile(ctx.model_dir / ANNOY_FILE, job / annoy_file)
            sc.addFile(str(job / annoy_file))
            search_k, tuned_k = ctx.annoy.search_k, ctx.annoy.tuned_k
        frame = spark.read.parquet(sql_path(users_dir))
        frame = frame.repartition(partitions or sc.defaultParallelism, "user_code")
        search = _search(k, index, ctx.metric, search_k, tuned_k, items_file, annoy_file)
        frame.mapInArrow(search, OUTPUT_SCHEMA).write.parquet(sql_path(job / "topk"))
        phases["topk"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        result = pq.read_table(job / "topk").sort_by([("user_code", "ascending"), ("rank", "ascending")])
        codes = result.column("item_code").to_numpy().reshape(-1, k)
        scores = result.column("score").to_numpy().reshape(-1, k)
        scored = result.column("user_code").to_numpy()[::k]
        if len(scored) != len(users) or not np.array_equal(scored, users):
            raise RuntimeError(f"the Spark job returned {len(scored)} users, expected {len(users)}")
        writer = RecommendationWriter(con, run_id, ctx.model_run_id)
        for lo in range(0, len(users), chunk_users):
            writer.add(
                users[lo : lo + chunk_users], codes[lo : lo + chunk_users], scores[lo : lo + chunk_users]
            )
        rows = writer.commit(keep_runs=keep_runs)
        phases["commit"] = time.perf_counter() - t3
    finally:
        shutil.rmtree(job, ignore_errors=True)
    return ScoreReport.of(ctx, run_id, index, k, len(users), rows, t0, phases)


def score_model_run(
    spark, con: duckdb.DuckDBPyConnection, model_run_id: str | None, run_id: str | None, **options: Any
) -> ScoreReport:
    """`score --engine spark`: load the model run (default: the latest) and score it on Spark."""
    ctx = load_context(con, model_run_id)
    return score_spark(spark, con, ctx, run_id or f"manual-{ctx.model_run_id}", **options)
