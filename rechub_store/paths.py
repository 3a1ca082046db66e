"""Where things live: the built-in SQL models, the user's own models folder, the default warehouse."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
DEFAULT_WAREHOUSE = Path("warehouse") / "rechub.duckdb"


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
