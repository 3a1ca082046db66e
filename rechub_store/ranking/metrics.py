r"""Top-k ranking metrics, vectorized over users.

For a user u with relevant set R_u (leave-one-out: the one held-out item) and ranked list
L_u (seen items already removed), with rel_i = 1 if L_u[i] is in R_u (i = 1..k):

- Recall@k    = \sum_{i<=k} rel_i / |R_u|
- Hit@k       = 1 if \sum_{i<=k} rel_i > 0 else 0
- Precision@k = \sum_{i<=k} rel_i / k
- NDCG@k      = (\sum_{i<=k} rel_i / log2(i + 1)) / (\sum_{i<=min(|R_u|,k)} 1 / log2(i + 1))
- MRR@k       = 1 / (rank of the first relevant item) if it is within k, else 0

Each is averaged over users with at least one relevant item (macro average). Unlike
Torch-RecHub's `topk_metrics`, Hit is the share of users with a hit (not micro recall),
and seen items are removed from the ranking before it is cut at k.

With one held-out target per user (leave-one-out) every metric is a function of the target's
rank r alone (`rank_metrics`): Recall@k = Hit@k = [r <= k], Precision@k = [r <= k] / k,
NDCG@k = [r <= k] / log2(r + 1), MRR@k = [r <= k] / r. The evaluation protocol computes r
exactly and pessimistically (`exact.scorer_ranks`), so no top-k list is needed to score a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("recall", "hit", "ndcg", "mrr", "precision")


def ranking_metrics(topk: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> dict[str, dict[int, float]]:
    """Mean metric per k. `targets` is [U] (one item each) or [U, T] padded with 0 (no item).

    `topk` is [U, K] item codes best first (0 = no item) with K >= max(ks).
    """
    topk = np.asarray(topk)
    targets = np.asarray(targets)
    if targets.ndim == 1:
        targets = targets[:, None]
    max_k = max(ks)
    if topk.shape[1] < max_k:
        raise ValueError(f"ranking has {topk.shape[1]} items, fewer than k={max_k}")
    n_rel = (targets > 0).sum(axis=1)
    keep = n_rel > 0
    ranked = topk[keep, :max_k]
    targets, n_rel = targets[keep], n_rel[keep]
    result: dict[str, dict[int, float]] = {m: {} for m in METRICS}
    if len(ranked) == 0:
        for metric in METRICS:
            result[metric] = {k: 0.0 for k in ks}
        return result
    rel = ((ranked[:, :, None] == targets[:, None, :]) & (targets[:, None, :] > 0)).any(axis=2)
    discount = 1.0 / np.log2(np.arange(2, max_k + 2))
    first_hit = np.where(rel.any(axis=1), rel.argmax(axis=1) + 1, np.iinfo(np.int64).max)
    cum_hits = np.cumsum(rel, axis=1)
    cum_dcg = np.cumsum(rel * discount, axis=1)
    ideal = np.cumsum(discount)
    for k in ks:
        hits = cum_hits[:, k - 1]
        result["recall"][k] = float(np.mean(hits / n_rel))
        result["hit"][k] = float(np.mean(hits > 0))
        result["precision"][k] = float(np.mean(hits / k))
        result["ndcg"][k] = float(np.mean(cum_dcg[:, k - 1] / ideal[np.minimum(n_rel, k) - 1]))
        result["mrr"][k] = float(np.mean(np.where(first_hit <= k, 1.0 / np.minimum(first_hit, max_k), 0.0)))
    return result


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k from their (single) target's 1-based rank: 1 / log2(rank + 1) within k,
    else 0. Per user, so that two rankers can be compared user by user (paired)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    return np.where(ranks <= k, 1.0 / np.log2(np.maximum(ranks, 1).astype(np.float64) + 1.0), 0.0)


def rank_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, dict[int, float]]:
    """Mean metric per k from each user's (single) target rank, 1-based; ranks beyond every k
    (or `exact.MISS`) score 0. An empty input gives 0.0 everywhere."""
    ranks = np.asarray(ranks, dtype=np.int64)
    result: dict[str, dict[int, float]] = {m: {} for m in METRICS}
    safe = np.maximum(ranks, 1).astype(np.float64)
    for k in ks:
        hit = ranks <= k
        n = max(len(ranks), 1)
        result["recall"][k] = float(hit.sum() / n)
        result["hit"][k] = float(hit.sum() / n)
        result["precision"][k] = float(hit.sum() / n / k)
        result["ndcg"][k] = float(ndcg_gains(ranks, k).sum() / n)
        result["mrr"][k] = float(np.where(hit, 1.0 / safe, 0.0).sum() / n)
    return result
