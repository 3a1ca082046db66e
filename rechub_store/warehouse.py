"""The warehouse: one DuckDB file plus the folders beside it (models, indexes, logs, spill).

Every command opens the warehouse through `Warehouse.connect`, so thread count, memory
limit and the spill directory are set in one place, and the `raw`, `features` and `meta`
schemas (with the `meta.*` bookkeeping tables) always exist.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from rechub_store.errors import UserError
from rechub_store.paths import DEFAULT_WAREHOUSE
from rechub_store.schema import META, ddl

SCHEMAS = ("raw", "staging", "features", "meta")

# Bookkeeping tables (`rechub_store.schema`). Columns there are part of the interface (scripts read them).
META_DDL = ddl(META)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def quote_ident(name: str) -> str:
    """Validate an identifier coming from configuration and quote it; never paste raw names into SQL."""
    if not _IDENTIFIER.match(name):
        raise UserError(f"invalid identifier {name!r}: use letters, digits and _ (not starting with a digit)")
    return f'"{name}"'


def sql_literal(text: str) -> str:
    """A SQL string literal, for the few places a value cannot be a bound parameter (ATTACH, COPY)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Warehouse:
    """A warehouse location. Cheap to create; `connect()` opens the DuckDB file."""

    path: Path
    threads: int | None = None  # DuckDB, torch and annoy threads; None = every core (resolved here)
    memory_limit: str | None = None  # e.g. "8GB"; DuckDB's default (80% of RAM) when None
    # The user's own SQL models (`--models-dir` / RECHUB_MODELS_DIR), built beside the built-in
    # ones; not to be confused with `models_dir`, where trained model artifacts live.
    user_sql_dir: Path | None = None
    # server publish retry policy (`Settings`; None = the publish defaults)
    publish_retries: int | None = None
    publish_backoff_s: float | None = None

    def __post_init__(self) -> None:
        """Bad settings are one-line errors here, not DuckDB tracebacks at the first connect."""
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise UserError(f"--threads: expected an integer >= 1, got {self.threads}")
        if self.threads is None:
            object.__setattr__(self, "threads", max(1, os.cpu_count() or 1))
        if self.memory_limit is not None:
            try:
                duckdb.connect().execute("SET memory_limit = ?", [str(self.memory_limit)]).close()
            except duckdb.Error as exc:
                first = str(exc).strip().splitlines()[0]
                raise UserError(
                    f"--memory-limit: expected a size such as 8GB or 500MiB, "
                    f"got {self.memory_limit!r} ({first})"
                ) from None

    @classmethod
    def at(cls, path: Path | str | None = None, **kwargs: object) -> Warehouse:
        """A warehouse at `path` (default `warehouse/rechub.duckdb`); the environment is read by
        `Settings.from_env`, not here."""
        return cls(Path(path) if path is not None else DEFAULT_WAREHOUSE, **kwargs)  # type: ignore[arg-type]

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def analytics_path(self) -> Path:
        """The published, read-only analyst database (replaced atomically by each publish)."""
        return self.root / "analytics.duckdb"

    def exists(self) -> bool:
        return self.path.exists()

    def connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """Open the DuckDB file with our settings; create schemas and meta tables when writable."""
        if read_only and not self.path.exists():
            raise UserError(
                f"no warehouse at {self.path}: run `rechub-store ingest` or `rechub-store demo` first"
            )
        try:
            if not read_only:
                self.root.mkdir(parents=True, exist_ok=True)
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(str(self.path), read_only=read_only)
        except PermissionError as exc:
            raise UserError(f"cannot write the warehouse folder {self.root}: {exc.strerror}") from exc
        except OSError as exc:
            raise UserError(f"cannot open warehouse {self.path}: {exc}") from exc
        except duckdb.IOException as exc:
            msg = str(exc).splitlines()[0]
            if "lock" in msg.lower():
                raise UserError(f"warehouse {self.path} is in use by another process: {msg}") from exc
            raise UserError(f"cannot open warehouse {self.path}: {msg}") from exc
        con.execute(f"SET threads = {int(self.threads)}")  # type: ignore[arg-type]
        con.execute("SET enable_progress_bar = false")  # our CLI draws its own progress
        if self.memory_limit:
            con.execute("SET memory_limit = ?", [self.memory_limit])
        if not read_only:
            con.execute("SET temp_directory = ?", [str(self.tmp_dir)])
            for schema in SCHEMAS:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            con.execute(META_DDL)
        return con

    @contextlib.contextmanager
    def session(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self.connect(read_only=read_only)
        try:
            yield con
        finally:
            con.close()


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK and re-raise: what a writer's readers see is all or nothing."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed statement may have aborted it already
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def table_exists(con: duckdb.DuckDBPyConnection, qualified: str) -> bool:
    schema, _, table = qualified.rpartition(".")
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema or "main", table],
    ).fetchone()
    return bool(row and row[0])


def column_names(con: duckdb.DuckDBPyConnection, qualified: str) -> set[str]:
    """The columns of a table of the current database (empty if it does not exist)."""
    schema, _, table = qualified.rpartition(".")
    rows = con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = ? AND table_name = ?",
        [schema or "main", table],
    ).fetchall()
    return {r[0] for r in rows}


def require_table(con: duckdb.DuckDBPyConnection, qualified: str, hint: str) -> None:
    """Fail with a one-line hint (e.g. 'run `rechub-store build-features` first') if a table is missing."""
    if not table_exists(con, qualified):
        raise UserError(f"table {qualified} does not exist: {hint}")
