"""The evaluation protocol: one rule wherever metrics are computed (training-time validation,
`evaluate`, the nightly job, every baseline).

- Leave-one-out: each sample holds out one target; the user is encoded from the history before it
  (point-in-time features from the samples table), and the WHOLE catalogue is ranked.
- Seen filter (`options.SEEN_FILTERS`), what is removed from the ranking before the target is ranked:
  `except-target` (default, RecBole's convention): the items of the user's history before the
  target, except the target itself, so a repeated target stays hittable; `all`: every item of that
  history, the target too (a repeated target is a guaranteed miss, as in production lists that
  never repeat an item); `none`: nothing.
- Ties rank pessimistically (`exact.scorer_ranks`): rank = 1 + #{other ranked items scoring >=
  the target}.
- Slices (`options.SLICES`): `cold` users have fewer than COLD_HISTORY events before the target, `active`
  the rest; `head` targets are the HEAD_SHARE most popular items of the catalogue by training count
  (ties by code), `tail` the rest; `repeat` targets occur in the user's history before the target,
  `new` ones do not. `all` is every evaluated user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from rechub_store.config import DEFAULT_SEEN_FILTER, check_seen_filter
from rechub_store.data.readers import FeatureStore, Samples
from rechub_store.ranking.baselines import Baseline
from rechub_store.ranking.embeddings import encode_items, encode_users, normalize_for_index
from rechub_store.ranking.exact import Seen, exact_ranks, scorer_ranks
from rechub_store.ranking.metrics import rank_metrics

COLD_HISTORY = 5  # users with fewer events than this before the target are `cold`
HEAD_SHARE = 0.2  # the most popular fifth of the catalogue (by training count) is the `head`


def exclusions(
    store: FeatureStore, user_codes: np.ndarray, hist_end: np.ndarray, targets: np.ndarray, seen_filter: str
) -> Seen | None:
    """What the seen filter removes from each row's ranking (None: nothing)."""
    check_seen_filter(seen_filter, "seen filter")
    if seen_filter == "none":
        return None
    seen = Seen(*store.seen(user_codes, hist_end))
    return seen.without(targets) if seen_filter == "except-target" else seen


def repeat_targets(store: FeatureStore, samples: Samples) -> np.ndarray:
    """[S] bool: is the sample's target already in the user's history before it?"""
    return Seen(*store.seen(samples.user_code, samples.pos)).contains(samples.target)


def head_items(store: FeatureStore) -> np.ndarray:
    """[n_items] bool: the HEAD_SHARE most popular catalogue items (codes 1..) by training count."""
    n = store.n_items - 1
    head = np.zeros(store.n_items, dtype=bool)
    if n <= 0:
        return head
    codes = np.arange(1, store.n_items)
    order = np.lexsort((codes, -store.item_train_count[1:]))  # count desc, then code asc
    head[codes[order[: int(np.ceil(HEAD_SHARE * n))]]] = True
    return head


def slice_masks(store: FeatureStore, samples: Samples, repeat: np.ndarray) -> dict[str, np.ndarray]:
    cold = samples.pos < COLD_HISTORY
    head = head_items(store)[np.clip(samples.target, 0, store.n_items - 1)] & (samples.target < store.n_items)
    return {
        "all": np.ones(len(samples), dtype=bool),
        "cold": cold,
        "active": ~cold,
        "head": head,
        "tail": ~head,
        "repeat": repeat,
        "new": ~repeat,
    }


@dataclass(frozen=True)
class SliceMetrics:
    """Metrics of one slice of the evaluated users."""

    slice: str
    n_users: int
    n_repeat_targets: int
    metrics: dict[str, dict[int, float]]


def slice_metrics(
    ranks: np.ndarray, masks: dict[str, np.ndarray], repeat: np.ndarray, ks: Sequence[int]
) -> list[SliceMetrics]:
    """`rank_metrics` per slice (empty slices are left out, except `all`)."""
    out = []
    for name, mask in masks.items():
        if name != "all" and not mask.any():
            continue
        out.append(
            SliceMetrics(name, int(mask.sum()), int(repeat[mask].sum()), rank_metrics(ranks[mask], ks))
        )
    return out


def evaluation_vectors(
    model: nn.Module, store: FeatureStore, samples: Samples, item_vecs: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors, item vectors) prepared for ranking: users from the history before each target
    with the samples' point-in-time features, items with training-position popularity."""
    kind = str(model.score_kind)
    if item_vecs is None:
        item_vecs = normalize_for_index(encode_items(model, store, popularity=store.train_popularity), kind)
    users = encode_users(model, store, samples.user_code, samples.pos, event_count=samples.user_count)
    return normalize_for_index(users, kind), item_vecs


def model_ranks(
    model: nn.Module, store: FeatureStore, samples: Samples, seen_filter: str = DEFAULT_SEEN_FILTER
) -> np.ndarray:
    """Each sample's pessimistic target rank over the whole catalogue, by exact scoring."""
    users, items = evaluation_vectors(model, store, samples)
    exclude = exclusions(store, samples.user_code, samples.pos, samples.target, seen_filter)
    return exact_ranks(users, items, samples.target, exclude)


def baseline_ranks(
    baseline: Baseline, store: FeatureStore, samples: Samples, seen_filter: str = DEFAULT_SEEN_FILTER
) -> np.ndarray:
    """Each sample's pessimistic target rank under a baseline, same protocol as the models."""
    exclude = exclusions(store, samples.user_code, samples.pos, samples.target, seen_filter)
    return scorer_ranks(baseline.scorer(samples.user_code, samples.pos), samples.target, exclude)
