"""The evaluation protocol's named choices, in a module without heavy imports (the job-file and
CLI parsers validate against them). What they mean: `ranking.protocol` and `ranking.baselines`."""

from __future__ import annotations

from rechub_store.errors import UserError

SEEN_FILTERS = ("except-target", "all", "none")
DEFAULT_SEEN_FILTER = "except-target"
BASELINE_NAMES = ("popularity", "itemknn", "transition")
SLICES = ("all", "cold", "active", "head", "tail", "repeat", "new")


def check_seen_filter(value: str, key: str = "--seen-filter") -> str:
    if value not in SEEN_FILTERS:
        raise UserError(f"{key}: expected one of {', '.join(SEEN_FILTERS)}, got {value!r}")
    return value
