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
    make_events(data / "events-2.csv", n_users=300, n_items=45, seed=3, t0=1_800_000_000, per_user=(3, 9))
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
    make_events(data / "events-2.csv", n_users=30, n_items=45, seed=4, t0=1_800_000_000)
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


@pytest.mark.postgres
def test_postgres_down_then_back_during_the_nightly_publish(baseline, pg_url, pg_server, tally):
    wh = baseline / "wh" / "rechub.duckdb"
    data = baseline / "data"
    make_events(data / "events-2.csv", n_users=30, n_items=45, seed=5, t0=1_800_000_000)
    job = write_job(data / "job-pg.toml", targets=["${REL_PG_URL}"])
    env = {"REL_PG_URL": pg_url, "RECHUB_PUBLISH_RETRIES": "1", "RECHUB_PUBLISH_BACKOFF_S": "0.2"}
    run_id = f"nightly-{NEXT_DATE.isoformat()}"

    pg_server.stop()
    try:
        proc = run_process(wh, job, NEXT_DATE, env=env)
    finally:
        pg_server.start()
    tally["faults_injected"] += 1
    line = one_line_error(proc)
    assert (
        "s3cretpw" not in proc.stderr + proc.stdout and "***" in line and "gave up after 2 tries" in line
    ), line
    log_text = "".join(p.read_text() for p in (baseline / "wh" / "logs").glob(f"{run_id}*.log"))
    assert "s3cretpw" not in log_text
    analytics = snapshot_duckdb(baseline / "wh" / "analytics.duckdb")  # the DuckDB side still publishes
    assert {r[4] for r in analytics["recommendations"]} == {run_id}

    # Down when the publish starts, back once its first try has failed: the retries carry it through.
    pg_server.stop()
    env = {**env, "RECHUB_PUBLISH_RETRIES": "8", "RECHUB_PUBLISH_BACKOFF_S": "0.5"}
    child = start_process(wh, job, NEXT_DATE, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            logs = "".join(p.read_text(errors="replace") for p in (baseline / "wh" / "logs").glob("*.log"))
            if "retry 1/8" in logs:
                break
            time.sleep(0.1)
    finally:
        pg_server.start()
    out, err = child.communicate(timeout=120)
    proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    tally["faults_injected"] += 1
    assert proc.returncode == 0, proc.stderr[-3000:]
    server = snapshot_server(pg_url)
    assert {r[4] for r in server["recommendations"]} == {run_id}
    assert "s3cretpw" not in proc.stderr
    con = duckdb.connect(str(wh), read_only=True)
    try:
        details = con.execute(
            "SELECT details FROM meta.job_runs WHERE run_id = ? AND step = 'publish' AND status = 'success'",
            [run_id],
        ).fetchall()
    finally:
        con.close()
    attempts = [t["attempts"] for d in details for t in json.loads(d[0]).get("targets", [])]
    assert attempts and max(attempts) >= 2, attempts
