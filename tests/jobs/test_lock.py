"""The nightly lock: exclusive, recovers a lock left by a dead process, refuses a live holder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rechub_store.errors import AlreadyRunning
from rechub_store.faults import fault_point
from rechub_store.jobs.lock import NightlyLock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    path = tmp_path / "nightly.lock"
    with NightlyLock(path, "nightly-2026-01-01") as lock:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["run_id"] == "nightly-2026-01-01"
        assert lock.recovered is None
        with pytest.raises(AlreadyRunning, match="already running") as err:
            NightlyLock(path, "nightly-2026-01-02").acquire()
        assert err.value.exit_code == 3 and str(path) in str(err.value)
    assert not path.exists()


def test_stale_lock_of_a_dead_process_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "nightly.lock"
    stale = {
        "pid": dead_pid(),
        "host": socket.gethostname(),
        "started_at": "2026-01-01T00:00:00",
        "run_id": "old",
    }
    path.write_text(json.dumps(stale))
    with NightlyLock(path, "new") as lock:
        assert lock.recovered == stale
        assert json.loads(path.read_text())["run_id"] == "new"


def test_zombie_and_reused_pids_count_as_dead(tmp_path: Path) -> None:
    path = tmp_path / "nightly.lock"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            pass  # exited but not reaped yet: a zombie, which os.kill(pid, 0) would call alive
        path.write_text(json.dumps({"pid": zombie.pid, "host": socket.gethostname(), "run_id": "z"}))
        assert NightlyLock(path, "new").acquire().recovered["run_id"] == "z"
    finally:
        zombie.wait()
    path.unlink()
    # our own pid, but a different process start time: the pid was reused by another process
    path.write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run_id": "r", "proc_start": "1"})
    )
    assert NightlyLock(path, "new").acquire().recovered["run_id"] == "r"


def test_other_host_and_live_process_are_not_stale(tmp_path: Path) -> None:
    path = tmp_path / "nightly.lock"
    path.write_text(json.dumps({"pid": dead_pid(), "host": "another-host", "run_id": "x"}))
    with pytest.raises(AlreadyRunning, match="another-host"):
        NightlyLock(path, "new").acquire()
    path.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "run_id": "init"}))
    with pytest.raises(AlreadyRunning, match="pid 1 "):
        NightlyLock(path, "new").acquire()


def test_fault_point_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    fault_point("score")  # unset: nothing happens
    monkeypatch.setenv("RECHUB_FAULT", "score:fail")
    fault_point("publish")  # another point: nothing happens
    with pytest.raises(RuntimeError, match="fault injected at score"):
        fault_point("score")
    monkeypatch.setenv("RECHUB_FAULT", "score:sleep=0")
    fault_point("score")
