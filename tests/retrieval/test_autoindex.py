"""`index = auto` chooses by what it measured: annoy only when faster and accurate enough."""

from __future__ import annotations

import time

from rechub_store.retrieval.autoindex import calibrate


def pause(seconds: float):
    return lambda: time.sleep(seconds)


def test_annoy_when_faster_and_its_recall_meets_the_target() -> None:
    c = calibrate(
        1000, 10, exact=pause(0.02), annoy=pause(0.002), annoy_recall=lambda: 0.97, target_recall=0.95
    )
    assert c.index == "annoy" and c.annoy_users_per_second > c.exact_users_per_second
    assert c.projected_annoy_seconds < c.projected_exact_seconds and "annoy" in c.reason


def test_exact_when_annoy_misses_its_recall_target_even_if_faster() -> None:
    timed: list[str] = []
    c = calibrate(
        1000,
        10,
        exact=pause(0.02),
        annoy=lambda: timed.append("annoy"),
        annoy_recall=lambda: 0.80,
        target_recall=0.95,
    )
    assert c.index == "exact" and "below its target" in c.reason
    # an index that cannot be chosen is not timed
    assert timed == [] and c.annoy_users_per_second is None and c.projected_annoy_seconds is None


def test_exact_when_it_is_faster() -> None:
    c = calibrate(
        1000, 10, exact=pause(0.002), annoy=pause(0.02), annoy_recall=lambda: 1.0, target_recall=0.95
    )
    assert c.index == "exact" and c.exact_users_per_second > c.annoy_users_per_second


def test_no_users() -> None:
    c = calibrate(0, 0, exact=pause(1), annoy=pause(1), annoy_recall=lambda: 1.0, target_recall=0.95)
    assert c.index == "exact" and c.annoy_users_per_second is None
