"""A throwaway PostgreSQL cluster for tests and benchmarks: tmp dir, 127.0.0.1, free port, trust auth.

initdb refuses to run as root, so as root the cluster is created and run as the `postgres` system
user (present wherever Debian's `postgresql` package is installed), else as `nobody`, in a
temporary folder owned by that user. As any other user it runs as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

REQUIRE_ENV = "RECHUB_REQUIRE_POSTGRES"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or the server would not start here."""


def find_bindir() -> Path:
    """`RECHUB_PG_BINDIR`, else the newest /usr/lib/postgresql/<v>/bin, else `initdb` on PATH."""
    env = os.environ.get("RECHUB_PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    if which:
        return Path(which).parent
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb) found; install Debian's `postgresql`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """Start/stop/restart a private cluster; `url` is a psycopg 3 SQLAlchemy URL for database `rechub`."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.bindir = find_bindir()
        self.port = free_port()
        self.settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        self.settings.update(settings or {})
        self.root = Path(tempfile.mkdtemp(prefix="rechub-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self._user: tuple[int, int] | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    pw = pwd.getpwnam(name)
                    self._user = (pw.pw_uid, pw.pw_gid)
                    break
            if self._user is None:
                raise PostgresUnavailable(
                    "running as root and no unprivileged user (postgres/nobody) to run initdb"
                )
            os.chown(self.root, *self._user)
        os.chmod(self.root, 0o700)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://rechub@127.0.0.1:{self.port}/rechub"

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs = {"user": self._user[0], "group": self._user[1], "extra_groups": []}
        env = {**os.environ, "HOME": str(self.root), "LC_ALL": "C.UTF-8"}
        for var in ("PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGPASSWORD", "PGDATABASE"):
            env.pop(var, None)
        proc = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )
        if check and proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            log_tail = (
                self.logfile.read_text(errors="replace").splitlines()[-5:] if self.logfile.exists() else []
            )
            raise PostgresUnavailable(f"{args[0]} failed: {' | '.join(tail + log_tail)}")
        return proc

    def start(self) -> LocalPostgres:
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "rechub",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            )
            opts = "\n".join(f"{k} = '{v}'" for k, v in self.settings.items())
            with open(self.data / "postgresql.conf", "a") as fh:
                fh.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = ''\n{opts}\n"
                )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start", timeout=90
        )
        if not self._has_db:
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "rechub", "rechub")
            self._has_db = True
        return self

    _has_db = False

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


_shared: LocalPostgres | None = None
_refs = 0


def acquire() -> LocalPostgres:
    """The session's shared server (started on first use); raises PostgresUnavailable."""
    global _shared, _refs
    if _shared is None:
        server = LocalPostgres()
        try:
            server.start()
        except Exception:
            server.destroy()
            raise
        _shared = server
    _refs += 1
    return _shared


def release() -> None:
    global _shared, _refs
    _refs -= 1
    if _refs <= 0 and _shared is not None:
        _shared.destroy()
        _shared = None


_db_counter = iter(range(1, 1_000_000))


def new_database(server: LocalPostgres, prefix: str, credentials: str | None = None) -> str:
    """Create a fresh, empty database so tests never see each other's tables; return its URL.

    `credentials` ("user:password") go into the URL as given (trust auth ignores the password),
    which lets tests check that passwords are masked.
    """
    import sqlalchemy as sa

    if not server.running():
        server.start()
    name = f"{prefix}{os.getpid()}_{next(_db_counter)}"
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    if credentials is None:
        return server.url.rsplit("/", 1)[0] + f"/{name}"
    return f"postgresql://{credentials}@127.0.0.1:{server.port}/{name}"
