"""An annoy index over a model run's item vectors, auto-tuned to a recall target.

annoy's defaults (10 trees, search_k = n_trees * n) lose recall fast as the catalogue grows,
so every build measures recall@k against the exact top-k on a sample of users and raises
`search_k` (then the number of trees) until the target is met. The chosen settings and the
recall achieved are saved beside the index (`items.ann.json`) and reported by the job.

Item codes start at 1 (0 is padding), annoy ids start at 0: annoy id = code - 1.
Queries release the GIL inside annoy, so a thread pool uses every core. The metric comes
from the model's score kind (`embeddings.annoy_metric`: dot -> 'dot', cosine -> 'angular').
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from annoy import AnnoyIndex

from rechub_store.data.ingest import file_sha256
from rechub_store.ranking.exact import MISS, NO_ITEM, Seen, exact_ranks, exact_topk, ranks_in_lists
from rechub_store.settings import cpu_threads

log = logging.getLogger(__name__)

DEFAULT_TREES = 10  # annoy trees to start tuning from
DEFAULT_MAX_TREES = 160  # tuning doubles trees up to this


def overlap_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |found[:, :k] ∩ truth[:, :k]| / |truth[:, :k]| over rows (padding code 0 ignored)."""
    found, truth = found[:, :k], truth[:, :k]
    if len(truth) == 0:
        return 1.0
    n_users = len(truth)
    offset = np.arange(n_users, dtype=np.int64)[:, None] * (
        int(max(found.max(initial=0), truth.max(initial=0))) + 1
    )
    t_keys = (truth + offset)[truth > 0]
    f_keys = (found + offset)[found > 0]
    hits = np.isin(t_keys, f_keys)
    per_row_truth = (truth > 0).sum(axis=1)
    per_row_hits = np.bincount(np.repeat(np.arange(n_users), per_row_truth), weights=hits, minlength=n_users)
    valid = per_row_truth > 0
    return float(np.mean(per_row_hits[valid] / per_row_truth[valid])) if valid.any() else 1.0


@dataclass
class Tuning:
    """How the index was tuned; written to items.ann.json and meta.job_runs details."""

    metric: str
    n_items: int
    dim: int
    n_trees: int
    search_k: int
    k: int
    target_recall: float
    recall: float  # achieved recall@k vs exact on the sample
    met_target: bool
    sample_users: int
    build_seconds: float = 0.0
    tune_seconds: float = 0.0
    trials: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""
    sha256: str = ""  # of items.ann as saved: a reused index is verified against it before loading


class AnnoyItems:
    """An annoy index over item codes 1..n_items with a tuned search_k."""

    def __init__(
        self, index: AnnoyIndex, item_vecs: np.ndarray, metric: str, search_k: int, tuned_k: int
    ) -> None:
        self.index = index
        self.item_vecs = item_vecs  # prepared [n_items + 1, d], row 0 = padding; used to rescore exactly
        self.metric = metric
        self.search_k = search_k  # tuned for lists of `tuned_k`; -1 = annoy's default (n_trees * n)
        self.tuned_k = tuned_k
        self.file_sha256 = ""  # of the saved index file (set by load_or_build): which index answered

    def identity(self, k: int) -> dict[str, Any]:
        """What an answer to `topk(..., k)` depends on besides the query: for reusing answers."""
        return {"file_sha256": self.file_sha256, "search_k": self.search_k, "tuned_k": self.tuned_k, "k": k}

    def search_k_for(self, n: np.ndarray) -> np.ndarray:
        """search_k for lists of n items: the tuned value scaled by n / tuned_k, like annoy's own default."""
        n = np.asarray(n, dtype=np.int64)
        if self.search_k <= 0:
            return np.full(n.shape, -1, dtype=np.int64)
        return np.maximum(1, self.search_k * n // max(self.tuned_k, 1))

    @property
    def n_items(self) -> int:
        return self.item_vecs.shape[0] - 1

    @classmethod
    def build(
        cls, item_vecs: np.ndarray, metric: str, n_trees: int, seed: int = 0, n_threads: int | None = None
    ) -> AnnoyItems:
        """Build over rows 1.. of `item_vecs` (prepared vectors; row 0 is padding and left out)."""
        dim = item_vecs.shape[1]
        index = AnnoyIndex(dim, metric)
        index.set_seed(seed)
        for code in range(1, item_vecs.shape[0]):  # annoy has no bulk add; the build dominates anyway
            index.add_item(code - 1, item_vecs[code])
        index.build(n_trees, n_jobs=n_threads or cpu_threads())
        return cls(index, item_vecs, metric, search_k=-1, tuned_k=1)

    @classmethod
    def load(cls, path: Path, item_vecs: np.ndarray, metric: str, search_k: int, tuned_k: int) -> AnnoyItems:
        index = AnnoyIndex(item_vecs.shape[1], metric)
        index.load(str(path))  # memory-mapped: cheap, shared between processes
        if index.get_n_items() != item_vecs.shape[0] - 1:
            raise ValueError(f"{path} has {index.get_n_items()} items, expected {item_vecs.shape[0] - 1}")
        return cls(index, item_vecs, metric, search_k, tuned_k)

    def save(self, path: Path) -> None:
        """Write atomically (tmp + rename) so a killed run never leaves a truncated index."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        self.index.save(str(tmp), prefault=False)
        os.replace(tmp, path)
        # save() maps the file; unload/reload so this object reads the final path.
        self.index.unload()
        self.index.load(str(path))

    # -- queries -----------------------------------------------------------------------------

    def _candidates(
        self, user_vecs: np.ndarray, want: np.ndarray, search_k: np.ndarray | int, n_threads: int
    ) -> np.ndarray:
        """Raw annoy neighbours (as codes, 0-padded) of every user: [U, max(want)]."""
        n_users = len(user_vecs)
        width = int(want.max(initial=0))
        out = np.zeros((n_users, width), dtype=np.int64)
        sk = np.broadcast_to(np.asarray(search_k, dtype=np.int64), (n_users,))
        get = self.index.get_nns_by_vector

        def work(lo: int, hi: int) -> None:
            for u in range(lo, hi):
                ids = get(user_vecs[u].tolist(), int(want[u]), int(sk[u]))
                out[u, : len(ids)] = ids
                out[u, : len(ids)] += 1  # annoy id -> code

        if n_threads <= 1 or n_users < 64:
            work(0, n_users)
        else:
            bounds = np.linspace(0, n_users, n_threads + 1).astype(int)
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(lambda b: work(bounds[b], bounds[b + 1]), range(n_threads)))
        return out

    def topk(
        self,
        user_vecs: np.ndarray,
        k: int,
        seen: Seen | None = None,
        n_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k codes and exact scores per user, seen items removed; same shape/padding as exact_topk.

        Over-fetches k + |seen| neighbours so that k remain after filtering; rows still short are
        asked again with twice as many (and search_k scaled to match), until k remain or the
        whole catalogue has been offered (annoy's default search_k then visits every item).
        """
        user_vecs = np.ascontiguousarray(user_vecs, dtype=np.float32)
        n_users = len(user_vecs)
        n_threads = n_threads or cpu_threads()
        codes = np.full((n_users, k), NO_ITEM, dtype=np.int64)
        scores = np.full((n_users, k), -np.inf, dtype=np.float32)
        if n_users == 0 or self.n_items == 0:
            return codes, scores
        n_seen = seen.counts() if seen is not None else np.zeros(n_users, dtype=np.int64)
        want = np.minimum(k + n_seen, self.n_items)
        # The tuned search_k already finds the k nearest; the seen items among the over-fetched
        # ones are near too, so the first pass needs no extra search (widening passes scale it).
        sk = np.where(want < self.n_items, self.search_k_for(np.full(n_users, k)), -1)
        rows = np.arange(n_users)
        n_kept = np.zeros(n_users, dtype=np.int64)
        while len(rows):
            for group in _width_groups(rows, want):
                cand = self._candidates(user_vecs[group], want[group], sk[group], n_threads)
                kept, n_kept[group] = drop_seen(cand, None if seen is None else seen.take(group))
                take = min(k, kept.shape[1])
                codes[group, :take] = kept[:, :take]
            # short rows widen; done once the whole catalogue was asked for with a full search
            exhausted = (want[rows] >= self.n_items) & (sk[rows] < 0)
            rows = rows[(n_kept[rows] < k) & ~exhausted]
            want[rows] = np.minimum(want[rows] * 2, self.n_items)
            sk[rows] = np.where(want[rows] < self.n_items, self.search_k_for(want[rows]), -1)
        return rescore(codes, user_vecs, self.item_vecs)

    def target_ranks(
        self,
        user_vecs: np.ndarray,
        targets: np.ndarray,
        k: int,
        exclude: Seen | None = None,
        n_threads: int | None = None,
        found: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Pessimistic rank of each row's target in annoy's top-k, by the rule of `exact.scorer_ranks`
        applied to the candidates annoy returns (rescored exactly); `MISS` if annoy did not return it.

        A target tied with the last listed score may have tied items outside the list; those rows are
        ranked exactly over the catalogue, so ties never depend on which tied items annoy returned.
        `found`: this `topk(user_vecs, k, exclude)` if the caller already has it (it is not redone).
        """
        user_vecs = np.ascontiguousarray(user_vecs, dtype=np.float32)
        targets = np.asarray(targets, dtype=np.int64)
        codes, scores = found if found is not None else self.topk(user_vecs, k, exclude, n_threads)
        ranks = ranks_in_lists(codes, scores, targets)
        if k == 0 or not len(codes):
            return ranks
        listed = codes == targets[:, None]
        target_score = np.where(listed, scores, -np.inf).max(axis=1)
        boundary = (ranks != MISS) & (codes[:, -1] != NO_ITEM) & (target_score == scores[:, -1])
        if boundary.any():
            rows = np.flatnonzero(boundary)
            part = None if exclude is None else exclude.take(rows)
            exact = exact_ranks(user_vecs[rows], self.item_vecs, targets[rows], part)
            ranks[rows] = np.where(exact <= k, exact, MISS)
        return ranks


CANDIDATE_BLOCK = 1 << 22  # annoy candidates held at once (rows x width, int64: 32 MB)


def _width_groups(rows: np.ndarray, want: np.ndarray) -> Iterator[np.ndarray]:
    """`rows` in groups of similar `want`, each holding about CANDIDATE_BLOCK candidates: a candidate
    array is as wide as its widest row, so one user with a long history must not widen every row
    (a real log's heaviest user can have seen 100k items)."""
    order = rows[np.argsort(want[rows], kind="stable")]
    lo = 0
    while lo < len(order):
        # widest row of a group is its last (ascending want): grow while rows x width fits. A group
        # holds at most CANDIDATE_BLOCK / (its first width) rows, so look no further than that.
        reach = CANDIDATE_BLOCK // max(int(want[order[lo]]), 1) + 1
        widths = np.maximum(want[order[lo : lo + reach]], 1)
        fits = (np.arange(1, len(widths) + 1) * widths) <= CANDIDATE_BLOCK
        n = max(1, int(np.argmin(fits)) if not fits.all() else len(widths))
        yield np.sort(order[lo : lo + n])
        lo += n


DROP_SEEN_BLOCK = 1 << 20  # candidates filtered at a time (bounds drop_seen's temporaries)


def drop_seen(cand: np.ndarray, seen: Seen | None) -> tuple[np.ndarray, np.ndarray]:
    """Remove seen codes and padding from each row, keeping order; rows left-packed, 0-padded.

    Rows go in blocks of about a million candidates, so the temporaries stay small whatever the
    width of `cand`."""
    n_rows, width = cand.shape
    packed = np.full(cand.shape, NO_ITEM, dtype=cand.dtype)
    n_kept = np.zeros(n_rows, dtype=np.int64)
    seen_keys = None
    if seen is not None and len(seen.indices):
        # membership by binary search in the sorted (row, code) keys: np.isin would sort the
        # candidates too
        stride = int(max(cand.max(initial=0), seen.indices.max(initial=0))) + 1
        seen_keys = np.sort(seen.indices + seen.row_ids() * stride)
    step = max(1, DROP_SEEN_BLOCK // max(width, 1))
    for lo in range(0, n_rows, step):
        part = cand[lo : lo + step]
        drop = part == NO_ITEM
        if seen_keys is not None:
            keys = part + np.arange(lo, lo + len(part), dtype=np.int64)[:, None] * stride
            at = np.minimum(np.searchsorted(seen_keys, keys), len(seen_keys) - 1)
            drop |= seen_keys[at] == keys
        # left-pack the kept codes in their order: a kept code goes to column (kept codes before it)
        keep = ~drop
        rows, cols = np.nonzero(keep)
        packed[lo + rows, (np.cumsum(keep, axis=1) - 1)[rows, cols]] = part[rows, cols]
        n_kept[lo : lo + len(part)] = keep.sum(axis=1)
    return packed, n_kept


def rescore(
    codes: np.ndarray, user_vecs: np.ndarray, item_vecs: np.ndarray, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for the chosen codes, rows re-sorted best first and, within equal scores, by code
    (annoy's order is approximate; the exact top-k breaks ties the same way)."""
    scores = np.empty(codes.shape, dtype=np.float32)
    for lo in range(0, len(codes), chunk):
        hi = lo + chunk
        block = np.einsum("ukd,ud->uk", item_vecs[codes[lo:hi]], user_vecs[lo:hi], dtype=np.float32)
        scores[lo:hi] = np.where(codes[lo:hi] == NO_ITEM, -np.inf, block)
    # padding (code 0, score -inf) sorts last whatever its code
    order = np.lexsort((np.where(codes == NO_ITEM, np.iinfo(np.int64).max, codes), -scores), axis=-1)
    return np.take_along_axis(codes, order, axis=1), np.take_along_axis(scores, order, axis=1)


def fingerprint(
    item_vecs: np.ndarray,
    metric: str,
    target: float,
    n_trees: int = DEFAULT_TREES,
    max_trees: int = DEFAULT_MAX_TREES,
    seed: int = 0,
) -> str:
    """Identifies what an index was built and tuned for (vectors, metric, recall target, tree
    settings, seed); a mismatch means rebuild. Another k reuses the index with search_k scaled."""
    digest = hashlib.sha1(np.ascontiguousarray(item_vecs).tobytes()).hexdigest()[:16]
    shape = f"{item_vecs.shape[0] - 1}x{item_vecs.shape[1]}"
    return f"{metric}:{shape}:t{target}:trees{n_trees}-{max_trees}:s{seed}:{digest}"


TUNE_MARGIN = 0.005  # a bisection point must beat the target by this much (it was tuned on a sample)


def build_tuned(
    item_vecs: np.ndarray,
    sample_user_vecs: np.ndarray,
    metric: str,
    k: int,
    *,
    target_recall: float = 0.95,
    n_trees: int = DEFAULT_TREES,
    max_trees: int = DEFAULT_MAX_TREES,
    search_k: int | None = None,
    seed: int = 0,
    n_threads: int | None = None,
) -> tuple[AnnoyItems, Tuning]:
    """Build an index and tune it to the cheapest search_k that meets the recall target.

    Ladder: search_k doubles from annoy's default (n_trees * k) while recall@k vs exact on the
    sample is below target and annoy inspects fewer nodes than n_items * n_trees / 2 (beyond
    that it is no cheaper than a scan); if the ladder tops out, the trees double (up to
    `max_trees`). Once a rung meets the target, two bisection steps between it and the rung
    below look for a cheaper search_k (kept only if it beats the target by TUNE_MARGIN).
    `item_vecs` / `sample_user_vecs` are prepared (`embeddings.normalize_for_index`). A fixed
    `search_k` skips tuning (recall is still measured and recorded).
    """
    n_items, dim = item_vecs.shape[0] - 1, item_vecs.shape[1]
    k_eff = max(1, min(k, n_items))
    t0 = time.perf_counter()
    truth, _ = exact_topk(sample_user_vecs, item_vecs, k_eff)
    trials: list[dict[str, Any]] = []
    best: tuple[float, AnnoyItems, int, int] | None = None  # best recall seen (if the target is never met)
    chosen: tuple[float, AnnoyItems, int, int] | None = None  # cheapest setting meeting the target
    build_seconds = 0.0

    def trial(items: AnnoyItems, trees: int, sk: int) -> float:
        nonlocal best
        tq = time.perf_counter()
        items.search_k, items.tuned_k = sk, k_eff
        found, _ = items.topk(sample_user_vecs, k_eff, n_threads=n_threads)
        recall = overlap_at_k(found, truth, k_eff)
        ms = 1000 * (time.perf_counter() - tq) / max(len(found), 1)
        trials.append(
            {"n_trees": trees, "search_k": sk, "recall": round(recall, 5), "query_ms": round(ms, 4)}
        )
        log.info("annoy tune: trees=%d search_k=%d recall@%d=%.4f", trees, sk, k_eff, recall)
        if best is None or recall > best[0]:
            best = (recall, items, trees, sk)
        return recall

    trees = n_trees
    while chosen is None:
        tb = time.perf_counter()
        items = AnnoyItems.build(item_vecs, metric, trees, seed=seed, n_threads=n_threads)
        build_seconds += time.perf_counter() - tb
        if search_k is not None:
            recall = trial(items, trees, search_k)
            if recall >= target_recall:
                chosen = (recall, items, trees, search_k)
            break
        cap = max(trees * k_eff, n_items * trees // 2)
        ladder = [trees * k_eff * 2**i for i in range(40) if trees * k_eff * 2**i <= cap] or [trees * k_eff]
        below = 0
        for sk in ladder:
            recall = trial(items, trees, sk)
            if recall >= target_recall:
                chosen = (recall, items, trees, sk)
                lo, hi = below, sk
                for _ in range(2 if below else 0):
                    mid = (lo + hi) // 2
                    r = trial(items, trees, mid)
                    if r >= target_recall + TUNE_MARGIN:
                        chosen, hi = (r, items, trees, mid), mid
                    else:
                        lo = mid
                break
            below = sk
        if chosen is not None or trees * 2 > max_trees:
            break
        trees *= 2
    assert best is not None
    recall, items, trees, sk = chosen or best
    items.search_k, items.tuned_k = sk, k_eff
    tuning = Tuning(
        metric=metric,
        n_items=n_items,
        dim=dim,
        n_trees=trees,
        search_k=sk,
        k=k_eff,
        target_recall=target_recall,
        recall=recall,
        met_target=recall >= target_recall,
        sample_users=len(sample_user_vecs),
        build_seconds=round(build_seconds, 3),
        tune_seconds=round(time.perf_counter() - t0, 3),
        trials=trials,
        fingerprint=fingerprint(item_vecs, metric, target_recall, n_trees, max_trees, seed),
    )
    if not tuning.met_target:
        log.warning(
            "annoy recall@%d %.4f below target %.2f at max_trees=%d", k_eff, recall, target_recall, trees
        )
    return items, tuning


def sample_rows(n_rows: int, n_sample: int, seed: int) -> np.ndarray:
    """A seeded sample of row indices (all rows when there are fewer)."""
    if n_rows <= n_sample:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n_sample, replace=False))


def _verified(path: Path, meta_path: Path, wanted: str) -> Tuning | None:
    """The saved tuning if the index at `path` is the one it describes, else None (log why).

    The checksum is checked before annoy touches the file: annoy trusts its input, and a damaged
    body can make it return too few neighbours, or abort the process."""
    if not (path.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != wanted:
            return None  # other vectors or settings: rebuilt without a warning
        tuning = Tuning(**meta)
        if not tuning.sha256:
            log.warning("annoy index %s has no checksum (saved by an older version): rebuilding", path)
            return None
        actual = file_sha256(path)
        if actual != tuning.sha256:
            log.warning(
                "annoy index %s is damaged (sha256 %s, saved as %s): rebuilding", path, actual[:12],
                tuning.sha256[:12],
            )  # fmt: skip
            return None
        return tuning
    except (ValueError, TypeError, OSError) as exc:  # unreadable sidecar or index: rebuild
        log.warning("ignoring annoy index %s: %s", path, exc)
        return None


def load_or_build(
    path: Path,
    item_vecs: np.ndarray,
    sample_user_vecs: np.ndarray,
    metric: str,
    k: int,
    **tune_kwargs: Any,
) -> tuple[AnnoyItems, Tuning, bool]:
    """The model run's index at `path` if it was tuned for the same vectors, k and target and its
    checksum matches; otherwise build, tune and save it (with its checksum). Returns
    (index, tuning, built)."""
    meta_path = path.with_name(path.name + ".json")
    target = float(tune_kwargs.get("target_recall", 0.95))
    wanted = fingerprint(
        item_vecs,
        metric,
        target,
        int(tune_kwargs.get("n_trees", DEFAULT_TREES)),
        int(tune_kwargs.get("max_trees", DEFAULT_MAX_TREES)),
        int(tune_kwargs.get("seed", 0)),
    )
    tuning = _verified(path, meta_path, wanted) if tune_kwargs.get("search_k") is None else None
    if tuning is not None:
        try:
            items = AnnoyItems.load(path, item_vecs, metric, tuning.search_k, tuning.k)
            items.file_sha256 = tuning.sha256
            return items, tuning, False
        except (ValueError, OSError) as exc:
            log.warning("ignoring annoy index %s: %s", path, exc)
    items, tuning = build_tuned(item_vecs, sample_user_vecs, metric, k, **tune_kwargs)
    items.save(path)
    tuning.sha256 = items.file_sha256 = file_sha256(path)
    tmp = meta_path.with_name(meta_path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(asdict(tuning), indent=2))
    os.replace(tmp, meta_path)
    return items, tuning, True


def measure_recall(
    items: AnnoyItems, user_vecs: np.ndarray, k: int, seen: Seen | None = None, n_threads: int | None = None
) -> float:
    """Recall@k of the index against the exact top-k for these users (seen items removed from both):
    measured every run on a sample, so a degraded index cannot hide behind its tuning-time number."""
    if len(user_vecs) == 0:
        return 1.0
    truth, _ = exact_topk(user_vecs, items.item_vecs, k, seen)
    found, _ = items.topk(user_vecs, k, seen, n_threads=n_threads)
    return overlap_at_k(found, truth, k)
