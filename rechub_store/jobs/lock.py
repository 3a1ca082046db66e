"""The nightly lock: never two jobs on one warehouse at once.

A lock file (`<warehouse folder>/nightly.lock`, created with O_EXCL semantics by linking a complete
temp file) holds pid, host, process start time and run id. A lock whose process is gone (a killed
run) is recovered with a log line; a live one makes the second run exit 3 with "already running".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rechub_store.errors import AlreadyRunning, UserError
from rechub_store.results.tables import utcnow
from rechub_store.warehouse import Warehouse

log = logging.getLogger(__name__)

LOCK_FILE = "nightly.lock"


def unwritable(folder: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write the warehouse folder {folder}: {exc.strerror or exc}")


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
            raise unwritable(self.path.parent, exc) from exc
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
                raise unwritable(self.path.parent, exc) from exc
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
