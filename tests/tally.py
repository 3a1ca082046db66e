"""The reliability suite's tally: what it tried and what held, printed at the end of the session
(and written to RECHUB_RELIABILITY_REPORT as JSON): hostile SQL queries, malformed or edge-case
inputs, fault points (kills, disk full, servers down, corrupted files), and rows lost (must stay 0).

It lives beside tests/conftest.py, not in tests/reliability/, because under pytest-xdist the
controller process that prints the summary loads only the top-level conftest: each worker sends its
counts there when it finishes (tests/conftest.py), and the controller adds them up."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import ClassVar


class Tally:
    KINDS: ClassVar[dict[str, str]] = {
        "hostile_queries": "hostile queries refused",
        "inputs": "malformed/edge inputs handled",
        "faults": "fault points survived",
    }

    def __init__(self) -> None:
        self.counts = {f"{k}_{s}": 0 for k in self.KINDS for s in ("tried", "passed")}
        self.counts["rows_lost"] = 0

    @contextlib.contextmanager
    def case(self, kind: str) -> Iterator[None]:
        """Count one case of `kind` as tried, and as passed if the block's assertions hold."""
        self.counts[f"{kind}_tried"] += 1
        yield
        self.counts[f"{kind}_passed"] += 1

    def add(self, counts: Mapping[str, int]) -> None:
        """Add another process's counts (a pytest-xdist worker's)."""
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + int(value)

    def summary(self) -> str:
        parts = [
            f"{label} {self.counts[f'{k}_passed']}/{self.counts[f'{k}_tried']}"
            for k, label in self.KINDS.items()
        ]
        return "reliability: " + ", ".join(parts) + f", rows lost {self.counts['rows_lost']}"


TALLY = Tally()
