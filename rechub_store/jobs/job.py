"""The nightly job: ingest -> build-features -> train (per policy) -> score -> evaluate -> publish.

What cron needs from it:
- never two at once: a lock file (`<warehouse folder>/nightly.lock`, created with O_EXCL semantics,
  holding pid, host, process start time and run id). A lock whose process is gone (killed run)
  is recovered with a log line; a live one makes the second run exit 3 with "already running".
- a record: one `meta.job_runs` row per step (status, seconds, rows, details JSON with URLs
  masked) plus a `whole` row, and a log file per run under `<warehouse folder>/logs/`.
- all or nothing for analysts: results reach `analytics.duckdb` only by an atomic rename at the
  end (see `rechub_store.publish.analytics`), so a run killed at any step leaves the previous run published.
- exit code 0 only on success.

Fault injection points (`rechub_store.faults`): every step name, `publish-replace`, `job-record`.

The parts: `jobs.config` (the job file), `jobs.lock`, `jobs.records` (meta.job_runs), `jobs.status`,
`jobs.demo`; this module runs the steps.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import duckdb

from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.incremental import batches_up_to
from rechub_store.data.ingest import ingest_interactions
from rechub_store.data.movielens import ingest_movielens
from rechub_store.data.readers import latest_build
from rechub_store.data.sqlmodels import fingerprint, user_models_folder
from rechub_store.errors import UserError
from rechub_store.faults import fault_point, set_console
from rechub_store.jobs.config import JobConfig, TrainSettings
from rechub_store.jobs.lock import LOCK_FILE, NightlyLock, unwritable
from rechub_store.jobs.records import BookkeepingFailed, JobRecorder
from rechub_store.paths import SQL_DIR
from rechub_store.pipeline.train import train
from rechub_store.publish.analytics import publish_analytics
from rechub_store.publish.gates import check_gates
from rechub_store.publish.server import check_target, mask_url, publish_to_url
from rechub_store.redact import RedactingFilter, redact
from rechub_store.report import build_report
from rechub_store.results.evaluate import evaluate_run
from rechub_store.results.score import score_run
from rechub_store.results.tables import utcnow
from rechub_store.retrieval.scoring import load_context
from rechub_store.tuning.study import tuned_config
from rechub_store.warehouse import Warehouse, table_exists

log = logging.getLogger(__name__)

STEPS = ("ingest", "build", "train", "score", "evaluate", "publish")
FILE_ONLY = {"file_only": True}  # a log record for the run's log file, not the terminal (tracebacks)


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


def _run_dir_log(warehouse: Warehouse, run_id: str) -> Path:
    try:
        warehouse.logs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(warehouse.logs_dir, exc) from exc
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
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    set_console(saved)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        set_console(None)


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
    if job.build is not None:
        return job.build_params()
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
        config, study_id = _train_config(settings), None
        if settings.use_tuned == "last":
            config, study_id = tuned_config(con, config)
            reason += f", parameters of tuning study {study_id}"
        log.info("training %s (%s)", settings.model, reason)
        result = train(con, config, self.warehouse.threads, tuned_from=study_id)
        self.state.model_run_id = result.model_run_id
        return 1, {
            "policy": settings.policy,
            "reason": reason,
            "model_run_id": result.model_run_id,
            "tuned_from": study_id,
            "best_metric": result.best_metric,
            "best_epoch": result.best_epoch,
            "wall_seconds": result.wall_seconds,
        }

    def _context(self, con: duckdb.DuckDBPyConnection) -> Any:
        if self.state.ctx is None:
            splits = self.job.evaluate.splits if self.job.evaluate.enabled else ()
            self.state.ctx = load_context(
                con, self.state.model_run_id, splits=tuple(splits), threads=self.warehouse.threads
            )
            self.state.model_run_id = self.state.ctx.model_run_id
        return self.state.ctx

    def score(self, con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, Any]]:
        ctx = self._context(con)
        s = self.job.score
        report = score_run(
            con,
            ctx,
            self.run_id,
            k=s.k,
            index=s.index,  # auto: measured on this run's users (retrieval/autoindex.py)
            annoy_settings=s.annoy,
            keep_runs=self.job.publish.keep_runs,
            exclude_seen=s.exclude_seen,
            incremental=not self.full_refresh,
        )
        self.state.score = {
            "k": s.k,
            "n_items": ctx.item_vecs.shape[0] - 1,
            "annoy_recall": (report.annoy or {}).get("measured_recall") if report.index == "annoy" else None,
        }
        return report.rows, report.as_dict()

    def evaluate(self, con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, Any]]:
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
            reuse=not self.full_refresh,
        )
        headline = {
            f"{r['model_run_id']}/{r['index']}/{r['metric']}@{r['k']}": round(r["value"], 5)
            for r in report.rows
            if r["split"] == "test" and r["k"] == min(e.ks) and r["slice"] == "all"
        }
        return len(report.rows), {
            "seconds": report.seconds,
            "metrics": headline,
            "annoy": report.annoy,
            "annoy_answers": report.annoy_answers,
        }

    def publish(self, con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, Any]]:
        """Gates first (a failed `fail` gate publishes nothing), then the analytics file, then every
        server target; a target that fails does not stop the others, and the step then fails
        naming which targets have the run (a rerun of the date publishes only to the others)."""
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
                    res = publish_to_url(
                        con,
                        url,
                        run_id=self.run_id,
                        retention=p.keep_runs,
                        where=key,
                        retries=self.warehouse.publish_retries,
                        backoff_s=self.warehouse.publish_backoff_s,
                    )
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
        targets = self.job.publish.resolved_targets()
        for key, url in targets:
            info = check_target(
                url,
                key,
                retries=self.warehouse.publish_retries,
                backoff_s=self.warehouse.publish_backoff_s,
            )
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
            if self.job.publish.report:
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
    job.build_params()
    job.train.config()
    job.publish.resolved_targets()
    if (warehouse.user_sql_dir or job.models_dir) is not None:
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
