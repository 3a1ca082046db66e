"""`meta.tuning_studies` and `meta.tuning_trials`: what each study searched and what each trial gave.

Columns: `rechub_store.schema` (TUNING_STUDIES, TUNING_TRIALS). A study row is written when the
study starts and completed when it ends (status `running` -> `success` | `failed`); a trial row when
the trial starts, completed when it ends (`running` -> `complete` | `pruned` | `failed` | `stopped`:
cut short by the study's wall-clock budget, its value the best epoch reached, if any).
`best_params` of the newest successful study of a model is what `train.use_tuned = "last"` in a
job file retrains with.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import duckdb

from rechub_store.errors import UserError
from rechub_store.schema import TUNING, ddl
from rechub_store.warehouse import table_exists

TUNING_DDL = ddl(TUNING)


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(TUNING_DDL)


def start_study(
    con: duckdb.DuckDBPyConnection,
    study_id: str,
    model: str,
    *,
    seed: int,
    pruner: str,
    budget_seconds: float | None,
    max_trials: int | None,
    base_params: dict[str, Any],
    build_id: str | None,
) -> None:
    ensure_tables(con)
    con.execute(
        "INSERT INTO meta.tuning_studies (study_id, model, status, seed, sampler, pruner, budget_seconds, "
        "max_trials, base_params, n_trials, build_id, started_at) "
        "VALUES (?, ?, 'running', ?, 'tpe', ?, ?, ?, ?, 0, ?, ?)",
        [study_id, model, seed, pruner, budget_seconds, max_trials, _json(base_params), build_id, now()],
    )


def finish_study(
    con: duckdb.DuckDBPyConnection,
    study_id: str,
    *,
    status: str,
    n_trials: int,
    best_trial: int | None,
    best_value: float | None,
    best_params: dict[str, Any] | None,
    model_run_id: str | None,
    seconds: float,
    error: str | None = None,
) -> None:
    con.execute(
        "UPDATE meta.tuning_studies SET status = ?, n_trials = ?, best_trial = ?, best_value = ?, "
        "best_params = ?, model_run_id = ?, finished_at = ?, seconds = ?, error = ? WHERE study_id = ?",
        [
            status,
            n_trials,
            best_trial,
            best_value,
            None if best_params is None else _json(best_params),
            model_run_id,
            now(),
            round(seconds, 3),
            None if error is None else error[:2000],
            study_id,
        ],
    )


def start_trial(con: duckdb.DuckDBPyConnection, study_id: str, trial: int, params: dict[str, Any]) -> None:
    con.execute(
        "INSERT INTO meta.tuning_trials (study_id, trial, status, params, curve, started_at) "
        "VALUES (?, ?, 'running', ?, '[]', ?)",
        [study_id, trial, _json(params), now()],
    )


def finish_trial(
    con: duckdb.DuckDBPyConnection,
    study_id: str,
    trial: int,
    *,
    status: str,
    curve: list[dict[str, Any]],
    value: float | None,
    best_epoch: int | None,
    seconds: float,
    error: str | None = None,
) -> None:
    con.execute(
        "UPDATE meta.tuning_trials SET status = ?, curve = ?, value = ?, best_epoch = ?, finished_at = ?, "
        "seconds = ?, error = ? WHERE study_id = ? AND trial = ?",
        [
            status,
            _json(curve),
            value,
            best_epoch,
            now(),
            round(seconds, 3),
            None if error is None else error[:2000],
            study_id,
            trial,
        ],
    )


def trials(con: duckdb.DuckDBPyConnection, study_id: str) -> list[dict[str, Any]]:
    """A study's trials in order, JSON decoded."""
    cur = con.execute(
        "SELECT trial, status, params, curve, value, best_epoch, seconds, error FROM meta.tuning_trials "
        "WHERE study_id = ? ORDER BY trial",
        [study_id],
    )
    names = [d[0] for d in cur.description]
    out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    for row in out:
        row["params"], row["curve"] = json.loads(row["params"]), json.loads(row["curve"])
    return out


def last_best(con: duckdb.DuckDBPyConnection, model: str) -> tuple[str, dict[str, Any]]:
    """(study_id, best_params) of the newest successful study of `model`; UserError if there is none."""
    row = None
    if table_exists(con, "meta.tuning_studies"):
        row = con.execute(
            "SELECT study_id, best_params FROM meta.tuning_studies WHERE model = ? AND status = 'success' "
            "AND best_params IS NOT NULL ORDER BY finished_at DESC, study_id DESC LIMIT 1",
            [model],
        ).fetchone()
    if row is None:
        raise UserError(
            f"train.use_tuned: no successful tuning study of {model}: run `rechub-store tune --model {model}`"
        )
    return str(row[0]), json.loads(row[1])


def _json(value: Any) -> str:
    return json.dumps(value, default=str)
