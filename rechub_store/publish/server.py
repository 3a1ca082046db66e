"""Publish a run's results from the warehouse to a server database (PostgreSQL first).

Why it is built this way:
- Analysts read `recommendations` on the server while the batch host publishes. The current run
  lives in a fresh physical table (`recommendations__r<token>`) loaded, indexed and checked in ONE
  server transaction; the last statement repoints the `recommendations` VIEW to it and drops the old
  table. Readers see the old run or the new one, never a mix, and wait only for that final repoint
  (measured as `swap_seconds`). A failure anywhere rolls the whole transaction back, so the server's
  current tables stay as they were.
- PostgreSQL is loaded with COPY (CSV written by Arrow's C++ writer from DuckDB record batches), never
  row INSERTs. Any other SQLAlchemy URL (e.g. `sqlite:///file`) gets the same semantics through
  executemany, which is fine for small tests and tools but not for 100M rows.
- `rechub_publish_log` remembers what was published (run id + a fingerprint of its rows), so
  publishing the same run again is a no-op, and retention drops history runs by index prefix.
- Connection failures are retried with exponential backoff; every message, log line and meta row
  shows the URL with its password masked (`mask_url`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import psycopg
import psycopg.sql
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import JSONB

from rechub_store.errors import UserError
from rechub_store.faults import fault_point
from rechub_store.redact import redact, register
from rechub_store.results.tables import LEGACY_SEEN_FILTER
from rechub_store.schema import (
    EVALUATION_METRICS,
    JOB_RUNS,
    MODEL_RUNS,
    RECOMMENDATIONS,
    RECOMMENDATIONS_HISTORY,
)
from rechub_store.schema import Table as SchemaTable
from rechub_store.warehouse import Warehouse, column_names, quote_ident, table_exists

log = logging.getLogger(__name__)

BATCH_ROWS = 250_000  # rows per Arrow record batch / COPY chunk
LOCK_TIMEOUT_MS = 500  # longest a single swap attempt makes readers queue behind it

# the server tables are derived from the one schema source (`rechub_store.schema`)
REC_COLUMNS = RECOMMENDATIONS.names
METRIC_COLUMNS = EVALUATION_METRICS.names
METRIC_KEY = EVALUATION_METRICS.key
MODEL_RUN_COLUMNS = MODEL_RUNS.names
JOB_RUN_COLUMNS = JOB_RUNS.names


# ---------------------------------------------------------------------------------------------- URLs

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/?#@:\s]*:)(?P<pw>[^/?#\s]*)@")
_PARAM_PASSWORD = re.compile(r"(?i)\b(password|pass|pwd)=([^&\s]*)")


def mask_url(url: str) -> str:
    """The URL with any password (in the user-info part or a `password=` parameter) shown as ***."""
    text = str(url)
    with contextlib.suppress(Exception):
        parsed = sa.make_url(text)
        if parsed.password is not None:
            text = parsed.render_as_string(hide_password=True)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", text)
    return redact(_PARAM_PASSWORD.sub(lambda m: m.group(1) + "=***", text)) or ""


def _mask_text(text: str, url: str) -> str:
    """Mask the URL, its password and any fragment of the password wherever they appear in a message."""
    out = text.replace(url, mask_url(url))
    out = _PARAM_PASSWORD.sub(
        lambda m: m.group(1) + "=***", _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", out)
    )
    return redact(out) or ""


def _register_secrets(url: str, parsed: sa.URL | None) -> None:
    """Make `redact` mask this URL's password from now on, however the URL was meant to be split.

    Registered: the password SQLAlchemy parsed, `password=` parameters, and (for a URL with more
    than one `@`) everything between the user name's `:` and the last `@`, the longest reading.
    """
    if parsed is not None:
        register(parsed.password)
        for key, value in parsed.query.items():
            if key.lower() in ("password", "pass", "pwd"):
                for item in value if isinstance(value, tuple) else (value,):
                    register(item)
    for match in _PARAM_PASSWORD.finditer(url):
        register(match.group(2))
    match = _URL_PASSWORD.search(url)
    if match:
        register(match.group("pw"))


def parse_url(url: str, where: str = "database URL") -> sa.URL:
    """Parse and check a SQLAlchemy URL; plain `postgresql://` / `postgres://` mean psycopg 3.

    Its password is registered for masking first (see `rechub_store.redact`). A URL with more
    than one `@` before its path (an unencoded `@` in the password) is ambiguous: drivers would
    read part of the password as the host name and quote it in errors, so it is refused with a
    hint to percent-encode. `where` names the option or job key in the message.
    """
    text = str(url)
    parsed: sa.URL | None = None
    try:
        parsed = sa.make_url(text)
    except Exception:
        _register_secrets(text, None)
        raise UserError(
            f"{where}: not a database URL: {mask_url(text)} (expected e.g. postgresql://user@host/db)"
        ) from None
    _register_secrets(text, parsed)
    if (parsed.username is not None or parsed.password is not None) and (
        "@" in (parsed.host or "") or "@" in (parsed.database or "")
    ):
        raise UserError(
            f"{where}: ambiguous URL {mask_url(text)}: more than one '@' before the host "
            "(percent-encode an '@' in the user name or password as %40)"
        )
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


# -------------------------------------------------------------------------------------------- result


@dataclass
class PublishResult:
    """What one publish did; `as_dict()` is what `--json` prints and meta.job_runs stores."""

    run_id: str
    target: str  # masked URL
    status: str  # published | unchanged
    rows: dict[str, int] = field(default_factory=dict)
    table: str = ""  # the physical table behind the `recommendations` view
    seconds: float = 0.0
    load_seconds: float = 0.0  # COPY of the recommendations rows
    swap_seconds: float = 0.0  # readers of `recommendations` waited at most this long
    rows_per_second: float = 0.0
    attempts: int = 1
    dropped_runs: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds: copy, keys, history, metadata, swap

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ tables


@dataclass(frozen=True)
class _Names:
    """Validated server-side names for one (schema, prefix) target."""

    schema: str | None
    prefix: str

    def name(self, base: str) -> str:
        full = f"{self.prefix}{base}"
        quote_ident(full)  # validates (letters, digits, _; at most 63 characters)
        return full

    def qualified(self, conn: sa.Connection, base: str) -> str:
        return self.qualify(conn, self.name(base))

    def qualify(self, conn: sa.Connection, full: str) -> str:
        """A schema-qualified, quoted name for an already-prefixed table name."""
        quote_ident(full)
        prep = conn.dialect.identifier_preparer
        table = prep.quote_identifier(full)
        return f"{prep.quote_identifier(self.schema)}.{table}" if self.schema else table


def _json_type() -> sa.types.TypeEngine:
    return sa.Text().with_variant(JSONB(), "postgresql")


def _id_type() -> sa.types.TypeEngine:
    """Ids compare byte-wise (COLLATE "C") on PostgreSQL: keys build several times faster than under a
    linguistic collation, and ids have no natural language order anyway."""
    return sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def _sa_type(kind: str) -> sa.types.TypeEngine:
    return {
        "id": _id_type(),
        "text": sa.Text(),
        "int": sa.Integer(),
        "bigint": sa.BigInteger(),
        "double": sa.Double(),
        "timestamp": sa.DateTime(),
        "json": _json_type(),
    }[kind]


def _sa_columns(table: SchemaTable, **column_kw: dict[str, Any]) -> list[sa.Column]:
    """The table's columns from the schema source (`column_kw`: extra arguments per column name)."""
    return [
        sa.Column(c.name, _sa_type(c.type), nullable=c.nullable, **column_kw.get(c.name, {}))
        for c in table.columns
    ]


def _rec_table(md: sa.MetaData, name: str, schema: str | None, *, with_pk: bool, **kw: Any) -> sa.Table:
    source = RECOMMENDATIONS_HISTORY if name.endswith("recommendations_history") else RECOMMENDATIONS
    extra: list[Any] = [sa.PrimaryKeyConstraint(*source.key, name=f"{name}_pkey")] if with_pk else []
    return sa.Table(name, md, *_sa_columns(source), *extra, schema=schema, **kw)


def _tables(names: _Names, live: str | None, *, pg: bool) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    md = sa.MetaData()
    s = names.schema
    hist = names.name("recommendations_history")
    t: dict[str, sa.Table] = {
        # PostgreSQL: one LIST partition per run, and that partition is the very table the
        # `recommendations` view shows: a run is loaded once, and retention drops whole partitions.
        "history": _rec_table(
            md, hist, s, with_pk=True, **({"postgresql_partition_by": "LIST (run_id)"} if pg else {})
        ),
        "metrics": sa.Table(
            names.name("evaluation_metrics"),
            md,
            *_sa_columns(EVALUATION_METRICS),
            sa.PrimaryKeyConstraint(*METRIC_KEY, name=f"{names.name('evaluation_metrics')}_pkey"),
            schema=s,
        ),
        "model_runs": sa.Table(
            names.name("model_runs"),
            md,
            *_sa_columns(MODEL_RUNS, model_run_id={"primary_key": True}),
            schema=s,
        ),
        "job_runs": sa.Table(
            names.name("job_runs"), md, *_sa_columns(JOB_RUNS, run_id={"index": True}), schema=s
        ),
        "log": sa.Table(
            names.name("rechub_publish_log"),
            md,
            sa.Column("run_id", sa.Text, primary_key=True),
            sa.Column("fingerprint", sa.Text, nullable=False),
            sa.Column("model_run_id", sa.Text),
            sa.Column("rows", sa.BigInteger),
            sa.Column("generated_at", sa.DateTime),
            sa.Column("published_at", sa.DateTime),
            sa.Column("seconds", sa.Double),
            sa.Column("live_table", sa.Text),
            sa.Column("in_history", sa.Boolean, nullable=False),
            schema=s,
        ),
    }
    if live is not None:
        # PostgreSQL: primary key and index are built after COPY (much faster than during it).
        t["live"] = _rec_table(md, live, s, with_pk=not pg)
        if not pg:
            sa.Index(f"{live}_item_id", t["live"].c.item_id)
    return md, t


# ------------------------------------------------------------------------------------ DuckDB source


@dataclass
class _Source:
    """The run to publish, as DuckDB queries over the warehouse's working-copy tables."""

    con: duckdb.DuckDBPyConnection
    run_id: str
    rec_table: str  # main.recommendations or main.recommendations_history
    has_metrics: bool
    metric_columns: str  # the SELECT list of evaluation_metrics in METRIC_COLUMNS order
    rows: int
    model_run_id: str | None
    generated_at: datetime | None
    fingerprint: str
    _cursors: list[duckdb.DuckDBPyConnection] = field(default_factory=list)

    def reader(self, kind: str) -> pa.RecordBatchReader:
        """Stream one table's rows for this run as Arrow record batches, columns in server order."""
        recs = f"SELECT {', '.join(REC_COLUMNS)} FROM {self.rec_table} WHERE run_id = $run"
        metrics = (
            f"SELECT {self.metric_columns} FROM main.evaluation_metrics WHERE run_id = $run"
            if self.has_metrics
            else "SELECT NULL::VARCHAR AS run_id LIMIT 0"
        )
        mask = r"regexp_replace(CAST({0} AS VARCHAR), '(://[^/?#@:\s]*:)[^/?#\s@]*@', '\1***@', 'g')"
        queries = {
            "recommendations": recs,
            "evaluation_metrics": metrics,
            "model_runs": (
                "SELECT model_run_id, model, status, CAST(params AS VARCHAR), build_id, "
                "CAST(vocab_sizes AS VARCHAR), CAST(history AS VARCHAR), best_epoch, best_metric, "
                "artifact_path, wall_seconds, created_at, finished_at, error FROM meta.model_runs "
                f"WHERE model_run_id IN (SELECT DISTINCT model_run_id FROM {self.rec_table} "
                "WHERE run_id = $run"
                + (
                    " UNION SELECT model_run_id FROM main.evaluation_metrics WHERE run_id = $run)"
                    if self.has_metrics
                    else ")"
                )
            ),
            "job_runs": (
                "SELECT run_id, job, step, status, started_at, finished_at, seconds, rows, "
                f"{mask.format('details')}, {mask.format('error')} FROM meta.job_runs WHERE run_id = $run"
            ),
        }
        # A cursor of its own: DuckDB refuses new work on a connection with an unfinished result.
        cursor = self.con.cursor()
        self._cursors.append(cursor)
        return cursor.sql(queries[kind], params={"run": self.run_id}).to_arrow_reader(BATCH_ROWS)

    def close(self) -> None:
        for cursor in self._cursors:
            with contextlib.suppress(duckdb.Error):
                cursor.close()
        self._cursors.clear()


# rows, model, newest timestamp and an order-independent checksum of the content: a rerun of the same
# run_id that changed anything gets published again, the very same content is a no-op (the time
# stamps are left out of the fingerprint, so a rerun that recomputed identical results publishes
# only to the targets that do not have them yet).
_STATS = "count(*), min(model_run_id), max(generated_at), sum(hash(user_id, item_id, rank, score))"
_METRIC_STATS = (
    'count(*), sum(hash(model_run_id, split, metric, k, value, n_users, "index", seen_filter, slice))'
)


def _open_source(con: duckdb.DuckDBPyConnection, run_id: str | None) -> _Source:
    """Find the run (default: the current one in main.recommendations) and fingerprint it."""
    if not table_exists(con, "main.recommendations"):
        raise UserError(
            "nothing to publish: main.recommendations does not exist (run `rechub-store nightly` first)"
        )
    if run_id is None:
        row = con.execute(
            "SELECT run_id FROM main.recommendations GROUP BY run_id "
            "ORDER BY max(generated_at) DESC NULLS LAST, "
            "run_id DESC LIMIT 1"
        ).fetchall()
        if not row:
            raise UserError(
                "nothing to publish: main.recommendations is empty (run `rechub-store nightly` first)"
            )
        run_id = str(row[0][0])
    table = "main.recommendations"
    stats = con.execute(
        f"SELECT {_STATS} FROM main.recommendations WHERE run_id = ?",
        [run_id],
    ).fetchall()[0]
    if (not stats or not stats[0]) and table_exists(con, "main.recommendations_history"):
        table = "main.recommendations_history"
        stats = con.execute(
            f"SELECT {_STATS} FROM main.recommendations_history WHERE run_id = ?",
            [run_id],
        ).fetchall()[0]
    if not stats or not stats[0]:
        raise UserError(f"run {run_id!r} not found in main.recommendations or main.recommendations_history")
    has_metrics = table_exists(con, "main.evaluation_metrics")
    metric_select = _metric_select(con) if has_metrics else ""
    mstats = (0, None)
    if has_metrics:
        # over the columns as sent, so a legacy working copy fingerprints like its published rows
        mstats = con.execute(
            f"SELECT {_METRIC_STATS} FROM (SELECT {metric_select} FROM main.evaluation_metrics "
            "WHERE run_id = ?)",
            [run_id],
        ).fetchall()[0]
    rows, model_run_id, generated_at, checksum = stats
    fingerprint = f"rows={rows};model={model_run_id};sum={checksum};metrics={mstats[0]}:{mstats[1]}"
    return _Source(
        con, run_id, table, has_metrics, metric_select, int(rows), model_run_id, generated_at, fingerprint
    )


def _metric_select(con: duckdb.DuckDBPyConnection) -> str:
    """The evaluation_metrics columns to send, in METRIC_COLUMNS order; a warehouse table from before
    the evaluation protocol was recorded sends its rows as `legacy` ones (see analytics.py)."""
    have = column_names(con, "main.evaluation_metrics")
    legacy = {"seen_filter": f"'{LEGACY_SEEN_FILTER}'", "slice": "'all'", "n_repeat_targets": "NULL::BIGINT"}
    return ", ".join(
        quote_ident(c) if c in have else f"{legacy[c]} AS {quote_ident(c)}" for c in METRIC_COLUMNS
    )


def _migrate_metrics(conn: sa.Connection, table: sa.Table, pg: bool) -> bool:
    """Bring a server evaluation_metrics table created by an older version (no protocol columns) to
    the current schema, in place: rows kept, marked `legacy`, the key widened by `slice`.
    PostgreSQL alters the table (grants and dependants survive); other databases rebuild it."""
    prep = conn.dialect.identifier_preparer
    qualified = prep.format_table(table)
    # the columns from an empty SELECT: portable where the inspector is not (duckdb-engine)
    have = set(conn.execute(sa.text(f"SELECT * FROM {qualified} WHERE 1 = 0")).keys())
    if "slice" in have:
        return False
    log.info("migrating %s to the evaluation-protocol columns", qualified)
    if pg:
        pkey = quote_ident(f"{table.name}_pkey")
        key = ", ".join(prep.quote_identifier(c) for c in METRIC_KEY)
        for statement in (
            f"ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS seen_filter TEXT",
            f"ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS n_repeat_targets BIGINT",
            f"ALTER TABLE {qualified} ADD COLUMN slice TEXT NOT NULL DEFAULT 'all'",
            f"ALTER TABLE {qualified} ALTER COLUMN slice DROP DEFAULT",
            f"UPDATE {qualified} SET seen_filter = '{LEGACY_SEEN_FILTER}' WHERE seen_filter IS NULL",
            f"ALTER TABLE {qualified} DROP CONSTRAINT IF EXISTS {pkey}",
            f"ALTER TABLE {qualified} ADD CONSTRAINT {pkey} PRIMARY KEY ({key})",
        ):
            conn.execute(sa.text(statement))
        return True
    old_name = f"{table.name}__before_protocol"
    old = sa.Table(old_name, sa.MetaData(), schema=table.schema)
    conn.execute(sa.text(f"ALTER TABLE {qualified} RENAME TO {prep.quote_identifier(old_name)}"))
    table.create(conn)
    kept = [c for c in METRIC_COLUMNS if c in have]
    cols = ", ".join(prep.quote_identifier(c) for c in (*kept, "seen_filter", "slice"))
    values = ", ".join(prep.quote_identifier(c) for c in kept)
    conn.execute(
        sa.text(
            f"INSERT INTO {qualified} ({cols}) SELECT {values}, '{LEGACY_SEEN_FILTER}', 'all' "
            f"FROM {prep.format_table(old)}"
        )
    )
    conn.execute(sa.text(f"DROP TABLE {prep.format_table(old)}"))
    return True


# ------------------------------------------------------------------------------------------ loading


def _copy_pg(
    conn: sa.Connection, qualified: str, columns: tuple[str, ...], reader: pa.RecordBatchReader
) -> int:
    """COPY Arrow batches into a PostgreSQL table as CSV (Arrow writes it in C++; no per-row Python)."""
    prep = conn.dialect.identifier_preparer
    cols = ", ".join(prep.quote_identifier(c) for c in columns)
    raw = conn.connection.driver_connection  # the psycopg 3 connection of this SQLAlchemy connection
    options = pacsv.WriteOptions(include_header=False, batch_size=8192)
    rows = 0
    with raw.cursor() as cur, cur.copy(f"COPY {qualified} ({cols}) FROM STDIN WITH (FORMAT csv)") as copy:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, options)
            copy.write(buf.getbuffer())
            rows += batch.num_rows
    return rows


def _insert_generic(
    conn: sa.Connection, table: sa.Table, columns: tuple[str, ...], reader: pa.RecordBatchReader
) -> int:
    """The portable path for non-PostgreSQL URLs: executemany per record batch."""
    rows = 0
    for batch in reader:
        if batch.num_rows == 0:
            continue
        batch = batch.rename_columns(list(columns))
        conn.execute(table.insert(), batch.to_pylist())
        rows += batch.num_rows
    return rows


def _load(
    conn: sa.Connection, table: sa.Table, columns: tuple[str, ...], reader: pa.RecordBatchReader, pg: bool
) -> int:
    if pg:
        prep = conn.dialect.identifier_preparer
        qualified = prep.format_table(table)
        return _copy_pg(conn, qualified, columns, reader)
    return _insert_generic(conn, table, columns, reader)


def _is_lock_timeout(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) == "55P03"  # lock_not_available


# SQLSTATEs worth a retry: connection exceptions (class 08), server shutting down or starting up,
# too many connections. A client-side failure to connect has no SQLSTATE at all.
_RETRY_STATES = ("57P01", "57P02", "57P03", "53300")


# A server that answered "no" at connection time (libpq gives these no SQLSTATE): bad password,
# unknown role or database, no pg_hba.conf entry. Retrying cannot heal them.
_PERMANENT_CONNECT_ERRORS = (
    "authentication failed",
    "password authentication",
    "no password supplied",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "not permitted to log in",
    "too many connections for role",
    "ssl is not enabled",
    "requires ssl",
    "invalid connection option",
    "invalid integer value",
    "invalid sslmode",
)


def is_permanent(exc: BaseException) -> bool:
    """A connection failure that a retry cannot fix (authentication, unknown role or database)."""
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None) or ""
    if state.startswith("28") or state == "3D000":  # invalid authorization / unknown database
        return True
    text = str(orig).lower()
    return any(marker in text for marker in _PERMANENT_CONNECT_ERRORS)


def _is_connection_error(exc: BaseException) -> bool:
    """Worth a retry: the server could not be reached or was briefly unavailable (never an
    authentication failure: a wrong password stays wrong)."""
    if is_permanent(exc):
        return False
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
        state = getattr(orig, "sqlstate", None)
        return state is None or state.startswith("08") or state in _RETRY_STATES
    return "database is locked" in str(orig)  # SQLite's busy writer


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


# ---------------------------------------------------------------------------------------- publish


def _pg_literal(conn: sa.Connection, value: str) -> str:
    """A string literal for DDL (partition bounds, CHECK), quoted by psycopg itself."""
    return psycopg.sql.Literal(value).as_string(conn.connection.driver_connection)


def _publish_once(
    engine: sa.Engine, src: _Source, names: _Names, retention: int, url: str, lock_wait_s: float
) -> PublishResult:
    started = time.perf_counter()
    pg = engine.dialect.name == "postgresql"
    target = mask_url(url)
    with engine.connect() as conn:
        if pg:
            # One publisher per target at a time (held for this session; released when it closes).
            key = f"rechub_publish:{names.schema or ''}.{names.prefix}"
            conn.execute(sa.text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": key})
            if names.schema:
                conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(names.schema)}"))
        md, t = _tables(names, None, pg=pg)
        md.create_all(conn, checkfirst=True)
        conn.commit()
        with conn.begin():
            _migrate_metrics(conn, t["metrics"], pg)

        lg = t["log"]
        previous = conn.execute(
            sa.select(lg.c.fingerprint, lg.c.live_table, lg.c.in_history).where(lg.c.run_id == src.run_id)
        ).first()
        view_exists = names.name("recommendations") in sa.inspect(conn).get_view_names(schema=names.schema)
        conn.commit()
        if previous is not None and previous.fingerprint == src.fingerprint and view_exists:
            log.info("run %s is already published to %s: nothing to do", src.run_id, target)
            return PublishResult(src.run_id, target, "unchanged", seconds=time.perf_counter() - started)

        live = names.name(f"recommendations__r{secrets.token_hex(4)}")
        md, t = _tables(names, live, pg=pg)
        hist = t["history"]
        result = PublishResult(src.run_id, target, "published", table=live)
        with conn.begin():
            q_live = names.qualify(conn, live)
            if pg:
                conn.execute(sa.text("SET LOCAL maintenance_work_mem = '1GB'"))
                t["live"].create(conn)
                # Lets ATTACH PARTITION skip its validation scan.
                conn.execute(
                    sa.text(
                        f"ALTER TABLE {q_live} ADD CONSTRAINT {quote_ident(live + '_run')} "
                        f"CHECK (run_id = {_pg_literal(conn, src.run_id)})"
                    )
                )
            else:
                t["live"].create(conn)
            t0 = time.perf_counter()
            n = _load(conn, t["live"], REC_COLUMNS, src.reader("recommendations"), pg)
            result.load_seconds = result.phases["copy"] = time.perf_counter() - t0
            if n != src.rows:
                raise UserError(
                    f"run {src.run_id}: read {n} rows, expected {src.rows} (the warehouse changed)"
                )
            result.rows["recommendations"] = result.rows["recommendations_history"] = n
            fault_point("loaded", url)
            t1 = time.perf_counter()
            if pg:  # keys after COPY: building an index once is much faster than maintaining it row by row
                # (user_id, rank) is unique; (run_id, user_id, rank) becomes the primary key when the
                # table is attached as the run's partition of recommendations_history.
                conn.execute(
                    sa.text(
                        f"ALTER TABLE {q_live} ADD CONSTRAINT {quote_ident(live + '_user_rank')} "
                        "UNIQUE (user_id, rank)"
                    )
                )
                conn.execute(
                    sa.text(
                        f"ALTER TABLE {q_live} ADD CONSTRAINT {quote_ident(live + '_pkey')} "
                        "PRIMARY KEY (run_id, user_id, rank)"
                    )
                )  # ATTACH adopts it, no rebuild
                conn.execute(sa.text(f"CREATE INDEX {quote_ident(live + '_item_id')} ON {q_live} (item_id)"))
                conn.execute(sa.text(f"ANALYZE {q_live}"))
            else:  # history: this run replaces any earlier copy of itself (delete-then-insert)
                conn.execute(hist.delete().where(hist.c.run_id == src.run_id))
                cols = ", ".join(conn.dialect.identifier_preparer.quote_identifier(c) for c in REC_COLUMNS)
                conn.execute(
                    sa.text(
                        f"INSERT INTO {names.qualified(conn, 'recommendations_history')} ({cols}) "
                        f"SELECT {cols} FROM {q_live}"
                    )
                )
            result.phases["keys"] = time.perf_counter() - t1
            t1 = time.perf_counter()

            metrics = t["metrics"]
            conn.execute(metrics.delete().where(metrics.c.run_id == src.run_id))
            result.rows["evaluation_metrics"] = _load(
                conn, metrics, METRIC_COLUMNS, src.reader("evaluation_metrics"), pg
            )
            model_ids = [
                r[0]
                for r in src.con.execute(
                    f"SELECT DISTINCT model_run_id FROM {src.rec_table} "
                    "WHERE run_id = ? AND model_run_id IS NOT NULL",
                    [src.run_id],
                ).fetchall()
            ]
            if src.has_metrics:
                model_ids += [
                    r[0]
                    for r in src.con.execute(
                        "SELECT DISTINCT model_run_id FROM main.evaluation_metrics WHERE run_id = ?",
                        [src.run_id],
                    ).fetchall()
                ]
            runs = t["model_runs"]
            if model_ids:
                conn.execute(runs.delete().where(runs.c.model_run_id.in_(sorted(set(model_ids)))))
            result.rows["model_runs"] = _load(conn, runs, MODEL_RUN_COLUMNS, src.reader("model_runs"), pg)
            jobs = t["job_runs"]
            conn.execute(jobs.delete().where(jobs.c.run_id == src.run_id))
            result.rows["job_runs"] = _load(conn, jobs, JOB_RUN_COLUMNS, src.reader("job_runs"), pg)

            # The log row, then retention over it: the newest `retention` runs (and this one) stay.
            conn.execute(lg.delete().where(lg.c.run_id == src.run_id))
            conn.execute(
                lg.insert().values(
                    run_id=src.run_id,
                    fingerprint=src.fingerprint,
                    model_run_id=src.model_run_id,
                    rows=n,
                    generated_at=src.generated_at,
                    published_at=datetime.now(UTC).replace(tzinfo=None),
                    seconds=time.perf_counter() - started,
                    live_table=live,
                    in_history=True,
                )
            )
            newest = (
                sa.select(lg.c.run_id)
                .where(lg.c.in_history)
                .order_by(lg.c.generated_at.desc(), lg.c.run_id.desc())
                .limit(retention)
            )
            kept = {r[0] for r in conn.execute(newest)} | {src.run_id}
            stale = [
                (r[0], r[1])
                for r in conn.execute(sa.select(lg.c.run_id, lg.c.live_table).where(lg.c.in_history))
                if r[0] not in kept
            ]
            if stale:
                conn.execute(
                    lg.update().where(lg.c.run_id.in_([r for r, _ in stale])).values(in_history=False)
                )
            result.dropped_runs = [r for r, _ in stale]
            if not pg:  # one index-prefix delete per dropped run
                for old, _ in stale:
                    conn.execute(hist.delete().where(hist.c.run_id == old))
            result.phases["metadata"] = time.perf_counter() - t1
            fault_point("before-swap", url)
            # PostgreSQL partitions to drop in the swap: dropped runs, and this run's previous copy.
            drop = [tbl for _, tbl in stale if tbl]
            if previous is not None and previous.in_history and previous.live_table:
                drop.append(previous.live_table)
            locked_at = _swap(conn, names, live, src.run_id, drop, pg, lock_wait_s)
        result.swap_seconds = result.phases["swap"] = (
            time.perf_counter() - locked_at
        )  # lock held until COMMIT
        result.phases = {k: round(v, 4) for k, v in result.phases.items()}
    result.seconds = time.perf_counter() - started
    result.rows_per_second = n / result.load_seconds if result.load_seconds > 0 else 0.0
    return result


def _swap(
    conn: sa.Connection, names: _Names, live: str, run_id: str, drop: list[str], pg: bool, lock_wait_s: float
) -> float:
    """Repoint the `recommendations` view to `live`; on PostgreSQL also attach `live` as the run's
    history partition and drop the partitions in `drop`; elsewhere drop the previous live tables.

    On PostgreSQL the locks are taken with a short lock_timeout inside a savepoint and retried, so a
    long analyst query delays the publish instead of making every other reader queue behind it.
    Returns the perf_counter time the locks were acquired (readers wait from then until COMMIT).
    """
    prep = conn.dialect.identifier_preparer
    view = names.qualified(conn, "recommendations")
    history = names.qualified(conn, "recommendations_history")
    q_live = names.qualify(conn, live)
    cols = ", ".join(prep.quote_identifier(c) for c in REC_COLUMNS)
    view_exists = names.name("recommendations") in sa.inspect(conn).get_view_names(schema=names.schema)
    if not pg:  # no partitions: drop every earlier live table; no lock waits to retry
        pattern = re.compile(re.escape(names.prefix) + r"recommendations__r[0-9a-f]{8}$")
        tables = sa.inspect(conn).get_table_names(schema=names.schema)
        drop = [n for n in tables if pattern.match(n) and n != live]
        locked_at = time.perf_counter()
        conn.execute(sa.text(f"DROP VIEW IF EXISTS {view}"))
        conn.execute(sa.text(f"CREATE VIEW {view} AS SELECT {cols} FROM {q_live}"))
        for name in drop:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {names.qualify(conn, name)}"))
        return locked_at
    deadline = time.monotonic() + lock_wait_s
    while True:
        savepoint = conn.begin_nested()
        try:
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
            locked = ([view] if view_exists else []) + [history]
            conn.execute(sa.text(f"LOCK TABLE {', '.join(locked)} IN ACCESS EXCLUSIVE MODE"))
            locked_at = time.perf_counter()
            conn.execute(sa.text(f"CREATE OR REPLACE VIEW {view} AS SELECT {cols} FROM {q_live}"))
            for name in drop:  # no longer behind the view: drop the partition (and its rows)
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {names.qualify(conn, name)}"))
            conn.execute(
                sa.text(
                    f"ALTER TABLE {history} ATTACH PARTITION {q_live} "
                    f"FOR VALUES IN ({_pg_literal(conn, run_id)})"
                )
            )
            savepoint.commit()
            return locked_at
        except sa_exc.OperationalError as exc:
            if not _is_lock_timeout(exc):
                raise
            savepoint.rollback()
            if time.monotonic() > deadline:
                raise UserError(
                    f"could not swap {names.name('recommendations')}: readers held it over {lock_wait_s:.0f}s"
                ) from None
            log.info("recommendations busy (a reader holds a lock); retrying the swap")
            time.sleep(0.2)


@contextlib.contextmanager
def _warehouse_con(warehouse: Warehouse | duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    if isinstance(warehouse, duckdb.DuckDBPyConnection):
        yield warehouse
    else:
        with warehouse.session() as con:
            yield con


def _engine(url: str, where: str) -> tuple[sa.Engine, sa.URL, str]:
    """(engine, parsed URL, masked URL) for a target; UserError naming `where` on a bad URL."""
    eng_url = parse_url(url, where)
    target = mask_url(url)
    connect_args: dict[str, Any] = {}
    if eng_url.get_backend_name() == "postgresql":
        if eng_url.get_driver_name() != "psycopg":
            raise UserError(
                f"PostgreSQL needs the psycopg (3) driver: use postgresql:// or "
                f"postgresql+psycopg:// ({target})"
            )
        connect_args = {"connect_timeout": 10, "application_name": "rechub-store publish"}
    try:
        engine = sa.create_engine(eng_url, poolclass=sa.pool.NullPool, connect_args=connect_args)
    except Exception as exc:  # a missing driver module, a bad dialect name
        raise UserError(f"cannot use {target}: {_mask_text(_first_line(exc), url)}") from None
    return engine, eng_url, target


DEFAULT_RETRIES = 5  # connection retries of a publish (`Settings.publish_retries` overrides)
DEFAULT_BACKOFF_S = 1.0  # first wait between them, doubled each time


def _retry_policy(retries: int | None, backoff_s: float | None) -> tuple[int, float]:
    return (
        DEFAULT_RETRIES if retries is None else retries,
        DEFAULT_BACKOFF_S if backoff_s is None else backoff_s,
    )


def _with_retries(
    action: Callable[[], Any],
    url: str,
    what: str,
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None],
) -> tuple[Any, int]:
    """Run `action`, retrying connection errors with exponential backoff; (result, attempts).

    Authentication failures and other permanent refusals fail at once; every message is masked.
    """
    target = mask_url(url)
    attempt = 0
    while True:
        attempt += 1
        try:
            return action(), attempt
        except (sa_exc.DBAPIError, psycopg.Error) as exc:  # COPY raises psycopg's own
            msg = _mask_text(_first_line(exc), url)
            if _is_connection_error(exc) and attempt <= retries:
                delay = backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "%s %s failed (%s); retry %d/%d in %.1fs", what, target, msg, attempt, retries, delay
                )
                sleep(delay)
                continue
            if is_permanent(exc):
                raise UserError(f"cannot {what} {target}: {msg} (not retried: it will not heal)") from None
            if _is_connection_error(exc):
                raise UserError(f"cannot {what} {target}: {msg} (gave up after {attempt} tries)") from None
            raise UserError(f"{what} {target} failed: {msg}") from None


def check_target(
    url: str,
    where: str = "publish target",
    *,
    retries: int | None = None,
    backoff_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Connect and run `SELECT 1` (the job checks its targets this way before any work starts).

    Same retry policy as a publish; an authentication failure fails at once. Returns the masked
    URL and the number of attempts; raises a one-line UserError naming `where`.
    """
    retries, backoff_s = _retry_policy(retries, backoff_s)
    engine, _, target = _engine(url, where)

    def probe() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1")).fetchall()

    try:
        _, attempts = _with_retries(probe, url, "connect to", retries, backoff_s, sleep)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    finally:
        engine.dispose()
    return {"target": target, "attempts": attempts}


def publish_to_url(
    warehouse: Warehouse | duckdb.DuckDBPyConnection,
    url: str,
    *,
    run_id: str | None = None,
    retention: int = 30,
    retries: int | None = None,
    backoff_s: float | None = None,
    schema: str | None = None,
    prefix: str = "",
    lock_wait_s: float = 300.0,
    record: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
    where: str | None = None,
) -> PublishResult:
    """Publish one run (default: the current one) from the warehouse to a SQLAlchemy URL.

    Copies the run's recommendations (to the `recommendations` view and `recommendations_history`),
    its evaluation_metrics, model_runs and job_runs rows. Connection errors are retried `retries` times
    (default: env RECHUB_PUBLISH_RETRIES, else 5) with exponential backoff from `backoff_s` (default:
    env RECHUB_PUBLISH_BACKOFF_S, else 1 s), doubling; authentication failures are not retried; the
    last failure is a one-line UserError with the URL masked. With `record` (default: when given a
    Warehouse rather than the nightly job's open connection, which records its own step), a
    meta.job_runs row (job `publish`) records the outcome. `where` names the URL's origin in
    messages (default `--to`).
    """
    if record is None:
        record = isinstance(warehouse, Warehouse)
    retries, backoff_s = _retry_policy(retries, backoff_s)
    if retention < 1:
        raise UserError(f"--retention must be at least 1, got {retention}")
    engine, eng_url, target = _engine(url, where or "--to")
    pg = eng_url.get_backend_name() == "postgresql"
    if schema is None and pg:
        schema = "public"
    if schema is not None:
        quote_ident(schema)
    names = _Names(schema, prefix)
    if prefix:
        names.name("recommendations_history")  # validate the prefix early
        if len(prefix) > 27:  # the longest derived name (an index of the live table) must fit 63 chars
            raise UserError(f"table prefix {prefix!r} is too long: at most 27 characters")

    started_at = datetime.now(UTC).replace(tzinfo=None)
    with _warehouse_con(warehouse) as con:
        src = _open_source(con, run_id)
        log.info("publishing run %s (%d rows) to %s", src.run_id, src.rows, target)
        result: PublishResult | None = None
        error: str | None = None
        try:
            result, attempts = _with_retries(
                lambda: _publish_once(engine, src, names, retention, url, lock_wait_s),
                url,
                "publish to",
                retries,
                backoff_s,
                sleep,
            )
            result.attempts = attempts
        except Exception as exc:
            error = _mask_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, url)
            raise
        finally:
            engine.dispose()
            src.close()
            if record:
                _record(con, src.run_id, started_at, result, error, target)
    return result


def _record(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    started_at: datetime,
    result: PublishResult | None,
    error: str | None,
    target: str,
) -> None:
    """One meta.job_runs row per publish (job `publish`); the URL in it is already masked."""
    with contextlib.suppress(duckdb.Error):  # a read-only connection cannot record; publishing still counts
        details = redact(json.dumps(result.as_dict() if result else {"target": target}, default=str))
        status = "failed" if result is None else ("skipped" if result.status == "unchanged" else "success")
        con.execute(
            "INSERT INTO meta.job_runs VALUES (?, 'publish', 'publish', ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                status,
                started_at,
                datetime.now(UTC).replace(tzinfo=None),
                result.seconds if result else None,
                result.rows.get("recommendations", 0) if result else 0,
                details,
                redact(error),
            ],
        )
