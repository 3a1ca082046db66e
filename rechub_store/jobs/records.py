"""The record of a job: one `meta.job_runs` row per step plus a `whole` row (status, seconds, rows,
details JSON with URLs masked)."""

from __future__ import annotations

import json
import time
from typing import Any

import duckdb

from rechub_store.errors import UserError
from rechub_store.faults import fault_point
from rechub_store.redact import redact
from rechub_store.results.tables import utcnow


class BookkeepingFailed(UserError):
    """meta.job_runs could not be written (a full disk, an I/O error): the run stops, exit code 1."""

    def __init__(self, exc: BaseException) -> None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        super().__init__(f"cannot record the job run in meta.job_runs: {first}", exit_code=1)


class JobRecorder:
    """Rows of meta.job_runs for one run: inserted as `running`, updated when the step ends.

    Every message stored is masked (`rechub_store.redact`); a failed write is a BookkeepingFailed."""

    def __init__(self, con: duckdb.DuckDBPyConnection, run_id: str, job: str) -> None:
        self.con, self.run_id, self.job = con, run_id, job

    def _execute(self, sql: str, params: list[Any]) -> None:
        try:
            self.con.execute(sql, params)
        except (duckdb.Error, OSError) as exc:
            raise BookkeepingFailed(exc) from exc

    def reset(self) -> None:
        """Rerunning a run_id replaces its rows; rows left `running` by a killed run become failed."""
        self._execute("DELETE FROM meta.job_runs WHERE run_id = ? AND job = ?", [self.run_id, self.job])
        self._execute(
            "UPDATE meta.job_runs SET status = 'failed', "
            "error = 'interrupted: the process died before finishing' WHERE status = 'running'",
            [],
        )

    def start(self, step: str) -> float:
        self._execute(
            "INSERT INTO meta.job_runs (run_id, job, step, status, started_at) "
            "VALUES (?, ?, ?, 'running', ?)",
            [self.run_id, self.job, step, utcnow()],
        )
        return time.perf_counter()

    def finish(
        self,
        step: str,
        t0: float,
        status: str,
        rows: int | None = None,
        details: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> float:
        seconds = round(time.perf_counter() - t0, 3)
        try:
            fault_point("job-record")
        except OSError as exc:
            raise BookkeepingFailed(exc) from exc
        self._execute(
            "UPDATE meta.job_runs SET status = ?, finished_at = ?, seconds = ?, rows = ?, details = ?, "
            "error = ? WHERE run_id = ? AND job = ? AND step = ? AND status = 'running'",
            [
                status,
                utcnow(),
                seconds,
                rows,
                redact(json.dumps(details or {}, default=str)),
                redact(error),
                self.run_id,
                self.job,
                step,
            ],
        )
        return seconds
