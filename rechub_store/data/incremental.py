"""Incremental feature builds: when one is valid, and which raw batches a build reads.

A build reads the raw batches up to a watermark (`upto_batch_seq`: every batch, or for a backfill
the last one ingested by the end of its run date) and records the watermark with the SQL
fingerprint in `meta.builds.report.inputs`. The next build may then be incremental (see
`sqlmodels.run`): it reads the batches after the previous watermark and recomputes only the rows
they change, with a result identical to a full build of the same batches. That holds when

- the previous successful build built every model (no `--select`) with the same build parameters
  and the same SQL (built-in models and the user's folder);
- it read no batch this build would not (its watermark <= this one's; a backfill to an earlier
  date is a full build);
- k-core is off: its filter is global, a new event can bring back events of any user;
- no user model replaces a built-in one (its file may not keep the incremental contract).

Otherwise the build is full; `plan` says why. Tables whose rows depend on every event (item
popularity, dense scaling, the samples' point-in-time counts and scaled values, the splits, the
report) are rebuilt whole in either mode; they are cheap next to the per-user ones.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from rechub_store.data.sqlmodels import discover, fingerprint
from rechub_store.errors import UserError
from rechub_store.paths import SQL_DIR
from rechub_store.warehouse import table_exists

# raw tables a build reads, each with its batch_seq column
RAW_TABLES = ("raw.interactions", "raw.user_attributes", "raw.item_attributes", "raw.item_tags")


# A whole build over every raw batch: the variables an engine without incremental builds sets
# (the Spark build) so the models' incremental and backfill filters keep every row.
FULL_BUILD_VARIABLES: dict[str, Any] = {"incremental": False, "upto_batch_seq": None, "built_batch_seq": 0}


@dataclass(frozen=True)
class Plan:
    """How a build runs: incremental or full (and why), over the batches up to `upto_batch_seq`."""

    incremental: bool
    reason: str
    upto_batch_seq: int | None  # the last raw batch this build reads (None: no raw rows at all)
    built_batch_seq: int | None  # incremental: the previous build's watermark
    sql_fingerprint: str

    def variables(self) -> dict[str, Any]:
        """The DuckDB variables the models read besides the build parameters."""
        return {"upto_batch_seq": self.upto_batch_seq, "built_batch_seq": self.built_batch_seq or 0}

    def inputs(self) -> dict[str, Any]:
        """What `meta.builds.report.inputs` records for the next build's plan."""
        return {"batch_seq": self.upto_batch_seq, "sql_fingerprint": self.sql_fingerprint}


def batches_up_to(con: duckdb.DuckDBPyConnection, run_date: dt.date) -> int:
    """The last batch ingested by the end of `run_date` (UTC): what that date's nightly run read."""
    end = dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time())
    row = None
    if table_exists(con, "raw.batches"):
        row = con.execute("SELECT max(batch_seq) FROM raw.batches WHERE ingested_at < ?", [end]).fetchone()
    if row is None or row[0] is None:
        raise UserError(
            f"no raw batch was ingested by the end of {run_date.isoformat()} (UTC): nothing to rebuild"
        )
    return int(row[0])


def raw_watermark(con: duckdb.DuckDBPyConnection) -> int | None:
    """The highest batch_seq in the raw tables (None when they are empty)."""
    parts = [f"SELECT max(batch_seq) AS b FROM {t}" for t in RAW_TABLES if table_exists(con, t)]
    if not parts:
        return None
    (value,) = con.execute(f"SELECT max(b) FROM ({' UNION ALL '.join(parts)})").fetchone()  # type: ignore[misc]
    return None if value is None else int(value)


def _previous_build(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(params, report) of the latest successful build, or None."""
    if not table_exists(con, "meta.builds"):
        return None
    row = con.execute(
        "SELECT params, report FROM meta.builds WHERE status = 'success' "
        "ORDER BY finished_at DESC NULLS LAST, build_id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    params, report = (json.loads(v) if isinstance(v, str) and v else (v or {}) for v in row)
    return dict(params), dict(report)


def plan(
    con: duckdb.DuckDBPyConnection,
    params: dict[str, Any],
    *,
    want_incremental: bool,
    upto_batch_seq: int | None = None,
    sql_dir: Path = SQL_DIR,
    user_dir: Path | None = None,
    select: str | None = None,
) -> Plan:
    """Decide how this build runs. `params` are the build parameters (BuildParams.to_dict());
    `upto_batch_seq` the watermark (None: every ingested batch)."""
    upto = raw_watermark(con) if upto_batch_seq is None else upto_batch_seq
    sql = fingerprint(sql_dir, user_dir)

    def full(reason: str) -> Plan:
        return Plan(False, reason, upto, None, sql)

    if not want_incremental:
        return full("full build requested")
    if select is not None:
        return full("--select builds one model and what depends on it")
    if params.get("k_core"):
        return full("k-core is on (its filter is global: new events can change any user's rows)")
    if user_dir is not None:
        overrides = sorted(m.name for m in discover(sql_dir, user_dir).values() if m.user)
        builtin = set(discover(sql_dir))
        replaced = [name for name in overrides if name in builtin]
        if replaced:
            return full(f"user model(s) replace built-in ones: {', '.join(replaced)}")
    previous = _previous_build(con)
    if previous is None:
        return full("no previous build")
    prev_params, prev_report = previous
    if "select" in prev_params:
        return full("the previous build was a --select build")
    prev_inputs = prev_report.get("inputs") or {}
    built = prev_inputs.get("batch_seq")
    if built is None or prev_inputs.get("sql_fingerprint") is None:
        return full("the previous build recorded no watermark")
    known = {k: prev_params.get(k) for k in params}
    if known != params:
        changed = sorted(k for k in params if prev_params.get(k) != params[k])
        return full(f"build parameters changed: {', '.join(changed)}")
    if prev_params.get("models_dir") != (None if user_dir is None else str(user_dir)):
        return full("the models folder changed")
    if prev_inputs["sql_fingerprint"] != sql:
        return full("SQL models changed")
    if upto is None or int(built) > upto:
        return full("the previous build read batches this one does not (a backfill to an earlier date)")
    return Plan(
        True,
        f"new batches {int(built) + 1}..{upto}" if upto > int(built) else "no new batches",
        upto,
        int(built),
        sql,
    )
