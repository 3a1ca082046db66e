"""Fault injection: the one hook tests (and people rehearsing failures by hand) use to make a job
pause, fail or die at a named point.

`RECHUB_FAULT=<point>[@<text>][:<action>]`. Points: a nightly step name (`ingest`, `build`, `train`,
`score`, `evaluate`, `publish`; fires when the step starts), `publish-replace` (the new analytics
file is complete, not yet renamed), `job-record` (writing a step's end to meta.job_runs), and the
server publish's `loaded` (a target's staging tables are loaded) and `before-swap` (just before they
replace the published ones). `@<text>` fires only where the target (a publish URL) contains <text>.
Actions: `fail` (the default: raise an error), `sleep[=SECONDS]` (print "fault: pausing at <point>"
to the terminal, then sleep; default 600 s), `kill` (SIGKILL itself), `enospc` (fail as a full disk
does), `stderr=TEXT` (write TEXT to file descriptor 2 directly, as C code does).
`RECHUB_PUBLISH_FAULT` is read the same way (its older name for the server publish's points).

The variables are read where the fault fires, not through the settings object: a fault must reach
a process the test starts, at a point deep inside a step, without being a parameter of the product.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from rechub_store.errors import UserError

FAULT_ENV = "RECHUB_FAULT"
PUBLISH_FAULT_ENV = "RECHUB_PUBLISH_FAULT"

_console_fd: int | None = None  # the terminal's stderr while a quiet run sends fd 2 to its log


def set_console(fd: int | None) -> None:
    """Where fault messages go while file descriptor 2 is redirected to a run's log (None: fd 2)."""
    global _console_fd
    _console_fd = fd


def console(message: str) -> None:
    """Fault messages go to the terminal even when --quiet sends everything else to the log."""
    os.write(_console_fd if _console_fd is not None else 2, (message + "\n").encode())


def fault_point(point: str, target: str = "") -> None:
    """Act on a fault variable that names this point (see the module docstring)."""
    for var in (FAULT_ENV, PUBLISH_FAULT_ENV):
        spec = os.environ.get(var, "")
        where, _, action = spec.partition(":")
        name, _, only = where.partition("@")
        if spec and name == point and not (only and only not in target):
            _act(point, action or "fail", f"{var}={spec}")


def _act(point: str, action: str, spec: str) -> None:
    if action.startswith("sleep"):
        seconds = float(action.partition("=")[2] or 600)
        console(f"fault: pausing at {point} for {seconds:g}s (pid {os.getpid()})")
        time.sleep(seconds)
    elif action == "fail":
        raise RuntimeError(f"fault injected at {point} ({spec})")
    elif action == "kill":
        console(f"fault: killing pid {os.getpid()} at {point}")
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (fault injected at {point})")
    elif action.startswith("stderr="):
        os.write(2, action.partition("=")[2].encode() + b"\n")  # as a C library would: fd 2, no sys.stderr
    else:
        raise UserError(f"{spec!r}: action must be sleep[=SECONDS], fail, kill, enospc or stderr=TEXT")
