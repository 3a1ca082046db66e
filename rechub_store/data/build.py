"""`build-features` as a Python call: typed build parameters, the SQL models, the build report.

`build_features(con, BuildParams(...))` runs every model under `sql/` (see sqlmodels.py) and
those of the user's own models folder when one is given (`user_dir`), swaps the new tables in
atomically, exposes one `features.vocab_<name>` view per sparse attribute and returns a
`BuildReport` (also stored in `meta.builds.report`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import duckdb

from rechub_store.config import NEG_MODES, NEG_SAMPLERS
from rechub_store.data.ingest import ensure_raw_tables
from rechub_store.data.sqlmodels import ModelRun, Progress, run
from rechub_store.errors import UserError
from rechub_store.paths import SQL_DIR
from rechub_store.warehouse import quote_ident, table_exists

# Tables of the feature store that a `vocab_<name>` view must never shadow.
_RESERVED_VOCABS = {"vocab_user_id", "vocab_item_id", "vocab_tag", "vocab_attribute"}


@dataclass(frozen=True)
class BuildParams:
    """Build parameters; each one reaches the SQL as `getvariable('<name>')`."""

    max_seq_len: int = 50  # history window kept when samples are read (most recent items)
    min_seq_len: int = 3  # users with fewer events are left out of the splits (>= 3 with validation, else 2)
    min_rating: float | None = None  # implicit-feedback threshold: keep events with rating >= this
    k_core: int = 0  # keep only users and items with >= k_core events (iterated); 0 = off
    validation: bool = True  # hold out the second-to-last event per user as validation target
    neg_mode: str = "listwise"  # pointwise | pairwise (forces 1 negative) | listwise
    neg_ratio: int = 4  # negatives per training sample
    neg_sampler: str = "popularity"  # uniform | popularity (n_train ^ neg_alpha)
    neg_alpha: float = 0.75
    seed: int = 42

    def __post_init__(self) -> None:
        _int_field("max_seq_len", self.max_seq_len, 1, 100_000)
        least = 3 if self.validation else 2
        if not isinstance(self.validation, bool):
            raise UserError(f"build parameter validation: expected true or false, got {self.validation!r}")
        _int_field(
            "min_seq_len",
            self.min_seq_len,
            least,
            1_000_000,
            why=" (a test target, a validation target and one event of history)"
            if self.validation
            else " (a test target and one event of history)",
        )
        if self.min_rating is not None:
            _float_field("min_rating", self.min_rating)
        _int_field("k_core", self.k_core, 0, 1_000_000)
        if self.neg_mode not in NEG_MODES:
            raise UserError(
                f"build parameter neg_mode: expected one of {', '.join(NEG_MODES)}, got {self.neg_mode!r}"
            )
        _int_field("neg_ratio", self.neg_ratio, 1, 1000)
        if self.neg_sampler not in NEG_SAMPLERS:
            raise UserError(
                f"build parameter neg_sampler: expected one of {', '.join(NEG_SAMPLERS)}, "
                f"got {self.neg_sampler!r}"
            )
        _float_field("neg_alpha", self.neg_alpha, lo=0.0)
        _int_field("seed", self.seed, 0, 2**63 - 1)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> BuildParams:
        """From a job file's `[build]` table or stored params; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"unknown build parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(values))

    @property
    def effective_neg_ratio(self) -> int:
        return 1 if self.neg_mode == "pairwise" else self.neg_ratio

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def variables(self) -> dict[str, Any]:
        """The DuckDB variables the SQL models read (`float` for min_rating/neg_alpha, NULL = off)."""
        values = self.to_dict()
        values["min_rating"] = None if self.min_rating is None else float(self.min_rating)
        values["neg_alpha"] = float(self.neg_alpha)
        return values


def _int_field(name: str, value: Any, lo: int, hi: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"build parameter {name}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise UserError(f"build parameter {name}: expected {lo}..{hi}{why}, got {value}")


def _float_field(name: str, value: Any, lo: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"build parameter {name}: expected a finite number, got {value!r}")
    if lo is not None and value < lo:
        raise UserError(f"build parameter {name}: expected >= {lo}, got {value}")


@dataclass
class BuildReport:
    """What a build did: per-model rows and seconds, users dropped, samples per split."""

    build_id: str
    params: dict[str, Any]
    models: list[ModelRun]
    seconds: float
    split: dict[str, int] = field(default_factory=dict)  # features.split_report as a dict
    vocab_views: list[str] = field(default_factory=list)
    skipped_views: list[str] = field(default_factory=list)  # attribute names that are not identifiers
    select: str | None = None

    @property
    def users_dropped_short(self) -> int:
        return self.split.get("users_dropped_short", 0)

    @property
    def samples(self) -> dict[str, int]:
        return {s: self.split.get(f"samples_{s}", 0) for s in ("train", "valid", "test")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "build_id": self.build_id,
            "params": self.params,
            "select": self.select,
            "seconds": self.seconds,
            "users_dropped_short": self.users_dropped_short,
            "samples": self.samples,
            "split_report": self.split,
            "models": [asdict(m) for m in self.models],
            "vocab_views": self.vocab_views,
            "skipped_views": self.skipped_views,
        }


def _vocab_views(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[str]]:
    """(Re)create `features.vocab_<name>` for each sparse attribute; drop views of vanished ones.

    A name used by both users and items gets `vocab_user_<name>` / `vocab_item_<name>` instead.
    Names that are not plain identifiers are skipped (and reported), never pasted into SQL.
    """
    pairs = con.execute("SELECT DISTINCT entity, name FROM features.vocab_attribute ORDER BY 1, 2").fetchall()
    entities_of: dict[str, list[str]] = {}
    for entity, name in pairs:
        entities_of.setdefault(name, []).append(entity)
    wanted: dict[str, tuple[str, str]] = {}
    skipped: list[str] = []
    for name, entities in sorted(entities_of.items()):
        for entity in entities:
            view = f"vocab_{name}" if len(entities) == 1 else f"vocab_{entity}_{name}"
            try:
                quote_ident(view)
            except UserError:
                skipped.append(f"{entity}.{name}")
                continue
            if view in _RESERVED_VOCABS:
                view = f"vocab_{entity}_{name}"
            wanted[view] = (entity, name)
    existing = {
        r[0]
        for r in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE database_name = current_database() "
            "AND schema_name = 'features' AND starts_with(view_name, 'vocab_')"
        ).fetchall()
    }
    for view in sorted(existing - set(wanted)):
        con.execute(f"DROP VIEW IF EXISTS features.{quote_ident(view)}")
    for view, (entity, name) in sorted(wanted.items()):
        # name and entity are validated identifiers, so doubling quotes is belt and braces
        con.execute(
            f"CREATE OR REPLACE VIEW features.{quote_ident(view)} AS SELECT value, code "
            f"FROM features.vocab_attribute WHERE entity = '{entity}' "
            f"AND name = '{name.replace(chr(39), chr(39) * 2)}'"
        )
    return sorted(wanted), skipped


def _split_report(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    if not table_exists(con, "features.split_report"):
        return {}
    return {
        name: int(value)
        for name, value in con.execute("SELECT name, value FROM features.split_report").fetchall()
    }


def build_features(
    con: duckdb.DuckDBPyConnection,
    params: BuildParams | None = None,
    *,
    select: str | None = None,
    progress: Progress | None = None,
    sql_dir: Path = SQL_DIR,
    partitions: Mapping[str, int] | None = None,
    user_dir: Path | None = None,
) -> BuildReport:
    """Run the SQL models (all, or `select` and what depends on it) and swap the results in atomically.

    Big models (negatives_train) run in as many passes as their `-- partition:` header derives
    from the input size; `partitions` (model -> passes) overrides that, e.g. to test that a
    partitioned build equals a one-pass build. It never changes the result, so it is not a
    build parameter. `user_dir`: the user's own SQL models (`--models-dir`), built with the
    built-in ones; a file at a built-in model's path replaces it.

    Raises UserError (previous tables untouched) if a model or an audit fails, or if there is
    nothing to build.
    """
    params = params or BuildParams()
    ensure_raw_tables(con)
    (n_events,) = con.execute("SELECT count(*) FROM raw.interactions").fetchone()  # type: ignore[misc]
    if not n_events:
        raise UserError(
            "raw.interactions is empty: run `rechub-store ingest ...` (or `rechub-store demo`) first"
        )
    views: tuple[list[str], list[str]] = ([], [])

    def after_swap(c: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        nonlocal views
        views = _vocab_views(c) if table_exists(c, "features.vocab_attribute") else ([], [])
        split = _split_report(c)
        return {
            "users_dropped_short": split.get("users_dropped_short", 0),
            "samples": {s: split.get(f"samples_{s}", 0) for s in ("train", "valid", "test")},
            "split_report": split,
            "vocab_views": views[0],
            "skipped_views": views[1],
        }

    result = run(
        con,
        variables=params.variables(),
        select=select,
        sql_dir=sql_dir,
        progress=progress,
        after_swap=after_swap,
        params_record=params.to_dict(),
        partitions=partitions,
        user_dir=user_dir,
    )
    return BuildReport(
        build_id=result.build_id,
        params=params.to_dict(),
        models=result.models,
        seconds=result.seconds,
        split=result.summary.get("split_report", {}),
        vocab_views=views[0],
        skipped_views=views[1],
        select=select,
    )
