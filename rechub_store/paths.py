"""Where things live: the repository's `sql/` and `jobs/`, and the default warehouse."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = Path(os.environ.get("RECHUB_SQL_DIR", REPO_ROOT / "sql"))
JOBS_DIR = REPO_ROOT / "jobs"
DEFAULT_WAREHOUSE = Path("warehouse") / "rechub.duckdb"


def default_warehouse() -> Path:
    """`RECHUB_WAREHOUSE` or `warehouse/rechub.duckdb` relative to the working directory."""
    return Path(os.environ.get("RECHUB_WAREHOUSE", DEFAULT_WAREHOUSE))


def thread_count() -> int:
    """Threads for DuckDB and torch: `RECHUB_THREADS`, else every core (2 on the CI machine)."""
    value = os.environ.get("RECHUB_THREADS")
    return max(1, int(value)) if value else max(1, os.cpu_count() or 1)
