"""Batch-scoring benchmark: annoy (auto-tuned) vs exact, and scoring + write-back end to end.

    python bench/score.py                          # 1M users x 100k items, k=100, 64-d (the target)
    python bench/score.py --users 50000 --items 20000 --k 100   # a quick run

Vectors are synthetic but shaped like trained two-tower embeddings: hierarchical Gaussian
clusters (topics and sub-topics) with overlap and log-normal item norms, not isotropic noise
(on which no ANN index beats brute force). Each user has a random history (seen items) that
is excluded, as in production.

Each mode runs in its own process so its peak RSS is its own:
- `exact`: chunked matmul + top-k for every user (retrieval/exact.py).
- `annoy`: build + auto-tune to recall@k >= 0.95 vs exact on 1000 users, then every user;
  annoy's recall@k vs exact measured on 2000 other users (seen items excluded in both).
- `e2e`: what `rechub-store nightly` does after encoding: index build/tune, per-chunk top-k,
  staging, one-transaction write of `recommendations` (+ history) with raw ids joined from the
  vocabularies in a real warehouse file, then the atomic analytics publish.
Results: bench/out/score.json (and a summary on stdout). Targets (issue 4): annoy recall@100
>= 0.95; e2e for 100M rows < 15 min and < 8 GiB RSS on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "score.json"


# ---------------------------------------------------------------------------- synthetic vectors
class World:
    """Deterministic clustered vectors: items once, users and histories per chunk on demand."""

    def __init__(self, n_items: int, dim: int, seed: int, topics: int = 64, subtopics: int = 16) -> None:
        rng = np.random.default_rng(seed)
        self.seed, self.dim, self.n_items = seed, dim, n_items
        self.topics = rng.standard_normal((topics, dim)).astype(np.float32)
        self.sub = (0.6 * rng.standard_normal((topics, subtopics, dim))).astype(np.float32)
        t = rng.integers(0, topics, n_items)
        s = rng.integers(0, subtopics, n_items)
        items = self.topics[t] + self.sub[t, s] + 0.5 * rng.standard_normal((n_items, dim)).astype(np.float32)
        items *= rng.lognormal(0.0, 0.2, (n_items, 1)).astype(np.float32)  # popularity-like norms for 'dot'
        self.item_vecs = np.zeros((n_items + 1, dim), dtype=np.float32)  # row 0 = padding
        self.item_vecs[1:] = items

    def users(self, codes: np.ndarray, hist_mean: float) -> tuple[np.ndarray, object]:
        from rechub_store.ranking.exact import Seen

        rng = np.random.default_rng([self.seed, int(codes[0]) if len(codes) else 0])
        n = len(codes)
        t = rng.integers(0, len(self.topics), n)
        s = rng.integers(0, self.sub.shape[1], n)
        vecs = self.topics[t] + self.sub[t, s] + 0.7 * rng.standard_normal((n, self.dim)).astype(np.float32)
        lengths = np.minimum(rng.poisson(hist_mean, n) + 1, self.n_items // 2)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        seen = Seen(indptr, rng.integers(1, self.n_items + 1, int(indptr[-1]), dtype=np.int64))
        return vecs.astype(np.float32), seen


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ---------------------------------------------------------------------------- modes (child processes)
def _chunks(n: int, size: int):
    for lo in range(0, n, size):
        yield np.arange(lo + 1, min(lo + size, n) + 1, dtype=np.int64)


def mode_exact(a: argparse.Namespace, world: World) -> dict:
    from rechub_store.ranking.exact import exact_topk

    chunk = max(64, min(4096, (1 << 26) // world.item_vecs.shape[0]))
    t0 = time.perf_counter()
    for codes in _chunks(a.users, a.chunk_users):
        vecs, seen = world.users(codes, a.hist)
        exact_topk(vecs, world.item_vecs, a.k, seen, chunk_size=chunk)
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "users_per_second": round(a.users / (time.perf_counter() - t0)),
    }


def _tuned_index(a: argparse.Namespace, world: World):
    from rechub_store.retrieval.annoy_index import build_tuned

    sample, _ = world.users(np.arange(10**9, 10**9 + a.tune_users), 0)  # users outside the scored range
    return build_tuned(
        world.item_vecs,
        sample,
        "dot",
        a.k,
        target_recall=a.target_recall,
        n_trees=a.trees,
        n_threads=a.threads,
    )


def mode_annoy(a: argparse.Namespace, world: World) -> dict:
    from rechub_store.ranking.exact import exact_topk
    from rechub_store.retrieval.annoy_index import overlap_at_k

    t0 = time.perf_counter()
    index, tuning = _tuned_index(a, world)
    t_index = time.perf_counter() - t0
    t1 = time.perf_counter()
    for codes in _chunks(a.users, a.chunk_users):
        vecs, seen = world.users(codes, a.hist)
        index.topk(vecs, a.k, seen, n_threads=a.threads)
    t_query = time.perf_counter() - t1
    check = np.arange(2 * 10**9, 2 * 10**9 + a.check_users)
    vecs, seen = world.users(check, a.hist)
    truth, _ = exact_topk(vecs, world.item_vecs, a.k, seen)
    found, _ = index.topk(vecs, a.k, seen, n_threads=a.threads)
    return {
        "seconds": round(t_index + t_query, 2),
        "index_seconds": round(t_index, 2),
        "query_seconds": round(t_query, 2),
        "users_per_second": round(a.users / t_query),
        "recall_at_k_vs_exact": round(overlap_at_k(found, truth, a.k), 4),
        "tuning": {
            key: getattr(tuning, key)
            for key in (
                "n_trees",
                "search_k",
                "k",
                "recall",
                "met_target",
                "build_seconds",
                "tune_seconds",
                "trials",
            )
        },
    }


def mode_e2e(a: argparse.Namespace, world: World) -> dict:
    from rechub_store.publish.analytics import publish_analytics
    from rechub_store.ranking.exact import exact_topk
    from rechub_store.results.score import write_topk
    from rechub_store.settings import Settings

    root = Path(a.workdir or tempfile.mkdtemp(prefix="rechub-bench-"))
    wh = Settings.from_env(warehouse_path=root / "rechub.duckdb", memory_limit=a.memory_limit).warehouse()
    wh.path.unlink(missing_ok=True)
    con = wh.connect()
    con.execute(
        "CREATE OR REPLACE TABLE features.vocab_user_id AS SELECT 'user-' || lpad(i::VARCHAR, 8, '0') AS "
        "value, i::INTEGER AS code FROM range(1, ? + 1) t(i)",
        [a.users],
    )
    con.execute(
        "CREATE OR REPLACE TABLE features.vocab_item_id AS SELECT 'item-' || lpad(i::VARCHAR, 7, '0') AS "
        "value, i::INTEGER AS code FROM range(1, ? + 1) t(i)",
        [a.items],
    )
    t0 = time.perf_counter()
    if a.index == "annoy":
        index, tuning = _tuned_index(a, world)

        def search(vecs, seen):
            return index.topk(vecs, a.k, seen, n_threads=a.threads)
    else:
        tuning = None
        chunk = max(64, min(4096, (1 << 26) // world.item_vecs.shape[0]))

        def search(vecs, seen):
            return exact_topk(vecs, world.item_vecs, a.k, seen, chunk_size=chunk)

    t_index = time.perf_counter() - t0
    users = np.arange(1, a.users + 1, dtype=np.int64)
    rows, phases = write_topk(
        con,
        "bench",
        "bench-model",
        users,
        lambda codes: world.users(codes, a.hist),
        search,
        chunk_users=a.chunk_users,
    )
    t_score = time.perf_counter() - t0
    t1 = time.perf_counter()
    publish_analytics(con, wh, "bench")
    t_publish = time.perf_counter() - t1
    con.close()
    sizes = {p.name: round(p.stat().st_size / 2**30, 3) for p in (wh.path, wh.analytics_path)}
    if not a.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "index": a.index,
        "rows": rows,
        "seconds": round(t_score + t_publish, 2),
        "score_and_write_seconds": round(t_score, 2),
        "publish_seconds": round(t_publish, 2),
        "phases_seconds": {"index": round(t_index, 2), **{k: round(v, 2) for k, v in phases.items()}},
        "rows_per_second": round(rows / t_score),
        "file_gib": sizes,
        "annoy_recall_at_tuning": None if tuning is None else round(tuning.recall, 4),
        "workdir": a.workdir,
    }


MODES = {"exact": mode_exact, "annoy": mode_annoy, "e2e": mode_e2e}


# ---------------------------------------------------------------------------- driver
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hist", type=float, default=20.0, help="mean seen items per user")
    p.add_argument("--modes", default="annoy,exact,e2e")
    p.add_argument("--index", default="annoy", choices=["annoy", "exact"], help="index for the e2e mode")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--trees", type=int, default=10, help="annoy trees to start tuning from")
    p.add_argument("--tune-users", type=int, default=1000)
    p.add_argument("--check-users", type=int, default=2000)
    p.add_argument("--chunk-users", type=int, default=65_536)
    p.add_argument("--memory-limit", default="4GB", help="DuckDB memory limit in the e2e mode")
    p.add_argument("--workdir", default=None, help="e2e warehouse folder [default: a temporary one]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=int(os.environ.get("RECHUB_THREADS") or os.cpu_count() or 1)
    )  # annoy build and search threads
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.child:
        world = World(a.items, a.dim, a.seed)
        result = MODES[a.child](a, world)
        result["peak_rss_gib"] = round(peak_rss_gib(), 3)
        print(json.dumps(result, default=str))
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    results: dict[str, dict] = {}
    for mode in a.modes.split(","):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, *argv, "--child", mode], capture_output=True, text=True
        )
        if proc.returncode != 0:
            results[mode] = {"error": proc.stderr.strip().splitlines()[-1:], "returncode": proc.returncode}
        else:
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[mode]["wall_seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{mode}: {json.dumps({k: v for k, v in results[mode].items() if k != 'tuning'})}", flush=True)
    report = {
        "params": {k: v for k, v in vars(a).items() if k not in ("child", "out")},
        "machine": {
            "cpus": os.cpu_count(),
            "threads": a.threads,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
