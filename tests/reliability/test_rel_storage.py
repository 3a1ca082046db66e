"""Storage and server faults: disk full, an unwritable warehouse folder, PostgreSQL down or coming
back during the nightly publish. Each: a clear one-line error and a non-zero exit, the previous
published results intact, and the next run completes."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
from rel_helpers import (
    NEXT_DATE,
    make_events,
    one_line_error,
    run_process,
    snapshot_duckdb,
    snapshot_server,
    start_process,
    write_job,
)

pytestmark = pytest.mark.slow


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@contextlib.contextmanager
def _small_disk(
    folder: Path, free_bytes: int
) -> Iterator[tuple[Path, Callable[[], None], Callable[[], None] | None]]:
    """A place with about `free_bytes` left: a tiny tmpfs when we may mount one, else RLIMIT_FSIZE.

    Yields (mount point, grow(), preexec for the child process)."""
    mnt = folder / "disk"
    mnt.mkdir()
    size_kb = (_size(folder / "case" / "wh") + free_bytes) // 1024 + 64
    mounted = (
        os.environ.get("RECHUB_TEST_NO_MOUNT") != "1"  # forces the RLIMIT_FSIZE path (to test it)
        and os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        if mounted:

            def grow() -> None:
                subprocess.run(["mount", "-o", "remount,size=256m", str(mnt)], check=True)

            yield mnt, grow, None
        else:
            limit = 256 * 1024  # no file may grow past 256 KiB: the warehouse's next write beyond fails

            def preexec() -> None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

            yield mnt, lambda: None, preexec
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_fails_cleanly_and_keeps_the_published_run(baseline, tmp_path, tally):
    data = baseline / "data"
    make_events(data / "events-2.csv", n_users=300, n_items=45, seed=3, t0=1_750_000_000, per_user=(3, 9))
    with _small_disk(tmp_path, free_bytes=400_000) as (mnt, grow, preexec):
        shutil.copytree(baseline / "wh", mnt / "wh")
        wh = mnt / "wh" / "rechub.duckdb"
        before = snapshot_duckdb(mnt / "wh" / "analytics.duckdb")
        with tally.case("faults"):
            proc = run_process(wh, data / "job.toml", NEXT_DATE, preexec_fn=preexec)
            line = one_line_error(proc)
            assert "space" in line.lower() or "too large" in line.lower() or "write" in line.lower(), line
            assert snapshot_duckdb(mnt / "wh" / "analytics.duckdb") == before
            assert not list((mnt / "wh").glob("analytics.duckdb.tmp-*")), "temporary analytics file left"

            grow()
            proc = run_process(wh, data / "job.toml", NEXT_DATE)
            assert proc.returncode == 0, proc.stderr[-3000:]
            after = snapshot_duckdb(mnt / "wh" / "analytics.duckdb")
            assert {r[4] for r in after["recommendations"]} == {f"nightly-{NEXT_DATE.isoformat()}"}
            old = [r for r in after["recommendations_history"] if r not in before["recommendations_history"]]
            assert len(after["recommendations_history"]) - len(old) == len(before["recommendations_history"])


def _immutable(path: Path) -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("chattr") is not None
        and subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode == 0
    )


def test_unwritable_warehouse_folder_fails_cleanly(baseline, tally):
    folder = baseline / "wh"
    before = snapshot_duckdb(folder / "analytics.duckdb")
    data = baseline / "data"
    make_events(data / "events-2.csv", n_users=30, n_items=45, seed=4, t0=1_750_000_000)
    if not _immutable(folder):  # not root / no chattr: nothing else stops root from writing a folder
        pytest.skip("cannot make a folder unwritable here (needs root and chattr +i)")
    with tally.case("faults"):
        try:
            proc = run_process(folder / "rechub.duckdb", data / "job.toml", NEXT_DATE)
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
        one_line_error(proc)
        assert snapshot_duckdb(folder / "analytics.duckdb") == before
        proc = run_process(folder / "rechub.duckdb", data / "job.toml", NEXT_DATE)
        assert proc.returncode == 0, proc.stderr[-3000:]


def test_warehouse_path_under_a_file_fails_cleanly(tmp_path, baseline, tally):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the warehouse folder should be\n")
    with tally.case("faults"):
        proc = run_process(blocker / "rechub.duckdb", baseline / "data" / "job.toml", NEXT_DATE)
        one_line_error(proc)


def _job_rows(wh: Path, run_id: str) -> list[tuple]:
    con = duckdb.connect(str(wh), read_only=True)
    try:
        return con.execute(
            "SELECT step, status, error, details FROM meta.job_runs WHERE run_id = ? ORDER BY step", [run_id]
        ).fetchall()
    finally:
        con.close()


def _published(url: str) -> set[str]:
    """Runs in a server's rechub_publish_log (empty if the table is not there yet)."""
    import sqlalchemy as sa

    engine = sa.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.pool.NullPool
    )
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("rechub_publish_log"):
                return set()
            return {r[0] for r in conn.execute(sa.text("SELECT run_id FROM rechub_publish_log"))}
    finally:
        engine.dispose()


def _logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (folder / "logs").glob("*.log"))


@pytest.mark.postgres
def test_postgres_down_fails_before_any_work_then_back_during_the_retries(baseline, pg_url, pg_server, tally):
    wh = baseline / "wh" / "rechub.duckdb"
    data = baseline / "data"
    make_events(data / "events-2.csv", n_users=30, n_items=45, seed=5, t0=1_750_000_000)
    job = write_job(data / "job-pg.toml", targets=["${REL_PG_URL}"])
    env = {"REL_PG_URL": pg_url, "RECHUB_PUBLISH_RETRIES": "1", "RECHUB_PUBLISH_BACKOFF_S": "0.2"}
    run_id = f"nightly-{NEXT_DATE.isoformat()}"
    before = snapshot_duckdb(baseline / "wh" / "analytics.duckdb")

    # Down for good: the target is checked before the lock, so the job fails before any step runs.
    with tally.case("faults"):
        pg_server.stop()
        try:
            proc = run_process(wh, job, NEXT_DATE, env=env)
        finally:
            pg_server.start()
        line = one_line_error(proc)
        assert proc.returncode == 2, proc.stderr
        assert "s3cretpw" not in proc.stderr + proc.stdout and "***" in line, line
        assert "publish.targets[0]" in line and "gave up after 2 tries" in line, line
        assert "s3cretpw" not in _logs(baseline / "wh")
        assert snapshot_duckdb(baseline / "wh" / "analytics.duckdb") == before, "nothing was published"
        assert _job_rows(wh, run_id) == [], "no step ran"

    # Down when the job starts, back once the first check has failed: the retries carry it through.
    with tally.case("faults"):
        pg_server.stop()
        env = {**env, "RECHUB_PUBLISH_RETRIES": "8", "RECHUB_PUBLISH_BACKOFF_S": "0.5"}
        child = start_process(wh, job, NEXT_DATE, env=env)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and child.poll() is None:
                if "retry 1/8" in _logs(baseline / "wh"):
                    break
                time.sleep(0.1)
        finally:
            pg_server.start()
        _, err = child.communicate(timeout=180)
        assert child.returncode == 0, err[-3000:]
        server = snapshot_server(pg_url)
        assert {r[4] for r in server["recommendations"]} == {run_id}
        assert "s3cretpw" not in err + _logs(baseline / "wh")


@pytest.mark.postgres
def test_one_target_failing_is_named_and_the_rerun_publishes_only_to_it(baseline, pg_server, tally):
    """Two targets; the second fails while loading. The job fails naming which targets have the run;
    the rerun of the date leaves the first untouched (same content: nothing to do) and fills the second."""
    from pgserver import new_database

    wh = baseline / "wh" / "rechub.duckdb"
    data = baseline / "data"
    first = new_database(pg_server, "relA", credentials="rechub:s3cretpw")
    second = new_database(pg_server, "relB", credentials="rechub:s3cretpw")
    job = write_job(data / "job-two.toml", targets=["${REL_PG_A}", "${REL_PG_B}"])
    env = {"REL_PG_A": first, "REL_PG_B": second, "RECHUB_PUBLISH_RETRIES": "0"}
    run_id = f"nightly-{NEXT_DATE.isoformat()}"
    make_events(data / "events-2.csv", n_users=30, n_items=45, seed=6, t0=1_750_000_000)
    with tally.case("faults"):
        second_db = second.rsplit("/", 1)[1]
        proc = run_process(wh, job, NEXT_DATE, env={**env, "RECHUB_PUBLISH_FAULT": f"loaded@{second_db}"})
        line = one_line_error(proc)
        assert proc.returncode == 1
        assert "published to analytics, publish.targets[0]" in line and "not to publish.targets[1]" in line, (
            line
        )
        assert "s3cretpw" not in proc.stderr
        analytics = snapshot_duckdb(baseline / "wh" / "analytics.duckdb")
        assert {r[4] for r in analytics["recommendations"]} == {run_id}
        assert {r[4] for r in snapshot_server(first)["recommendations"]} == {run_id}
        assert run_id not in _published(second)
        publish = {step: (status, json.loads(details)) for step, status, _, details in _job_rows(wh, run_id)}
        assert publish["publish"][0] == "failed"
        assert [t["status"] for t in publish["publish"][1]["targets"]] == ["published", "failed"]
        logged_a = snapshot_server(first)["rechub_publish_log"]

        proc = run_process(wh, job, NEXT_DATE, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert snapshot_server(first)["rechub_publish_log"] == logged_a, (
            "the first target is not published again"
        )
        assert {r[4] for r in snapshot_server(second)["recommendations"]} == {run_id}
        publish = {step: json.loads(details) for step, _, _, details in _job_rows(wh, run_id)}
        assert [t["status"] for t in publish["publish"]["targets"]] == ["unchanged", "published"]


@pytest.mark.postgres
def test_a_wrong_password_is_not_retried(baseline, pg_server, tally):
    """A role that must authenticate with a password (scram): a wrong one fails at once, one line, masked."""
    import sqlalchemy as sa

    admin = sa.create_engine(pg_server.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text("DROP ROLE IF EXISTS rel_pw"))
        conn.execute(sa.text("CREATE ROLE rel_pw LOGIN PASSWORD 'right-Pw-123'"))
    hba = pg_server.data / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("host all rel_pw 127.0.0.1/32 scram-sha-256\n" + original)
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_reload_conf()"))
    try:
        wh = baseline / "wh" / "rechub.duckdb"
        url = f"postgresql://rel_pw:wrong-Pw-456@127.0.0.1:{pg_server.port}/rechub"
        job = write_job(baseline / "data" / "job-pw.toml", targets=["${REL_PG_URL}"])
        env = {"REL_PG_URL": url, "RECHUB_PUBLISH_RETRIES": "5", "RECHUB_PUBLISH_BACKOFF_S": "5"}
        with tally.case("faults"):
            started = time.monotonic()
            proc = run_process(wh, job, NEXT_DATE, env=env)
            line = one_line_error(proc)
            assert time.monotonic() - started < 30, "a wrong password must not be retried (5 s, 10 s, ...)"
            assert "password authentication failed" in line and "not retried" in line, line
            assert "wrong-Pw-456" not in proc.stderr + _logs(baseline / "wh") and "retry" not in _logs(
                baseline / "wh"
            )
    finally:
        hba.write_text(original)
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_reload_conf()"))
        admin.dispose()
