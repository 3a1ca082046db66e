"""`index = "auto"`: exact or annoy, whichever this machine scores this run's users faster with.

Why measured: where annoy starts to pay off depends on the catalogue size, the vector width, k,
the tuned `search_k`, the cores and their load: on 2 cores the crossover moved between runs of the
same bench. A fixed item count is right on one machine only. So every run that asks for `auto`
times both on the same seeded sample of its own users (with their seen items removed, as in
production) and projects the whole run from the per-user rates:
- exact: blocked matmul + running top-k (ranking.topk) on the sample;
- annoy: the run's tuned index (built, or reused when its vectors have not changed) on the sample.
annoy is chosen only when it is faster AND its recall@k against exact, measured this run on the
same sample, meets the index's target; otherwise exact (which is never wrong). The recall is
measured first: an annoy index below its target is not timed at all. The calibration is returned
and stored with the score step's details, so every run says why it used what it used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Calibration:
    """What `auto` measured and chose."""

    index: str  # the index used for the run: exact | annoy
    sample_users: int
    exact_users_per_second: float
    annoy_users_per_second: float | None  # None when annoy was not timed (no users, or recall too low)
    annoy_recall: float | None  # annoy's recall@k against exact on the sample, this run
    target_recall: float
    projected_exact_seconds: float
    projected_annoy_seconds: float | None  # None when annoy was not timed
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(run: Callable[[], Any], n: int) -> float:
    """Users per second of `run` over n users: the best of two timings (the first warms caches)."""
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return n / max(best, 1e-9)


def calibrate(
    n_users: int,
    sample_users: int,
    exact: Callable[[], Any],
    annoy: Callable[[], Any],
    annoy_recall: Callable[[], float],
    target_recall: float,
) -> Calibration:
    """Time `exact` and `annoy` (each scores the same sample of `sample_users` users), project both
    to `n_users`, and pick: annoy when faster and its measured recall meets `target_recall`. An
    annoy index under its recall target is not timed: it would not be chosen at any speed."""
    if sample_users == 0:
        return Calibration("exact", 0, 0.0, None, None, target_recall, 0.0, None, "no users to score")
    recall = annoy_recall()
    exact_rate = _rate(exact, sample_users)
    annoy_rate = _rate(annoy, sample_users) if recall >= target_recall else None
    if annoy_rate is None:
        index, reason = "exact", f"annoy recall {recall:.3f} below its target {target_recall:.3f}"
    elif annoy_rate > exact_rate:
        index, reason = "annoy", f"annoy {annoy_rate / exact_rate:.2f}x the users/s of exact"
    else:
        index, reason = "exact", f"exact {exact_rate / annoy_rate:.2f}x the users/s of annoy"
    return Calibration(
        index,
        sample_users,
        round(exact_rate, 1),
        None if annoy_rate is None else round(annoy_rate, 1),
        round(recall, 5),
        target_recall,
        round(n_users / exact_rate, 3),
        None if annoy_rate is None else round(n_users / annoy_rate, 3),
        reason,
    )
