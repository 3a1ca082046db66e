"""Where things live: the built-in SQL models, the user's own models folder, the default warehouse."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
DEFAULT_WAREHOUSE = Path("warehouse") / "rechub.duckdb"
MODELS_DIR_ENV = "RECHUB_MODELS_DIR"


def _builtin_sql_dir() -> Path:
    """The built-in SQL models, found through the package.

    An installed package (wheel, `pip install .`) carries them as `rechub_store/sql/` (setup.py
    ships the repository's `sql/` there). In a source checkout (an editable install, or running
    from the repository) the package folder has no copy, and the checkout's top-level `sql/`,
    the one copy in git, is used.
    """
    shipped = _PACKAGE / "sql"
    checkout = _PACKAGE.parent / "sql"
    if not shipped.is_dir() and checkout.is_dir() and (_PACKAGE.parent / "pyproject.toml").is_file():
        return checkout
    return shipped  # missing only in a broken install; discover() then says which folder is missing


SQL_DIR = _builtin_sql_dir()


def default_warehouse() -> Path:
    """`RECHUB_WAREHOUSE` or `warehouse/rechub.duckdb` relative to the working directory."""
    return Path(os.environ.get("RECHUB_WAREHOUSE", DEFAULT_WAREHOUSE))


def thread_count() -> int:
    """Threads for DuckDB and torch: `RECHUB_THREADS`, else every core (2 on the CI machine)."""
    value = os.environ.get("RECHUB_THREADS")
    if not value:
        return max(1, os.cpu_count() or 1)
    if not value.strip().isdigit() or int(value) < 1:
        from rechub_store.errors import UserError

        raise UserError(f"RECHUB_THREADS={value!r}: expected an integer >= 1")
    return int(value)
