"""Runtime settings: one object, made once (by the CLI callback or a Python caller) and passed down.

`Settings.from_env` is the one place the environment is read (`RECHUB_WAREHOUSE`, `RECHUB_THREADS`,
`RECHUB_MODELS_DIR`); explicit values (command-line options, keyword arguments) take precedence.
`Settings.warehouse()` opens nothing: it returns the `Warehouse` that carries these settings to
every component (DuckDB connections, torch and annoy threads, the user's SQL models).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rechub_store.errors import UserError
from rechub_store.paths import DEFAULT_WAREHOUSE
from rechub_store.warehouse import Warehouse

WAREHOUSE_ENV = "RECHUB_WAREHOUSE"
THREADS_ENV = "RECHUB_THREADS"
MODELS_DIR_ENV = "RECHUB_MODELS_DIR"
RETRIES_ENV = "RECHUB_PUBLISH_RETRIES"
BACKOFF_ENV = "RECHUB_PUBLISH_BACKOFF_S"


def cpu_threads() -> int:
    """Every core: the thread count when none is set."""
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Where the warehouse is and how much of the machine a command may use."""

    warehouse_path: Path = DEFAULT_WAREHOUSE
    threads: int | None = None  # DuckDB, torch and annoy; None = every core
    memory_limit: str | None = None  # DuckDB's memory limit, e.g. "8GB" (it spills beyond it)
    models_dir: Path | None = None  # the user's own SQL models, built beside the built-in ones
    publish_retries: int | None = None  # server publish connection retries (None: 5)
    publish_backoff_s: float | None = None  # first wait between them, doubled each time (None: 1 s)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        warehouse_path: Path | str | None = None,
        threads: int | None = None,
        memory_limit: str | None = None,
        models_dir: Path | str | None = None,
    ) -> Settings:
        """Explicit values first, then the environment, then the defaults."""
        env = os.environ if environ is None else environ
        if threads is None and env.get(THREADS_ENV):
            value = env[THREADS_ENV]
            if not value.strip().isdigit() or int(value) < 1:
                raise UserError(f"{THREADS_ENV}={value!r}: expected an integer >= 1")
            threads = int(value)
        path = warehouse_path or env.get(WAREHOUSE_ENV) or DEFAULT_WAREHOUSE
        models = models_dir or env.get(MODELS_DIR_ENV) or None
        return cls(
            Path(path),
            threads,
            memory_limit,
            Path(models) if models else None,
            _number(env, RETRIES_ENV, int),
            _number(env, BACKOFF_ENV, float),
        )

    def warehouse(self) -> Warehouse:
        """The warehouse these settings describe (bad values are one-line errors here)."""
        return Warehouse(
            self.warehouse_path,
            threads=self.threads,
            memory_limit=self.memory_limit,
            user_sql_dir=self.models_dir,
            publish_retries=self.publish_retries,
            publish_backoff_s=self.publish_backoff_s,
        )


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> Any:
    """A number >= 0 from the environment, None when unset or empty."""
    value = env.get(name)
    if not value:
        return None
    try:
        result = kind(value)
    except ValueError:
        raise UserError(f"{name}={value!r}: expected a number") from None
    if result < 0:
        raise UserError(f"{name}={value!r}: expected a number >= 0")
    return result
