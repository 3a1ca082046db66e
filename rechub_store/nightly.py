"""The nightly job: ingest -> build-features -> train (per policy) -> score -> evaluate -> publish.

What cron needs from it:
- never two at once: a lock file (`<warehouse folder>/nightly.lock`, created with O_EXCL semantics,
  holding pid, host, process start time and run id). A lock whose process is gone (killed run)
  is recovered with a log line; a live one makes the second run exit 3 with "already running".
- a record: one `meta.job_runs` row per step (status, seconds, rows, details JSON with URLs
  masked) plus a `whole` row, and a log file per run under `<warehouse folder>/logs/`.
- all or nothing for analysts: results reach `analytics.duckdb` only by an atomic rename at the
  end (see publish/analytics.py), so a run killed at any step leaves the previous run published.
- exit code 0 only on success.

Fault injection (tests, and rehearsing failures by hand): `RECHUB_FAULT=<point>:<action>` where
point is a step name (`ingest`, `build`, `train`, `score`, `evaluate`, `publish`; fires when the
step starts), `publish-replace` (the new analytics file is complete, not yet renamed) or
`job-record` (writing a step's end to meta.job_runs), and action is `sleep[=SECONDS]` (print
"fault: pausing at <point>" to the terminal, then sleep; default 600 s), `fail` (raise an error),
`kill` (SIGKILL itself), `enospc` (fail as a full disk does) or `stderr=TEXT` (write TEXT to file
descriptor 2 directly, as C code does).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

from rechub_store.data.incremental import batches_up_to
from rechub_store.errors import AlreadyRunning, UserError
from rechub_store.jobconfig import (
    EvaluateSettings,
    JobConfig,
    ScoreSettings,
    TrainSettings,
)
from rechub_store.publish.analytics import publish_analytics, utcnow
from rechub_store.ranking.options import BASELINE_NAMES
from rechub_store.redact import RedactingFilter, redact
from rechub_store.warehouse import Warehouse, table_exists

log = logging.getLogger(__name__)

FAULT_ENV = "RECHUB_FAULT"
LOCK_FILE = "nightly.lock"
STEPS = ("ingest", "build", "train", "score", "evaluate", "publish")
FILE_ONLY = {"file_only": True}  # a log record for the run's log file, not the terminal (tracebacks)


# ---------------------------------------------------------------------------- fault injection
def fault_point(point: str) -> None:
    """Act on `RECHUB_FAULT=<point>:<action>` if it names this point (see module docstring)."""
    spec = os.environ.get(FAULT_ENV, "")
    name, _, action = spec.partition(":")
    if not spec or name != point:
        return
    if action.startswith("sleep"):
        seconds = float(action.partition("=")[2] or 600)
        _console(f"fault: pausing at {point} for {seconds:g}s (pid {os.getpid()})")
        time.sleep(seconds)
    elif action == "fail":
        raise RuntimeError(f"fault injected at {point} ({FAULT_ENV}={spec})")
    elif action == "kill":
        _console(f"fault: killing pid {os.getpid()} at {point}")
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (fault injected at {point})")
    elif action.startswith("stderr="):
        os.write(2, action.partition("=")[2].encode() + b"\n")  # as a C library would: fd 2, no sys.stderr
    else:
        raise UserError(
            f"{FAULT_ENV}={spec!r}: action must be sleep[=SECONDS], fail, kill, enospc or stderr=TEXT"
        )


_console_fd: int | None = None  # the terminal's stderr while a quiet run sends fd 2 to its log


def _console(message: str) -> None:
    """Fault messages go to the terminal even when --quiet sends everything else to the log."""
    os.write(_console_fd if _console_fd is not None else 2, (message + "\n").encode())


# ---------------------------------------------------------------------------- the lock
def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a live process from /proc, None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ("?", "")
    rest = text.rsplit(")", 1)[1].split()
    return rest[0], rest[19]


def _pid_alive(pid: int, start: str | None) -> bool:
    """Is `pid` still the process that took the lock? (dead, zombie or a reused pid -> False)"""
    if Path("/proc").is_dir():
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return not (start and stat[1] and stat[1] != start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NightlyLock:
    """An exclusive lock file: created atomically (link of a complete temp file), removed on release."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self.recovered: dict[str, Any] | None = None  # the stale holder we took over from
        self.held = False

    def _info(self) -> dict[str, Any]:
        pid = os.getpid()
        stat = _proc_stat(pid)
        return {
            "pid": pid,
            "host": socket.gethostname(),
            "started_at": utcnow().isoformat(),
            "run_id": self.run_id,
            "proc_start": stat[1] if stat else None,
        }

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _create(self, payload: str) -> bool:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(payload)
        try:
            os.link(tmp, self.path)  # atomic, fails if the lock exists, and the content is complete
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(payload)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Serialize acquire() across processes, so that the read-stale-unlink-create sequence of
        a stale-lock takeover cannot delete a lock another process has just taken."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(f"{self.path.name}.guard"), os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise _unwritable(self.path.parent, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for milliseconds; released when the process dies
            yield
        finally:
            os.close(fd)

    def acquire(self) -> NightlyLock:
        with self._guard():
            return self._acquire()

    def _acquire(self) -> NightlyLock:
        payload = json.dumps(self._info())
        for _ in range(3):
            try:
                created = self._create(payload)
            except OSError as exc:
                raise _unwritable(self.path.parent, exc) from exc
            if created:
                self.held = True
                return self
            holder = self.read()
            if holder is None:  # released between our attempt and the read
                continue
            if self._stale(holder):
                log.warning("recovering stale lock %s left by %s", self.path, json.dumps(holder))
                self.recovered = holder
                self.path.unlink(missing_ok=True)
                continue
            raise AlreadyRunning(
                f"a nightly job is already running (pid {holder.get('pid')} on {holder.get('host')}, "
                f"run {holder.get('run_id')}, since {holder.get('started_at')}); lock file {self.path}"
            )
        raise AlreadyRunning(f"could not take the lock {self.path}: another nightly job keeps taking it")

    def _stale(self, holder: dict[str, Any]) -> bool:
        if not holder:  # unreadable: stale only once it is clearly not being written right now
            with contextlib.suppress(FileNotFoundError):
                return time.time() - self.path.stat().st_mtime > 60
            return True
        if holder.get("host") != socket.gethostname():
            return False  # cannot see another host's processes: delete the file by hand if it is dead
        pid = holder.get("pid")
        return not isinstance(pid, int) or not _pid_alive(pid, holder.get("proc_start"))

    def release(self) -> None:
        if self.held:
            holder = self.read()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> NightlyLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_status(warehouse: Warehouse) -> dict[str, Any] | None:
    """Who holds the nightly lock, and whether that process is still alive (for `status`)."""
    lock = NightlyLock(warehouse.root / LOCK_FILE, "")
    holder = lock.read()
    if holder is None:
        return None
    return {**holder, "stale": lock._stale(holder), "path": str(lock.path)}


# ---------------------------------------------------------------------------- meta.job_runs
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


# ---------------------------------------------------------------------------- the job
@dataclass
class StepResult:
    step: str
    status: str  # success | skipped | failed
    seconds: float = 0.0
    rows: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class NightlyReport:
    run_id: str
    job: str
    status: str
    log_path: str
    seconds: float = 0.0
    steps: list[StepResult] = field(default_factory=list)
    model_run_id: str | None = None
    report_path: str | None = None  # the run's HTML page (reports/<run_id>.html), None if not written

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Skip(Exception):
    def __init__(self, details: dict[str, Any]) -> None:
        super().__init__("skipped")
        self.details = details


class _StepFailedWith(UserError):
    """A step that failed part-way and says what it did (`details`, stored in meta.job_runs)."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message, exit_code=1)
        self.details = details


@dataclass
class _State:
    """What steps hand to later steps."""

    model_run_id: str | None = None
    ctx: Any = None  # ScoringContext, shared by score and evaluate
    score: dict[str, Any] | None = None  # what score wrote (k, index, annoy recall), for the gates


def _unwritable(folder: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write the warehouse folder {folder}: {exc.strerror or exc}")


def _run_dir_log(warehouse: Warehouse, run_id: str) -> Path:
    try:
        warehouse.logs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(warehouse.logs_dir, exc) from exc
    return warehouse.logs_dir / f"{run_id}.{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.log"


@contextlib.contextmanager
def _log_to(path: Path, echo: bool) -> Iterator[None]:
    """Send the package's log records to the run's log file (and to stderr when `echo`)."""
    root = logging.getLogger("rechub_store")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    fmt.converter = time.gmtime
    handlers: list[logging.Handler] = [logging.FileHandler(path, encoding="utf-8")]
    if echo:
        console = logging.StreamHandler(sys.stderr)
        console.addFilter(lambda record: not getattr(record, "file_only", False))  # tracebacks: log only
        handlers.append(console)
    old_level = root.level
    root.setLevel(logging.INFO)
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(RedactingFilter())  # passwords (and fragments) of publish URLs never reach a log
        root.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)


@contextlib.contextmanager
def _stderr_to(path: Path, enabled: bool) -> Iterator[None]:
    """With `enabled` (--quiet, --json), file descriptor 2 itself goes to the run's log, so that what
    C code writes there (annoy, DuckDB, a crashing library) stays out of cron's mail too."""
    global _console_fd
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    _console_fd = saved
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        _console_fd = None


class Terminated(Exception):
    """SIGTERM (cron/systemd timeout, `kill`): fail the current step cleanly, release the lock."""


@contextlib.contextmanager
def _sigterm_fails_the_step() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"terminated by signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _latest_model(con: duckdb.DuckDBPyConnection) -> tuple[str, dt.datetime | None] | None:
    if not table_exists(con, "meta.model_runs"):
        return None
    row = con.execute(
        "SELECT model_run_id, finished_at FROM meta.model_runs WHERE status = 'success' "
        "ORDER BY finished_at DESC NULLS LAST, model_run_id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else (row[0], row[1])


def model_as_of(con: duckdb.DuckDBPyConnection, day: dt.date) -> str:
    """The latest successful model run finished by the end of `day` (UTC): a backfill's model."""
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    row = None
    if table_exists(con, "meta.model_runs"):
        row = con.execute(
            "SELECT model_run_id FROM meta.model_runs WHERE status = 'success' AND finished_at < ? "
            "ORDER BY finished_at DESC, model_run_id DESC LIMIT 1",
            [end],
        ).fetchone()
    if row is None:
        raise UserError(f"backfill {day.isoformat()}: no model run had finished by the end of that date")
    return str(row[0])


def _raw_state(con: duckdb.DuckDBPyConnection) -> list[int] | None:
    if not table_exists(con, "raw.batches"):
        return None
    count, last = con.execute("SELECT count(*), coalesce(max(batch_seq), 0) FROM raw.batches").fetchone()  # type: ignore[misc]
    return [int(count), int(last)]


def _train_config(settings: TrainSettings) -> Any:
    """The trainer's config for the job's [train] table (validated when the job file was read)."""
    return settings.config()


def _build_params(con: duckdb.DuckDBPyConnection, job: JobConfig) -> Any:
    from dataclasses import fields

    from rechub_store.data.build import BuildParams
    from rechub_store.data.readers import latest_build

    if job.build is not None:
        return BuildParams.from_mapping(job.build)
    _, stored = latest_build(con)  # no [build] table: keep what the last build used
    known = {f.name for f in fields(BuildParams)}
    return BuildParams.from_mapping({k: v for k, v in stored.items() if k in known})


def _user_sql_dir(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, job: JobConfig) -> Path | None:
    """The user's SQL models folder for this run: `--models-dir`/RECHUB_MODELS_DIR, else the job
    file's `[build] models_dir`, else (no `[build]` table: settings as last time) the folder the
    last successful build used."""
    if warehouse.user_sql_dir is not None:
        if job.models_dir is not None and Path(warehouse.user_sql_dir).resolve() != job.models_dir.resolve():
            log.warning(
                "models folder %s (--models-dir / RECHUB_MODELS_DIR) overrides the job file's %s",
                warehouse.user_sql_dir,
                job.models_dir,
            )
        return Path(warehouse.user_sql_dir)
    if job.models_dir is not None or job.build is not None:
        return job.models_dir
    from rechub_store.data.readers import latest_build

    _, stored = latest_build(con)
    return Path(stored["models_dir"]) if stored.get("models_dir") else None


class Nightly:
    """One run of a job. `run()` does everything; the steps are methods so tests can read them."""

    def __init__(
        self,
        warehouse: Warehouse,
        job: JobConfig,
        run_id: str,
        echo: bool = False,
        *,
        full_refresh: bool = False,
        backfill: dt.date | None = None,
    ) -> None:
        self.warehouse, self.job, self.run_id, self.echo = warehouse, job, run_id, echo
        self.full_refresh = full_refresh  # rebuild every feature table and rescore every user
        self.backfill = backfill  # reproduce this date's run from the batches ingested by its end
        self.state = _State()
        self.targets: list[tuple[str, str]] | None = None  # (key, URL), checked before the lock

    # -- steps (each returns (rows, details) or raises _Skip) --------------------------------
    def ingest(self, con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, Any]]:
        from rechub_store.data.ingest import ingest_interactions
        from rechub_store.data.movielens import ingest_movielens

        if self.backfill is not None:
            raise _Skip({"reason": "backfill: reads the batches ingested by the end of its date"})
        if not self.job.sources:
            raise _Skip({"reason": "no [[ingest.sources]] in the job"})
        files: list[dict[str, Any]] = []
        new_rows = 0
        for source in self.job.sources:
            paths = self.job.source_files(source)
            if not paths:
                log.warning("ingest source %s matches no files", source.path)
            for path in paths:
                try:
                    if source.kind == "movielens":
                        results = ingest_movielens(con, path, **source.ingest_options())
                    else:
                        results = ingest_interactions(
                            con,
                            path,
                            user_col=source.user_col,
                            item_col=source.item_col,  # type: ignore[arg-type]
                            time_col=source.time_col,
                            rating_col=source.rating_col,
                            **source.ingest_options(),  # type: ignore[arg-type]
                        )
                except TypeError as exc:
                    raise UserError(f"ingest source {source.path}: bad options: {exc}") from None
                for r in results if isinstance(results, list | tuple) else [results]:
                    files.append(r.as_dict())
                    if not r.duplicate_batch:
                        new_rows += r.rows_accepted
                    log.info(
                        "ingest %s: %s",
                        r.path,
                        "already ingested"
                        if r.duplicate_batch
                        else f"{r.rows_accepted} rows accepted, {r.rows_rejected} rejected",
                    )
        return new_rows, {"files": files, "new_rows": new_rows}

    def build(self, con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, Any]]:
        """Rebuild the feature store, unless nothing it depends on changed since the last nightly build.

        Inputs = the raw batches (count, last batch_seq), the build parameters and the SQL models'
        text; the latest successful build must still be the one the previous nightly recorded
        (a manual `build-features` in between forces a rebuild).
        """
        from rechub_store.data.build import build_features
        from rechub_store.data.readers import latest_build
        from rechub_store.data.sqlmodels import fingerprint
        from rechub_store.paths import SQL_DIR

        params = _build_params(con, self.job)
        user_dir = _user_sql_dir(con, self.warehouse, self.job)
        upto = batches_up_to(con, self.backfill) if self.backfill is not None else None
        inputs = {"raw": _raw_state(con), "params": params.to_dict(), "sql": fingerprint(SQL_DIR, user_dir)}
        if upto is not None:
            inputs["upto_batch_seq"] = upto
        last_id, _ = latest_build(con)
        prev = con.execute(
            "SELECT details FROM meta.job_runs WHERE step = 'build' AND status IN ('success', 'skipped') "
            "ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()
        prev_details = json.loads(prev[0]) if prev and prev[0] else {}
        same = last_id and prev_details.get("build_id") == last_id and prev_details.get("inputs") == inputs
        if same and not self.full_refresh:
            raise _Skip(
                {"reason": "no new data, same parameters and SQL", "build_id": last_id, "inputs": inputs}
            )
        report = build_features(
            con, params, user_dir=user_dir, incremental=not self.full_refresh, upto_batch_seq=upto
        )
        samples = report.samples
        log.info("%s build (%s)", report.mode, report.mode_reason)
        return sum(samples.values()), {
            "mode": report.mode,
            "mode_reason": report.mode_reason,
            "upto_batch_seq": report.upto_batch_seq,
            "build_id": report.build_id,
            "models_dir": None if user_dir is None else str(user_dir),
            "inputs": inputs,
            "samples": samples,
            "users_dropped_short": report.users_dropped_short,
        }

    def train(self, con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, Any]]:
        settings = self.job.train
        if self.backfill is not None:
            model_run_id = model_as_of(con, self.backfill)
            self.state.model_run_id = model_run_id
            raise _Skip(
                {
                    "reason": "backfill: the model that was current at the end of its date",
                    "model_run_id": model_run_id,
                }
            )
        latest = _latest_model(con)
        reason: str | None = None
        if settings.policy == "always":
            reason = "policy always"
        elif latest is None:
            if settings.policy == "never":
                raise UserError(
                    "no trained model: run `rechub-store train` first, or set [train] policy in the job file"
                )
            reason = "no model yet"
        elif settings.policy == "if-older-than":
            age_days = (utcnow() - latest[1]).total_seconds() / 86400 if latest[1] else float("inf")
            if age_days > settings.max_age_days:
                reason = f"latest model is {age_days:.1f} days old (> {settings.max_age_days:g})"
        if reason is None:
            assert latest is not None
            self.state.model_run_id = latest[0]
            raise _Skip({"policy": settings.policy, "model_run_id": latest[0], "reason": "model is current"})
        from rechub_store.training.trainer import train

        log.info("training %s (%s)", settings.model, reason)
        result = train(con, _train_config(settings))
        self.state.model_run_id = result.model_run_id
        return 1, {
            "policy": settings.policy,
            "reason": reason,
            "model_run_id": result.model_run_id,
            "best_metric": result.best_metric,
            "best_epoch": result.best_epoch,
            "wall_seconds": result.wall_seconds,
        }

    def _context(self, con: duckdb.DuckDBPyConnection) -> Any:
        from rechub_store.retrieval.scoring import load_context

        if self.state.ctx is None:
            splits = self.job.evaluate.splits if self.job.evaluate.enabled else ()
            self.state.ctx = load_context(con, self.state.model_run_id, splits=tuple(splits))
            self.state.model_run_id = self.state.ctx.model_run_id
        return self.state.ctx

    def score(self, con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, Any]]:
        from rechub_store.retrieval.scoring import score_run

        ctx = self._context(con)
        s = self.job.score
        index = s.index_for(ctx.item_vecs.shape[0] - 1)
        report = score_run(
            con,
            ctx,
            self.run_id,
            k=s.k,
            index=index,
            annoy_settings=s.annoy,
            keep_runs=self.job.publish.keep_runs,
            exclude_seen=s.exclude_seen,
            incremental=not self.full_refresh,
        )
        self.state.score = {
            "k": s.k,
            "n_items": ctx.item_vecs.shape[0] - 1,
            "annoy_recall": (report.annoy or {}).get("measured_recall") if index == "annoy" else None,
        }
        return report.rows, report.as_dict()

    def evaluate(self, con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, Any]]:
        from rechub_store.retrieval.evaluate import evaluate_run

        e = self.job.evaluate
        if not e.enabled:
            raise _Skip({"reason": "evaluate.enabled = false"})
        ctx = self._context(con)
        report = evaluate_run(
            con,
            ctx,
            self.run_id,
            ks=e.ks,
            splits=e.splits,
            indexes=e.indexes,
            baselines=e.baselines,
            seen_filter=e.seen_filter,
            annoy_settings=self.job.score.annoy,
            max_users=e.max_users,
            list_users=e.list_users,
            exclude_seen=self.job.score.exclude_seen,
        )
        headline = {
            f"{r['model_run_id']}/{r['index']}/{r['metric']}@{r['k']}": round(r["value"], 5)
            for r in report.rows
            if r["split"] == "test" and r["k"] == min(e.ks) and r["slice"] == "all"
        }
        return len(report.rows), {"seconds": report.seconds, "metrics": headline, "annoy": report.annoy}

    def publish(self, con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, Any]]:
        """Gates first (a failed `fail` gate publishes nothing), then the analytics file, then every
        server target; a target that fails does not stop the others, and the step then fails
        naming which targets have the run (a rerun of the date publishes only to the others)."""
        from rechub_store.publish.gates import check_gates
        from rechub_store.publish.server import mask_url, publish_to_url

        p = self.job.publish
        if not p.analytics and not p.targets:
            raise _Skip({"reason": "publish.analytics = false and no publish.targets"})
        details: dict[str, Any] = {}
        if self.state.score is not None:
            gates = check_gates(
                con,
                self.warehouse.analytics_path,
                self.run_id,
                p.gates,
                k=self.state.score["k"],
                n_items=self.state.score["n_items"],
                annoy_recall=self.state.score["annoy_recall"],
            )
            details["gates"] = [g.as_dict() for g in gates]
        targets = self.targets if self.targets is not None else p.resolved_targets()
        rows = 0
        done: list[str] = []
        if p.analytics:
            result = publish_analytics(
                con,
                self.warehouse,
                self.run_id,
                before_replace=lambda: fault_point("publish-replace"),
                keep_runs=p.keep_runs,
                pending_targets=[mask_url(url) for _, url in targets],
            )
            details["analytics"] = result
            rows = result["rows"]["recommendations"]
            done.append("analytics")
        failed: list[str] = []
        if targets:
            details["targets"] = []
            for key, url in targets:
                entry: dict[str, Any] = {"key": key, "url": mask_url(url)}
                try:
                    res = publish_to_url(con, url, run_id=self.run_id, retention=p.keep_runs, where=key)
                except Exception as exc:  # one target down must not keep the run from the others
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    entry.update(status="failed", error=redact(first))
                    failed.append(f"{key} ({entry['url']}): {entry['error']}")
                    log.error("publish to %s failed: %s", key, entry["error"])
                else:
                    entry.update(res.as_dict())
                    done.append(f"{key} ({entry['url']})")
                details["targets"].append(entry)
        if failed:
            raise _StepFailedWith(
                f"published to {', '.join(done) or 'nothing'}; not to {'; '.join(failed)}; "
                "rerun the date to publish to the missing target(s)",
                details,
            )
        return rows, details

    # -- driver ----------------------------------------------------------------------------
    def run(self) -> NightlyReport:
        """Log, check the publish targets, take the lock, run the steps, record everything.

        The log file and (for a quiet run) file descriptor 2 are set up first, so that even the
        stale-lock warning and C-level output land in the log; the targets are checked (connect,
        `SELECT 1`, with the retry policy) before the lock is taken and before any step runs.
        """
        log_path = _run_dir_log(self.warehouse, self.run_id)
        report = NightlyReport(self.run_id, self.job.name, "running", str(log_path))
        t_all = time.perf_counter()
        failed: StepResult | None = None
        with _log_to(log_path, self.echo), _stderr_to(log_path, not self.echo), _sigterm_fails_the_step():
            log.info(
                "nightly %s (job %s, file %s) starting, pid %d",
                self.run_id,
                self.job.name,
                self.job.path or "-",
                os.getpid(),
            )
            try:
                self.targets = self._check_targets()
                with NightlyLock(self.warehouse.root / LOCK_FILE, self.run_id) as lock:
                    if lock.recovered is not None:
                        log.warning(
                            "took over a stale lock from pid %s (run %s, started %s): that run died",
                            lock.recovered.get("pid"),
                            lock.recovered.get("run_id"),
                            lock.recovered.get("started_at"),
                        )
                    failed = self._run_locked(report, log_path, t_all)
            except (BookkeepingFailed, Terminated) as exc:
                log.error("nightly %s stopped: %s", self.run_id, exc)
                log.error("%s", traceback.format_exc(), extra=FILE_ONLY)
                raise UserError(
                    f"nightly {self.run_id} failed: {redact(str(exc))} (log: {log_path})", exit_code=1
                ) from None
            except UserError as exc:
                log.error("nightly %s did not start: %s", self.run_id, exc)
                raise
            log.info("nightly %s %s in %.1fs", self.run_id, report.status, report.seconds)
        if failed is not None:
            page = f", report: {report.report_path}" if report.report_path else ""
            raise UserError(
                f"nightly {self.run_id} failed at step {failed.step}: {failed.error} (log: {log_path}{page})",
                exit_code=1,
            )
        return report

    def _write_report(self, con: duckdb.DuckDBPyConnection) -> str | None:
        """The run's HTML page and the reports index, once the run is recorded (failed runs too).

        A report never changes the run's outcome: an error here is logged and noted in the `whole`
        row's details (`report_error`); the run keeps its status and exit code.
        """
        from rechub_store.report import build_report

        try:
            path = build_report(
                self.warehouse, self.run_id, con=con, trend_runs=self.job.publish.keep_runs
            ).path
            note: dict[str, Any] = {"report": path}
        except Exception as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, UserError):  # e.g. a full disk: one line, as for a failed step
                log.error("report for %s not written (the run's status is unchanged): %s", self.run_id, error)
            else:
                error = f"{type(exc).__name__}: {error}"
                log.error("report for %s not written (the run's status is unchanged): %s", self.run_id, error)
                log.error("%s", traceback.format_exc(), extra=FILE_ONLY)
            path, note = None, {"report_error": error}
        with contextlib.suppress(duckdb.Error):
            con.execute(
                "UPDATE meta.job_runs SET details = json_merge_patch(details, ?) "
                "WHERE run_id = ? AND job = ? AND step = 'whole'",
                [json.dumps(note), self.run_id, self.job.name],
            )
        return path

    def _check_targets(self) -> list[tuple[str, str]]:
        """Every publish target, `${VAR}` expanded, reachable now (retried like a publish; an
        authentication failure fails at once): (key, URL) pairs, or a one-line UserError."""
        from rechub_store.publish.server import check_target

        targets = self.job.publish.resolved_targets()
        for key, url in targets:
            info = check_target(url, key)
            log.info("%s %s is reachable (%d attempt(s))", key, info["target"], info["attempts"])
        return targets

    def _run_locked(self, report: NightlyReport, log_path: Path, t_all: float) -> StepResult | None:
        failed: StepResult | None = None
        with self.warehouse.session() as con:
            rec = JobRecorder(con, self.run_id, self.job.name)
            rec.reset()
            t_whole = rec.start("whole")
            for step in STEPS:
                result = self._run_step(con, rec, step)
                report.steps.append(result)
                if result.status == "failed":
                    failed = result
                    break
            report.model_run_id = self.state.model_run_id
            report.seconds = round(time.perf_counter() - t_all, 3)
            report.status = "failed" if failed else "success"
            summary = {
                "steps": {s.step: s.status for s in report.steps},
                "log": str(log_path),
                "model_run_id": report.model_run_id,
                "job_file": str(self.job.path or ""),
            }
            rows = next((s.rows for s in report.steps if s.step == "score"), None)
            rec.finish("whole", t_whole, report.status, rows, summary, failed.error if failed else None)
            report.report_path = self._write_report(con)
        return failed

    def _run_step(self, con: duckdb.DuckDBPyConnection, rec: JobRecorder, step: str) -> StepResult:
        t0 = rec.start(step)
        log.info("step %s", step)
        try:
            fault_point(step)
            rows, details = getattr(self, step)(con)
        except _Skip as skip:
            seconds = rec.finish(step, t0, "skipped", None, skip.details)
            log.info("step %s skipped: %s", step, json.dumps(skip.details, default=str))
            return StepResult(step, "skipped", seconds, None, skip.details)
        except Exception as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, UserError):
                error = f"{type(exc).__name__}: {error}"
                log.error("step %s failed: %s", step, error)
                log.error("%s", traceback.format_exc(), extra=FILE_ONLY)
            else:
                log.error("step %s failed: %s", step, error)
            error = redact(error) or error
            details = getattr(exc, "details", None) or {}
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")  # leave no half-open transaction behind a failed step
            seconds = rec.finish(step, t0, "failed", None, details, error)
            return StepResult(step, "failed", seconds, None, details, error)
        seconds = rec.finish(step, t0, "success", rows, details)
        log.info("step %s done in %.1fs (%s rows)", step, seconds, rows)
        return StepResult(step, "success", seconds, rows, details)


def validate_job(job: JobConfig, warehouse: Warehouse) -> None:
    """Everything about the job that can be checked without the warehouse, before the lock: build
    and train parameters (train.model even when no retrain is due), `${VAR}`s in publish.targets
    and the URLs themselves, the user's SQL models folder. The job file loader checks most of it
    already; a JobConfig built in Python is checked here."""
    if job.build is not None:
        from rechub_store.data.build import BuildParams

        try:
            BuildParams.from_mapping(job.build)
        except UserError as exc:
            raise UserError(f"build: {exc}") from None
    job.train.config()
    job.publish.resolved_targets()
    if (warehouse.user_sql_dir or job.models_dir) is not None:
        from rechub_store.data.sqlmodels import user_models_folder

        user_models_folder(warehouse.user_sql_dir or job.models_dir)  # type: ignore[arg-type]


def run_nightly(
    warehouse: Warehouse,
    job: JobConfig | None = None,
    run_date: dt.date | None = None,
    *,
    echo: bool = False,
    full_refresh: bool = False,
    backfill: bool = False,
) -> NightlyReport:
    """Run the job (default: the warehouse's own data, latest model, default settings) for a date.

    The feature build is incremental and scoring rescoring only the users whose lists can have
    changed, whenever that gives the same result as doing everything (`full_refresh`: do everything).
    `backfill`: reproduce `run_date`'s run from the raw batches ingested by the end of that date
    (UTC), with the model that was current then: no ingest, no training.

    The whole job is validated and its publish targets are checked reachable before the lock is
    taken. Raises AlreadyRunning (exit 3) if another run holds the lock, UserError (exit 2) for a
    bad job or an unreachable target, UserError (exit 1) if a step failed.
    """
    job = job or JobConfig()
    run_date = run_date or dt.datetime.now(dt.UTC).date()
    validate_job(job, warehouse)
    return Nightly(
        warehouse,
        job,
        f"nightly-{run_date.isoformat()}",
        echo=echo,
        full_refresh=full_refresh,
        backfill=run_date if backfill else None,
    ).run()


# ---------------------------------------------------------------------------- demo
@dataclass
class DemoReport:
    nightly: NightlyReport
    metrics: list[dict[str, Any]]
    sample: list[dict[str, Any]]
    data_dir: str
    seconds: float


def run_demo(
    warehouse: Warehouse,
    *,
    n_users: int = 2000,
    n_items: int = 1000,
    n_events: int = 60_000,
    model: str = "sasrec",
    epochs: int = 5,
    k: int = 20,
    seed: int = 0,
    run_date: dt.date | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoReport:
    """Synthetic data end to end: generate, ingest, build, train, then nightly (score, evaluate, publish)."""
    from rechub_store.data.build import BuildParams, build_features
    from rechub_store.data.generate import generate_into
    from rechub_store.training.config import TrainConfig
    from rechub_store.training.trainer import train

    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    data_dir = warehouse.root / "demo-data"
    with warehouse.session() as con:
        say(f"generating {n_users} users x {n_items} items x {n_events} events into {data_dir}")
        generate_into(con, data_dir, n_users=n_users, n_items=n_items, n_events=n_events, seed=seed)
        say("building features")
        build_features(con, BuildParams(), user_dir=warehouse.user_sql_dir)
        say(f"training {model} ({epochs} epochs)")
        train(con, TrainConfig(model=model, epochs=epochs, seed=seed, progress=False))
    job = JobConfig(
        name="demo",
        train=TrainSettings(policy="never"),
        score=replace(ScoreSettings(), k=k),
        evaluate=replace(EvaluateSettings(), ks=tuple(x for x in (10, 20, 50) if x <= max(k, 10)) or (k,)),
    )
    say("nightly: score, evaluate, publish")
    report = run_nightly(warehouse, job, run_date)
    con = duckdb.connect(str(warehouse.analytics_path), read_only=True)
    try:
        cur = con.execute(
            """
            PIVOT (SELECT model_run_id, "index", k, metric, value FROM evaluation_metrics
                   WHERE run_id = ? AND split = 'test' AND slice = 'all')
            ON metric IN ('recall', 'hit', 'ndcg', 'mrr', 'precision', 'annoy_recall') USING first(value)
            ORDER BY k, list_contains(?, model_run_id), model_run_id, "index"
            """,
            [report.run_id, list(BASELINE_NAMES)],
        )
        names = [d[0] for d in cur.description]
        metrics = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        cur = con.execute(
            "SELECT user_id, rank, item_id, round(score, 4) AS score FROM recommendations "
            "WHERE user_id IN (SELECT DISTINCT user_id FROM recommendations ORDER BY user_id LIMIT 2) "
            "AND rank <= 5 ORDER BY user_id, rank"
        )
        names = [d[0] for d in cur.description]
        sample = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()
    return DemoReport(report, metrics, sample, str(data_dir), round(time.perf_counter() - t0, 3))


# ---------------------------------------------------------------------------- status
def job_status(warehouse: Warehouse, limit: int = 10) -> dict[str, Any]:
    """Last job runs, latest model run, the published run and the lock, for `rechub-store status`.

    Reads the warehouse read-only; while a job holds it (DuckDB's single-writer lock) falls back
    to the copies in analytics.duckdb and says so.
    """
    from rechub_store.publish.analytics import published_run

    out: dict[str, Any] = {
        "warehouse": str(warehouse.path),
        "analytics": str(warehouse.analytics_path),
        "published": published_run(warehouse.analytics_path),
        "lock": lock_status(warehouse),
        "source": None,
        "job_runs": [],
        "latest_model_run": None,
    }
    con = None
    for path in (warehouse.path, warehouse.analytics_path):
        if not path.exists():
            continue
        try:
            con = duckdb.connect(str(path), read_only=True)
            out["source"] = str(path)
            break
        except duckdb.Error as exc:
            out.setdefault("notes", []).append(f"{path}: {str(exc).splitlines()[0]}")
    if con is None:
        return out
    schema = "meta" if out["source"] == str(warehouse.path) else "main"
    try:
        if table_exists(con, f"{schema}.job_runs"):
            cur = con.execute(
                "SELECT run_id, job, status, started_at, finished_at, seconds, rows, error "
                f"FROM {schema}.job_runs WHERE step = 'whole' ORDER BY started_at DESC LIMIT ?",
                [limit],
            )
            names = [d[0] for d in cur.description]
            out["job_runs"] = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        if table_exists(con, f"{schema}.model_runs"):
            cur = con.execute(
                f"SELECT model_run_id, model, status, best_metric, finished_at FROM {schema}.model_runs "
                "WHERE status = 'success' ORDER BY finished_at DESC NULLS LAST LIMIT 1"
            )
            row = cur.fetchone()
            if row:
                out["latest_model_run"] = dict(zip([d[0] for d in cur.description], row, strict=True))
    finally:
        con.close()
    return out
