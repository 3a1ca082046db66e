"""Helpers for the reliability suite: data and job files, running the nightly (in-process, or as
a real process that a fault can SIGKILL), and snapshots of what analysts can see."""

from __future__ import annotations

import csv
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import numpy as np
import sqlalchemy as sa

BASE_DATE = dt.date(2026, 1, 1)
NEXT_DATE = dt.date(2026, 1, 2)

JOB = """
[job]
name = "reliability"

[[ingest.sources]]
kind = "interactions"
path = "events-*.csv"
user_col = "user_id"
item_col = "item_id"
time_col = "ts"
options = {{ time_format = "{time_format}" }}
{source_keys}

[build]
max_seq_len = 10
min_seq_len = {min_seq_len}

[train]
policy = "if-missing"
model = "dssm"
params = {{ epochs = 1, batch_size = 256, embed_dim = 8 }}

[score]
k = 5
index = "{index}"
[score.annoy]
sample_users = 60

[evaluate]
ks = [5]
indexes = ["exact"]
popularity = false

[publish]
keep_runs = 5
report = false  # the HTML page has its own tests (tests/report); here it would be most of each night
{targets}
"""


def write_job(
    path: Path,
    *,
    targets: Sequence[str] = (),
    time_format: str = "seconds",
    min_seq_len: int = 3,
    source_keys: str = "",
    extra: str = "",
    index: str = "exact",
) -> Path:
    """The reliability job; `source_keys` go into the ingest source, `extra` at the end of the file."""
    quoted = ", ".join(f'"{t}"' for t in targets)
    text = (
        JOB.format(
            time_format=time_format,
            min_seq_len=min_seq_len,
            targets=f"targets = [{quoted}]" if targets else "",
            source_keys=source_keys,
            index=index,
        )
        + extra
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_events(
    path: Path,
    *,
    n_users: int,
    n_items: int,
    seed: int,
    t0: int,
    per_user: tuple[int, int] = (4, 12),
    user_prefix: str = "u",
) -> int:
    """A small interactions CSV (user_id,item_id,ts seconds); returns its data row count."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for j in range(int(rng.integers(*per_user))):
            rows.append((f"{user_prefix}{u}", f"i{int(rng.integers(0, n_items))}", t0 + u * 1000 + j * 60))
    write_rows(path, rows)
    return len(rows)


def write_rows(
    path: Path, rows: Sequence[tuple], header: Sequence[str] = ("user_id", "item_id", "ts")
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def run_in_process(warehouse: Path, job: Path, date: dt.date):
    """The nightly in this process (fast: torch imported once). Raises UserError on a clean failure."""
    from rechub_store.jobs.config import JobConfig
    from rechub_store.jobs.job import run_nightly
    from rechub_store.warehouse import Warehouse

    return run_nightly(Warehouse(warehouse, threads=1), JobConfig.load(job), date)


_SHIM = """
import sys, datetime as dt
from rechub_store.errors import UserError
from rechub_store.jobs.config import JobConfig
from rechub_store.jobs.job import run_nightly
from rechub_store.settings import Settings
try:
    warehouse = Settings.from_env(warehouse_path=sys.argv[1]).warehouse()
    run_nightly(warehouse, JobConfig.load(sys.argv[2]), dt.date.fromisoformat(sys.argv[3]))
except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def _cli_has_nightly() -> bool:
    from rechub_store.cli import app

    return any(
        c.name == "nightly" or (c.callback and c.callback.__name__ == "nightly")
        for c in app.registered_commands
    )


def nightly_argv(warehouse: Path, job: Path, date: dt.date) -> list[str]:
    """argv of `rechub-store nightly` (the core function behind the same rendering until the CLI lands)."""
    if _cli_has_nightly():
        cli = "from rechub_store.cli import main; main()"
        return [
            sys.executable,
            "-c",
            cli,
            "--warehouse",
            str(warehouse),
            "nightly",
            "--job",
            str(job),
            "--run-date",
            date.isoformat(),
        ]
    return [sys.executable, "-c", _SHIM, str(warehouse), str(job), date.isoformat()]


def start_process(
    warehouse: Path,
    job: Path,
    date: dt.date,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[str]:
    full_env = {**os.environ, "RECHUB_THREADS": "1", **(env or {})}
    argv = nightly_argv(warehouse, job, date)
    return subprocess.Popen(
        argv, env=full_env, text=True, preexec_fn=preexec_fn, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def run_process(
    warehouse: Path,
    job: Path,
    date: dt.date,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """`rechub-store nightly` as a real process (a fault can SIGKILL it)."""
    proc = start_process(warehouse, job, date, env, preexec_fn)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The process failed cleanly: non-zero exit, no traceback, exactly one `error:` line."""
    assert proc.returncode not in (0, -9), proc
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


RESULT_TABLES = ("recommendations", "recommendations_history", "evaluation_metrics")


def snapshot_duckdb(path: Path, schema: str = "main") -> dict[str, list[tuple]]:
    """Every row analysts can see in the result tables of a DuckDB file, sorted."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        for table in RESULT_TABLES:
            exists = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                [schema, table],
            ).fetchall()[0][0]
            out[table] = (
                sorted(con.execute(f"SELECT * FROM {schema}.{table}").fetchall(), key=repr) if exists else []
            )
        return out
    finally:
        con.close()


def snapshot_server(url: str) -> dict[str, list[tuple]]:
    engine = sa.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.pool.NullPool
    )
    try:
        with engine.connect() as conn:
            return {
                t: sorted((tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t}"))), key=repr)
                for t in (
                    "recommendations",
                    "recommendations_history",
                    "evaluation_metrics",
                    "rechub_publish_log",
                )
            }
    finally:
        engine.dispose()
