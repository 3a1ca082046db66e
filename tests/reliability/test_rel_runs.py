"""What analysts and cron see around a run: only published runs in the history, honest job_runs,
no leftovers or tracebacks when a run fails, passwords never stored or printed, a quiet success,
and a warehouse that keeps working when its folder is moved."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from rel_helpers import (
    BASE_DATE,
    NEXT_DATE,
    make_events,
    one_line_error,
    run_in_process,
    run_process,
    write_job,
)
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.errors import UserError
from rechub_store.jobs.job import Nightly
from rechub_store.redact import MASK, forget_all, redact, register

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "from rechub_store.cli import main; main()"]
RUN = f"nightly-{NEXT_DATE.isoformat()}"
BASE_RUN = f"nightly-{BASE_DATE.isoformat()}"


def _query(path: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _cli(wh: Path, *args: str):
    return CliRunner().invoke(app, ["--warehouse", str(wh), *args])


# ------------------------------------------------------------------------------------- item 7


def test_history_holds_only_published_runs_and_job_runs_are_final(baseline: Path, tally) -> None:
    wh = baseline / "wh" / "rechub.duckdb"
    analytics = baseline / "wh" / "analytics.duckdb"
    job = baseline / "data" / "job.toml"
    with tally.case("faults"):
        res = _cli(wh, "score", "--k", "3", "--index", "exact", "--run-id", "manual-check")
        assert res.exit_code == 0, res.output
        os.environ["RECHUB_FAULT"] = "evaluate:fail"  # scored, never published
        try:
            with pytest.raises(UserError, match="failed at step evaluate"):
                run_in_process(wh, job, dt.date(2026, 1, 5))
        finally:
            del os.environ["RECHUB_FAULT"]
        run_in_process(wh, job, NEXT_DATE)
        working = {r[0] for r in _query(wh, "SELECT DISTINCT run_id FROM main.recommendations_history")}
        assert {"manual-check", "nightly-2026-01-05"} <= working, "the working copy keeps everything"
        history = {r[0] for r in _query(analytics, "SELECT DISTINCT run_id FROM recommendations_history")}
        assert history == {BASE_RUN, RUN}, history
        rows = _query(analytics, "SELECT run_id, step, status, details FROM job_runs")
        assert not [r for r in rows if r[2] == "running"], "no row is left running in the analytics copy"
        mine = {step: (status, json.loads(details)) for run, step, status, details in rows if run == RUN}
        assert mine["whole"][0] == mine["publish"][0] == "success"
        assert (
            mine["publish"][1]["recorded_at_publish"] is True and mine["publish"][1]["targets_pending"] == []
        )


# ------------------------------------------------------------------------------------ item 10


def test_a_failed_publish_leaves_no_temporary_analytics_files(baseline: Path, tally) -> None:
    folder = baseline / "wh"
    before = (folder / "analytics.duckdb").read_bytes()
    with tally.case("faults"):
        proc = run_process(folder / "rechub.duckdb", baseline / "data" / "job.toml", NEXT_DATE,
                           env={"RECHUB_FAULT": "publish-replace:fail"})  # fmt: skip
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1 and "failed at step publish" in errors[0]
        assert (folder / "analytics.duckdb").read_bytes() == before
        assert not list(folder.glob("analytics.duckdb.tmp-*")), "temporary file or its .wal left behind"
        assert not (folder / "nightly.lock").exists()


def test_disk_full_inside_the_job_bookkeeping_is_one_line(baseline: Path, tally) -> None:
    folder = baseline / "wh"
    before = (folder / "analytics.duckdb").read_bytes()
    with tally.case("faults"):
        proc = run_process(folder / "rechub.duckdb", baseline / "data" / "job.toml", NEXT_DATE,
                           env={"RECHUB_FAULT": "job-record:enospc"})  # fmt: skip
        line = one_line_error(proc)
        assert proc.returncode == 1 and "cannot record the job run in meta.job_runs" in line, line
        assert "No space left on device" in line and "(log: " in line
        assert (folder / "analytics.duckdb").read_bytes() == before
        assert not (folder / "nightly.lock").exists(), "the lock is released"
        proc = run_process(folder / "rechub.duckdb", baseline / "data" / "job.toml", NEXT_DATE)
        assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--memory-limit", "banana", "status"], {}, "--memory-limit: expected a size"),
        (["--threads", "-3", "status"], {}, "--threads: expected an integer >= 1, got -3"),
        (["--threads", "0", "sql", "SELECT 1"], {}, "--threads: expected an integer >= 1, got 0"),
        (["status"], {"RECHUB_THREADS": "lots"}, "RECHUB_THREADS='lots': expected an integer >= 1"),
    ],
)
def test_bad_global_options_are_one_line(baseline: Path, args, env, message, tally) -> None:
    with tally.case("inputs"):
        proc = subprocess.run(
            [*CLI, "--warehouse", str(baseline / "wh" / "rechub.duckdb"), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=120,
        )
        assert message in one_line_error(proc)
        assert proc.returncode == 2


# ------------------------------------------------------------------------------------- item 3


def test_redact_masks_every_fragment_of_a_password() -> None:
    forget_all()
    register("retPw9@x")
    assert redact("failed to resolve host 'Pw9@x@127.0.0.1'") == f"failed to resolve host '{MASK}@127.0.0.1'"
    assert redact("password retPw9 rejected") == f"password {MASK} rejected"
    assert redact("ret is fine, so is Pw9") == "ret is fine, so is Pw9", "fragments under 4 characters stay"
    register("ab1")  # short passwords: every whole occurrence
    assert redact("user ab1 with xab1y") == f"user {MASK} with x{MASK}y"
    forget_all()


@pytest.mark.postgres
def test_password_fragments_never_stored_or_printed(
    baseline: Path, pg_server, tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step error quoting part of a target's password (as a driver does with a mistyped URL) is
    masked in meta.job_runs, the log and the error line; an ambiguous URL is refused up front."""
    from pgserver import new_database

    forget_all()
    secret = "Xq7-retPw9secret"
    url = new_database(pg_server, "relpw", credentials=f"rechub:{secret}")
    job = write_job(baseline / "data" / "job-pw.toml", targets=["${REL_PG_URL}"])
    monkeypatch.setenv("REL_PG_URL", url)
    wh = baseline / "wh" / "rechub.duckdb"

    def leaky(self, con):
        raise UserError(f"failed to resolve host '{secret[4:]}@127.0.0.1' (also {secret[2:9]})")

    monkeypatch.setattr(Nightly, "publish", leaky)
    with tally.case("faults"):
        with pytest.raises(UserError) as err:
            run_in_process(wh, job, NEXT_DATE)
        stored = _query(
            wh, "SELECT coalesce(error, '') || details FROM meta.job_runs WHERE run_id = ?", [RUN]
        )
        logs = "".join(p.read_text() for p in (baseline / "wh" / "logs").glob(f"{RUN}*.log"))
        for text in [str(err.value), logs, *(r[0] for r in stored)]:
            for i in range(len(secret) - 3):
                assert secret[i : i + 4] not in text, (secret[i : i + 4], text[:300])
        assert "failed to resolve host '***@127.0.0.1'" in str(err.value)

        monkeypatch.setenv("REL_PG_URL", "postgresql://rechub:retPw9@x@127.0.0.1:1/db")
        res = _cli(wh, "nightly", "--job", str(job), "--run-date", NEXT_DATE.isoformat())
        assert res.exit_code == 2 and "ambiguous URL" in res.output and "%40" in res.output
        assert "retP" not in res.output and "Pw9@" not in res.output
        res = _cli(wh, "publish", "--to", "postgresql://rechub:retPw9@x@127.0.0.1:1/db")
        assert res.exit_code == 2 and "--to: ambiguous URL" in res.output and "etPw" not in res.output
    forget_all()


# ------------------------------------------------------------------------------------ item 12


def test_quiet_success_prints_nothing(baseline: Path, tally) -> None:
    """A stale lock (its process is gone) and C-level output on fd 2 during the run: with --quiet
    both go to the run's log, stdout and stderr stay empty, exit 0."""
    folder = baseline / "wh"
    (folder / "nightly.lock").write_text(
        json.dumps(
            {"pid": 2**22 + 17, "host": os.uname().nodename, "run_id": "nightly-dead", "started_at": "x"}
        )
    )
    with tally.case("faults"):
        proc = subprocess.run(
            [*CLI, "--warehouse", str(folder / "rechub.duckdb"), "nightly", "--job",
             str(baseline / "data" / "job.toml"), "--run-date", NEXT_DATE.isoformat(), "--quiet"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "RECHUB_FAULT": "score:stderr=C-LEVEL-NOISE"},
        )  # fmt: skip
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), proc
        log = "".join(p.read_text() for p in (folder / "logs").glob(f"{RUN}*.log"))
        assert "stale lock" in log and "C-LEVEL-NOISE" in log


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["sql", "SELECT 1"],
        ["runs"],
        ["build-features"],
        ["train", "--model", "dssm"],
        ["score"],
        ["evaluate"],
        ["nightly"],
        ["publish", "--to", "sqlite:///x.db"],
    ],
)
def test_a_missing_warehouse_is_an_error_not_a_new_one(tmp_path: Path, args: list[str], tally) -> None:
    wh = tmp_path / "typo" / "rechub.duckdb"
    with tally.case("inputs"):
        res = _cli(wh, *args)
        assert res.exit_code == 2 and res.output.startswith(f"error: no warehouse at {wh}"), res.output
        assert not wh.parent.exists(), "nothing was created"


def test_sql_and_status_read_an_analytics_file_alone(baseline: Path, tmp_path: Path) -> None:
    """Analysts may be given only analytics.duckdb (and its history folder): sql and status work."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(baseline / "wh" / "analytics.duckdb", shared / "analytics.duckdb")
    res = _cli(
        shared / "rechub.duckdb", "sql", "SELECT count(DISTINCT run_id) AS n FROM recommendations", "--json"
    )
    assert res.exit_code == 0 and json.loads(res.output) == [{"n": 1}], res.output
    assert _cli(shared / "rechub.duckdb", "status").exit_code == 0
    assert _cli(shared / "rechub.duckdb", "score").exit_code == 2, "scoring needs the warehouse itself"
    assert not (shared / "rechub.duckdb").exists()


def test_ingest_creates_a_warehouse(tmp_path: Path) -> None:
    events = tmp_path / "e.csv"
    make_events(events, n_users=3, n_items=4, seed=0, t0=1_700_000_000)
    wh = tmp_path / "new" / "rechub.duckdb"
    res = _cli(wh, "ingest", "interactions", str(events), "--user-col", "user_id", "--item-col", "item_id",
               "--time-col", "ts")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert wh.exists()


# ------------------------------------------------------------------------------------ item 11


def test_a_moved_warehouse_keeps_working_from_anywhere(
    baseline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tally
) -> None:
    """Move the whole warehouse folder after a nightly, then from another working directory: score,
    evaluate, sql (history included), status and the next nightly work, using the moved files."""
    wh_old = baseline / "wh"
    (stored,) = _query(wh_old / "rechub.duckdb", "SELECT artifact_path FROM meta.model_runs")[0]
    assert not Path(stored).is_absolute(), stored
    (hist,) = _query(wh_old / "analytics.duckdb", "SELECT path FROM history_files")[0]
    assert not Path(hist).is_absolute(), hist
    moved = tmp_path / "restored" / "wh"
    moved.parent.mkdir()
    shutil.move(wh_old, moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    wh = moved / "rechub.duckdb"
    with tally.case("faults"):
        res = _cli(
            wh, "sql", "SELECT run_id, count(*) AS n FROM recommendations_history GROUP BY 1", "--json"
        )
        assert res.exit_code == 0 and json.loads(res.output)[0]["run_id"] == BASE_RUN, res.output
        for args in (
            ["score", "--k", "3", "--index", "exact", "--run-id", "adhoc"],
            ["evaluate", "--k", "5", "--index", "exact"],
            ["status", "--json"],
            ["nightly", "--job", str(baseline / "data" / "job.toml"), "--run-date", NEXT_DATE.isoformat()],
        ):
            res = _cli(wh, *args)
            assert res.exit_code == 0, (args, res.output)
        assert not list(elsewhere.iterdir()), "nothing is written into the working directory"
        # plain DuckDB from another directory reads the history view after the publish
        con = duckdb.connect(str(moved / "analytics.duckdb"), read_only=True)
        try:
            runs = {
                r[0] for r in con.execute("SELECT DISTINCT run_id FROM recommendations_history").fetchall()
            }
        finally:
            con.close()
        assert runs == {BASE_RUN, RUN}
        assert not wh_old.exists(), "nothing was written at the old location"
