"""`build-features` as a Python call: typed build parameters, the SQL models, the build report.

`build_features(con, BuildParams(...))` runs every model under `sql/` (see sqlmodels.py) and
those of the user's own models folder when one is given (`user_dir`), swaps the new tables in
atomically, exposes one `features.vocab_<name>` view per sparse attribute and returns a
`BuildReport` (also stored in `meta.builds.report`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import duckdb
from pydantic import Field, model_validator

from rechub_store.config import (
    NEG_MODES,
    NEG_SAMPLERS,
    Bool,
    Float,
    Int,
    Invalid,
    Names,
    flags,
    settings_class,
    typed,
)
from rechub_store.data.incremental import plan
from rechub_store.data.ingest import ensure_raw_tables
from rechub_store.data.sqlmodels import ModelRun, Progress, run, user_models_folder
from rechub_store.errors import UserError
from rechub_store.paths import SQL_DIR
from rechub_store.warehouse import quote_ident, table_exists

# Tables of the feature store that a `vocab_<name>` view must never shadow.
_RESERVED_VOCABS = {"vocab_user_id", "vocab_item_id", "vocab_tag", "vocab_attribute"}


@settings_class
class BuildParams:
    """Build parameters; each one reaches the SQL as `getvariable('<name>')`."""

    max_seq_len: Annotated[Int, Field(ge=1, le=100_000)] = 50  # history window kept when samples are read
    # users with fewer events are left out of the splits (>= 3 with validation, else 2: `_enough_events`)
    min_seq_len: Annotated[Int, Field(le=1_000_000)] = 3
    min_rating: Float | None = None  # implicit-feedback threshold: keep events with rating >= this
    k_core: Annotated[Int, Field(ge=0, le=1_000_000)] = 0  # keep users/items with >= k_core events; 0 = off
    validation: Bool = True  # hold out the second-to-last event per user as validation target
    neg_mode: Literal[NEG_MODES] = "listwise"  # pointwise | pairwise (forces 1 negative) | listwise
    neg_ratio: Annotated[Int, Field(ge=1, le=1000)] = 4  # negatives per training sample
    neg_sampler: Literal[NEG_SAMPLERS] = "popularity"  # uniform | popularity (n_train ^ neg_alpha)
    neg_alpha: Annotated[Float, Field(ge=0.0)] = 0.75
    # the sampler's distribution is refreshed when it drifts further than this (total variation
    # distance) from the current training counts; 0 = always current (features.negative_sampler)
    neg_refresh_drift: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.05
    seed: Annotated[Int, Field(ge=0, le=2**63 - 1)] = 42

    @model_validator(mode="after")
    def _enough_events(self) -> BuildParams:
        least, why = (3, "a test target, a validation target") if self.validation else (2, "a test target")
        if self.min_seq_len < least:
            raise Invalid(
                "min_seq_len",
                f"expected an integer >= {least} ({why} and one event of history), got {self.min_seq_len}",
            )
        return self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], names: Names = flags) -> BuildParams:
        """From a job file's `[build]` table or stored params; UserError naming the key via `names`."""
        return typed(cls, dict(values), names)

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
        values["neg_refresh_drift"] = float(self.neg_refresh_drift)
        return values


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
    audits: dict[str, float] = field(default_factory=dict)  # audit name -> seconds
    mode: str = "full"  # full | incremental
    mode_reason: str = ""  # why (e.g. "new batches 4..5", "SQL models changed")
    upto_batch_seq: int | None = None  # the last raw batch the build read

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
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "upto_batch_seq": self.upto_batch_seq,
            "seconds": self.seconds,
            "users_dropped_short": self.users_dropped_short,
            "samples": self.samples,
            "split_report": self.split,
            "models": [asdict(m) for m in self.models],
            "vocab_views": self.vocab_views,
            "skipped_views": self.skipped_views,
            "audits": self.audits,
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
    incremental: bool = False,
    upto_batch_seq: int | None = None,
) -> BuildReport:
    """Run the SQL models (all, or `select` and what depends on it) and swap the results in atomically.

    Big models (negatives_train) run in as many passes as their `-- partition:` header derives
    from the input size; `partitions` (model -> passes) overrides that, e.g. to test that a
    partitioned build equals a one-pass build. It never changes the result, so it is not a
    build parameter. `user_dir`: the user's own SQL models (`--models-dir`), built with the
    built-in ones; a file at a built-in model's path replaces it.

    `incremental`: recompute only what the raw batches since the previous build change, when the
    previous build allows it (same parameters and SQL; see `incremental.plan`), else a full build;
    the report's `mode` and `mode_reason` say which. The result is the same either way.
    `upto_batch_seq`: read only the raw batches up to this one (a backfill of a past date).

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
    if user_dir is not None:
        user_dir = user_models_folder(user_dir)
    how = plan(
        con,
        params.to_dict(),
        want_incremental=incremental,
        upto_batch_seq=upto_batch_seq,
        sql_dir=sql_dir,
        user_dir=user_dir,
        select=select,
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
            "mode": "incremental" if how.incremental else "full",
            "mode_reason": how.reason,
            "inputs": how.inputs(),
        }

    result = run(
        con,
        variables={**params.variables(), **how.variables()},
        select=select,
        sql_dir=sql_dir,
        progress=progress,
        after_swap=after_swap,
        params_record=params.to_dict(),
        partitions=partitions,
        user_dir=user_dir,
        incremental=how.incremental,
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
        audits=result.audits,
        mode="incremental" if how.incremental else "full",
        mode_reason=how.reason,
        upto_batch_seq=how.upto_batch_seq,
    )
