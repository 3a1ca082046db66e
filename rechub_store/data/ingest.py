"""Load raw logs (CSV or Parquet) into the `raw.*` tables, one validated batch per file.

Why it is built this way:
- Exact line numbers and raw text for every bad row: a CSV file is read once by DuckDB as
  whole lines (one VARCHAR column, no quoting), numbered in file order; a line DuckDB cannot
  read (not valid text in the encoding, too long) comes back from its rejects table as a row
  with a reason, in its place. Lines become RFC 4180 records in SQL (a quoted field may span
  lines; see `_prepare_csv`) and records are split into fields (a fast `string_split` when
  there is no quote, an RFC 4180 regexp otherwise). Every value stays text until SQL checks
  and `TRY_CAST`s validate it, so a bad row becomes a row of `raw.rejects` (line, raw text,
  reason) instead of an error. Nothing is looped in Python.
- Nothing lost: rows read = rows accepted + rows rejected, recorded per file in `raw.batches`.
  Blank lines carry no data and are not rows.
- What a warehouse must never hold is rejected here, with a reason: ids with control characters
  (they break exports and server databases), NUL bytes in attribute values and tags (PostgreSQL
  refuses them), times outside a sanity window (default 1990-01-01 .. now + 1 day).
- Idempotent: a file whose content (sha256) was already ingested as the same kind adds nothing.
- Atomic: each file is written in one transaction, so a killed ingest leaves no half batch.
- Raw ids stay text exactly as written (unicode, quotes, separators, huge numbers).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb

from rechub_store.data import fastread
from rechub_store.data.encodings import detect_encoding, python_codec
from rechub_store.errors import UserError
from rechub_store.warehouse import quote_ident, transaction

TimeFormat = Literal["auto", "seconds", "milliseconds", "iso"]
TIME_FORMATS = ("auto", "seconds", "milliseconds", "iso")
# Numbers above this magnitude are epoch milliseconds in `auto` mode (1e11 s is the year 5138).
MS_THRESHOLD = 1e11
# A 4-byte separator that never occurs in text, so DuckDB hands us each physical line whole.
_LINE_DELIM = "chr(31) || chr(30) || chr(29) || chr(28)"
_DELIM_CANDIDATES = (",", "\t", ";", "|")
MAX_HEADER_CHARS = 1 << 20  # a longer first line is not a header: one-line error
MAX_LINE_BYTES = 16 << 20  # a longer data line is a reject (DuckDB's max_line_size)
DEFAULT_MIN_TIME = dt.datetime(1990, 1, 1)  # events before this are rejected unless --min-time says otherwise
MAX_AHEAD = dt.timedelta(days=1)  # ... and events later than now + this
MAX_REJECT_RAW = 1 << 16  # characters of an over-long or unreadable line kept in raw.rejects
# C0 and C1 control characters and DEL (RE2 syntax): never part of an id.
_CONTROL_CHARS = r"[\x{00}-\x{1F}\x{7F}-\x{9F}]"
# DuckDB errors caused by the input file (bad encoding, unreadable, too long a line) or memory.
_FILE_ERRORS = (
    duckdb.IOException,
    duckdb.InvalidInputException,
    duckdb.ConversionException,
    duckdb.OutOfRangeException,
    duckdb.OutOfMemoryException,
)

RAW_DDL = """
CREATE TABLE IF NOT EXISTS raw.batches (
    batch_id      VARCHAR PRIMARY KEY,
    batch_seq     INTEGER NOT NULL,
    kind          VARCHAR NOT NULL,   -- interactions | users | items | tags
    path          VARCHAR NOT NULL,
    sha256        VARCHAR NOT NULL,
    rows_read     BIGINT NOT NULL,
    rows_accepted BIGINT NOT NULL,
    rows_rejected BIGINT NOT NULL,
    ingested_at   TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS raw.interactions (
    user_id   VARCHAR NOT NULL,
    item_id   VARCHAR NOT NULL,
    ts        TIMESTAMP NOT NULL,     -- UTC
    rating    DOUBLE,
    batch_seq INTEGER NOT NULL,
    line      BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS raw.user_attributes (
    user_id   VARCHAR NOT NULL,
    name      VARCHAR NOT NULL,
    value     VARCHAR NOT NULL,
    kind      VARCHAR NOT NULL,       -- sparse | dense
    batch_seq INTEGER NOT NULL,
    line      BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS raw.item_attributes (
    item_id   VARCHAR NOT NULL,
    name      VARCHAR NOT NULL,
    value     VARCHAR NOT NULL,
    kind      VARCHAR NOT NULL,       -- sparse | dense | text
    batch_seq INTEGER NOT NULL,
    line      BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS raw.item_tags (
    item_id   VARCHAR NOT NULL,
    tag       VARCHAR NOT NULL,
    batch_seq INTEGER NOT NULL,
    line      BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS raw.rejects (
    batch_id    VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,
    line        BIGINT NOT NULL,
    raw         VARCHAR,
    reason      VARCHAR NOT NULL,
    rejected_at TIMESTAMP NOT NULL
);
"""


def ensure_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the `raw.*` tables of sql/README.md if they do not exist yet (empty warehouse)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute(RAW_DDL)


@dataclass(frozen=True)
class IngestResult:
    """What one file added. A duplicate batch reports the counts recorded the first time."""

    batch_id: str
    path: str
    kind: str
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    duplicate_batch: bool = False
    batch_seq: int = 0
    encoding: str = ""  # the text encoding the file was read with (detected or given); "" for Parquet

    @property
    def reject_ratio(self) -> float:
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "reject_ratio": round(self.reject_ratio, 6)}


class RejectRatioExceeded(UserError):
    """Too many bad rows. Accepted rows and rejects ARE recorded; the command still fails."""

    def __init__(self, results: Sequence[IngestResult], max_reject_ratio: float) -> None:
        bad = [r for r in results if r.reject_ratio > max_reject_ratio]
        worst = max(bad, key=lambda r: r.reject_ratio)
        super().__init__(
            f"{worst.path}: {worst.rows_rejected} of {worst.rows_read} rows rejected "
            f"({worst.reject_ratio:.1%} > --max-reject-ratio {max_reject_ratio:g}); "
            f"accepted rows and rejects are recorded in batch {worst.batch_id}, "
            "see raw.rejects for reasons"
        )
        self.results = list(results)


# --------------------------------------------------------------------------- reading files


@dataclass(frozen=True)
class FileSpec:
    """How to read one file. `names` replaces the header (or names a header-less file)."""

    path: Path
    fmt: Literal["csv", "parquet"]
    delimiter: str = ","
    quote: bool = True
    header: bool = True
    names: tuple[str, ...] = ()
    encoding: str = "utf-8"


def _sql_str(text: str) -> str:
    """A SQL string literal (for paths and separators we put into table-function calls)."""
    return "'" + text.replace("'", "''") + "'"


def _col(name: str) -> str:
    """Quote a source column name that we have checked exists in the file."""
    return '"' + name.replace('"', '""') + '"'


def _detect_format(path: Path) -> Literal["csv", "parquet"]:
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a CSV or Parquet file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    return "parquet" if magic == b"PAR1" else "csv"


def _first_line(path: Path, encoding: str) -> str:
    # surrogateescape: a bad byte further down the first block must not fail the header
    with path.open("r", encoding=python_codec(encoding), errors="surrogateescape", newline="") as fh:
        line = fh.readline(MAX_HEADER_CHARS + 1)
    if any("\udc80" <= ch <= "\udcff" for ch in line):
        raise UserError(f"{path}: header is not valid {encoding} text (try --encoding latin-1)")
    if len(line) > MAX_HEADER_CHARS:
        raise UserError(
            f"{path}: the header line is longer than {MAX_HEADER_CHARS:,} characters "
            "(not a CSV file with a header line naming the columns?)"
        )
    return line.rstrip("\r\n").lstrip("\ufeff")


def _sniff_delimiter(path: Path, header_line: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    counts = {d: header_line.count(d) for d in _DELIM_CANDIDATES}
    best = max(_DELIM_CANDIDATES, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def open_spec(
    path: Path | str,
    *,
    delimiter: str | None = None,
    header: bool = True,
    names: Sequence[str] = (),
    encoding: str = "auto",
    quote: bool = True,
) -> tuple[FileSpec, list[str]]:
    """Work out how to read `path` and return the spec plus the file's column names.

    The encoding (`auto`: UTF-8, else latin-1; see encodings.py) is settled by reading the whole
    file once here, before any of its rows is loaded.
    """
    path = Path(path)
    fmt = _detect_format(path)
    if fmt == "parquet":
        return FileSpec(path, "parquet"), []  # columns come from the Parquet schema
    encoding = detect_encoding(path, encoding)
    first = _first_line(path, encoding)
    if delimiter is None:
        delimiter = _sniff_delimiter(path, first)
    if delimiter == "\\t":
        delimiter = "\t"
    if not delimiter or "\n" in delimiter or "\r" in delimiter or '"' in delimiter:
        raise UserError(f"{path}: invalid delimiter {delimiter!r}")
    quote = quote and len(delimiter) == 1
    if names:
        cols = list(names)
    elif header:
        if not first.strip():
            raise UserError(f"{path}: empty file, expected a header line naming the columns")
        try:
            cols = (
                next(csv.reader(io.StringIO(first), delimiter=delimiter)) if quote else first.split(delimiter)
            )
        except csv.Error as exc:
            raise UserError(f"{path}: cannot read the header line: {exc}") from None
        cols = [c.strip() for c in cols]
    else:
        raise UserError(f"{path}: a file without a header needs column names")
    return FileSpec(path, "csv", delimiter, quote, header, tuple(cols), encoding), cols


def _fields_sql(spec: FileSpec) -> str:
    """SQL for the fields (VARCHAR[]) of one CSV record `raw`; NULL when its quoting is malformed."""
    d = spec.delimiter
    if not spec.quote:
        return f"string_split(raw, {_sql_str(d)})"
    dq = re.escape(d)
    extract_re = f'("(?:[^"]|"")*"|[^"{dq}]*){dq}'
    # Fields quoted without a delimiter or quote inside (the usual "quote every string"
    # export) can still be split cheaply; only the rest needs the slower regexp extraction.
    simple_re = f'(?:"[^"{dq}]*"|[^"{dq}]*)'
    simple_line_re = f"(?:{simple_re}{dq})*{simple_re}"
    return (
        f"CASE WHEN NOT contains(raw, '\"') THEN string_split(raw, {_sql_str(d)}) "
        f"WHEN regexp_full_match(raw, {_sql_str(simple_line_re)}) THEN list_transform("
        f"string_split(raw, {_sql_str(d)}), "
        "lambda f: CASE WHEN starts_with(f, '\"') THEN f[2:-2] ELSE f END) "
        f"WHEN regexp_full_match(raw, {_sql_str(_record_re(spec))}) THEN list_transform("
        f"regexp_extract_all(raw || {_sql_str(d)}, {_sql_str(extract_re)}, 1), "
        "lambda f: CASE WHEN starts_with(f, '\"') THEN replace(f[2:-2], '\"\"', '\"') ELSE f END) "
        "END"
    )


def _record_re(spec: FileSpec) -> str:
    """A whole RFC 4180 record: fields, each quoted (\"\" inside; newlines allowed) or quote-free."""
    dq = re.escape(spec.delimiter)
    field_re = f'(?:"(?:[^"]|"")*"|[^"{dq}]*)'
    return f"(?:{field_re}{dq})*{field_re}"


_READ_ERRORS = "_ingest_read_errors"


def _read_lines(con: duckdb.DuckDBPyConnection, spec: FileSpec) -> None:
    """TEMP TABLE _ingest_lines (line, raw, _rerr): every physical line of the file, numbered from 1.

    DuckDB's reader hands each line over whole (a separator that never occurs, no quoting); a line
    it cannot read (not valid text in the file's encoding, longer than MAX_LINE_BYTES) is kept as a
    row with `_rerr` set, its number taken from the reader's rejects table, and the other lines
    renumbered around it. Line ends are \\n, \\r\\n and a lone \\r, as the reader counts them.
    """
    con.execute(f"DROP TABLE IF EXISTS {_READ_ERRORS}; DROP TABLE IF EXISTS {_READ_ERRORS}_scans")
    reader = (
        f"read_csv({_sql_str(str(spec.path))}, columns={{'raw': 'VARCHAR'}}, header=false, "
        f"delim={_LINE_DELIM}, quote='', escape='', auto_detect=false, strict_mode=false, "
        f"encoding={_sql_str(spec.encoding)}, max_line_size={MAX_LINE_BYTES}, "
        f"store_rejects=true, rejects_table='{_READ_ERRORS}', rejects_scan='{_READ_ERRORS}_scans')"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _ingest_lines AS "
        f"SELECT row_number() OVER () AS line, raw, NULL::VARCHAR AS _rerr FROM {reader}"
    )
    (n_errors,) = con.execute(f"SELECT count(*) FROM {_READ_ERRORS}").fetchone()  # type: ignore[misc]
    if not n_errors:
        return
    unreadable = f"not valid {spec.encoding} text" + (
        " (pass --encoding latin-1 if that is its encoding)" if spec.encoding == "utf-8" else ""
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ingest_lines AS
        WITH errors AS (
            SELECT line, any_value(error_type)::VARCHAR AS kind, any_value(csv_line) AS raw
            FROM {_READ_ERRORS} GROUP BY line
        ),
        -- error i (in line order) has line - i readable lines before it: readable line n moves
        -- down by the number of errors with fewer readable lines before them than n
        shift AS (
            SELECT before, max(n) AS n FROM (
                SELECT line - row_number() OVER (ORDER BY line) AS before,
                       row_number() OVER (ORDER BY line) AS n
                FROM errors)
            GROUP BY before
        )
        SELECT l.line + coalesce(s.n, 0) AS line, l.raw, l._rerr
        FROM _ingest_lines l ASOF LEFT JOIN shift s ON l.line > s.before
        UNION ALL
        SELECT line, left(raw, {MAX_REJECT_RAW}),
               CASE kind WHEN 'INVALID ENCODING' THEN {_sql_str(unreadable)}
                         WHEN 'LINE SIZE OVER MAXIMUM' THEN 'line longer than {MAX_LINE_BYTES} bytes'
                         ELSE 'unreadable line: ' || lower(kind) END
        FROM errors
        """
    )


def _prepare_csv(con: duckdb.DuckDBPyConnection, spec: FileSpec) -> None:
    """TEMP TABLE _ingest_records (line, raw, _rerr, fields): one row per CSV record.

    A record is one line, except that a quoted field may span lines (RFC 4180): a line with an
    odd number of quote characters opens such a field and the next one closes it, and the lines
    between are joined with \\n into one record numbered by its first line. If the joined text is
    not well-formed (an unbalanced quote), its lines are read one by one instead, so a stray
    quote costs its own line, never the rest of the file. Blank records are not rows.

    A line with an odd number of quotes never parses as a record on its own, so only lines whose
    fields came out NULL are counted: a file without quoted line breaks pays for one parse.
    """
    skip = 1 if spec.header else 0
    _read_lines(con, spec)
    fields = _fields_sql(spec)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ingest_records AS
        SELECT line, raw, _rerr, CASE WHEN _rerr IS NULL THEN {fields} END AS fields
        FROM _ingest_lines
        WHERE line > {skip} AND (_rerr IS NOT NULL OR (raw IS NOT NULL AND trim(raw, ' \t\r') <> ''))
        """
    )
    groups = 0
    if spec.quote:
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _ingest_groups AS
            WITH odd AS (
                SELECT line FROM _ingest_records
                WHERE fields IS NULL AND contains(raw, '"')
                  AND (strlen(raw) - strlen(replace(raw, '"', ''))) % 2 = 1
            ),
            paired AS (
                SELECT line, row_number() OVER (ORDER BY line) AS k, lead(line) OVER (ORDER BY line) AS next
                FROM odd
            )
            SELECT line AS first, coalesce(next, (SELECT max(line) FROM _ingest_lines)) AS last
            FROM paired WHERE k % 2 = 1
            """
        )
        (groups,) = con.execute("SELECT count(*) FROM _ingest_groups").fetchone()  # type: ignore[misc]
    if groups:
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _ingest_joined AS
            SELECT first, last, raw, _rerr FROM (
                SELECT g.first, g.last, string_agg(coalesce(l.raw, ''), chr(10) ORDER BY l.line) AS raw,
                       min(l._rerr) AS _rerr
                FROM _ingest_groups g JOIN _ingest_lines l ON l.line BETWEEN g.first AND g.last
                GROUP BY g.first, g.last)
            WHERE regexp_full_match(raw, {_sql_str(_record_re(spec))})
            """
        )
        con.execute(
            "DELETE FROM _ingest_records r USING _ingest_joined j WHERE r.line BETWEEN j.first AND j.last"
        )
        con.execute(
            "INSERT INTO _ingest_records "
            f"SELECT first, raw, _rerr, CASE WHEN _rerr IS NULL THEN {fields} END FROM _ingest_joined"
        )
    con.execute("DROP TABLE IF EXISTS _ingest_lines; DROP TABLE IF EXISTS _ingest_groups")
    con.execute("DROP TABLE IF EXISTS _ingest_joined")


def _csv_rows_sql(spec: FileSpec) -> str:
    """SELECT line, raw, _ctl, _err, f1..fN over the prepared records."""
    n = len(spec.names)
    picks = ", ".join(f"fields[{i + 1}] AS f{i + 1}" for i in range(n))
    return f"""
        SELECT line, raw, true AS _ctl,
               CASE WHEN _rerr IS NOT NULL THEN _rerr
                    WHEN fields IS NULL THEN 'malformed quoting'
                    WHEN len(fields) <> {n}
                    THEN 'wrong field count: expected {n}, got ' || len(fields) END AS _err,
               {picks}
        FROM _ingest_records"""


def _parquet_rows_sql(spec: FileSpec, names: Sequence[str], casts: dict[str, str]) -> str:
    src = f"read_parquet({_sql_str(str(spec.path))}, file_row_number=true)"
    raw = "to_json(struct_pack(" + ", ".join(f"{_col(c)} := {_col(c)}" for c in names) + "))::VARCHAR"
    picks = ", ".join(
        f"CAST({_col(c)} AS {casts.get(c, 'VARCHAR')}) AS f{i + 1}" for i, c in enumerate(names)
    )
    return (
        f"SELECT file_row_number + 1 AS line, {raw} AS raw, true AS _ctl, NULL::VARCHAR AS _err, {picks} "
        f"FROM {src}"
    )


class Source:
    """A file opened for ingest: column lookup by name and the SQL producing its rows as text."""

    def __init__(self, con: duckdb.DuckDBPyConnection, spec: FileSpec, columns: list[str]) -> None:
        self.spec = spec
        if spec.fmt == "parquet":
            try:
                desc = con.execute(
                    f"DESCRIBE SELECT * FROM read_parquet({_sql_str(str(spec.path))})"
                ).fetchall()
            except duckdb.Error as exc:
                raise UserError(f"{spec.path}: cannot read Parquet file: {_first(exc)}") from None
            columns = [row[0] for row in desc]
            self.types = {row[0]: str(row[1]) for row in desc}
        else:
            self.types = dict.fromkeys(columns, "VARCHAR")
        self.columns = columns
        self.used: list[str] = []
        self.casts: dict[str, str] = {}
        self.fast: fastread.FileFacts | None = None  # set when fastread's whole-file read was exact

    def ref(self, column: str, role: str, as_list: bool = False) -> str:
        """The SQL name of source column `column` (a VARCHAR), or a UserError naming file and column.

        `as_list`: a Parquet list column is read as VARCHAR[] (e.g. tags stored as list<string>).
        """
        if column not in self.columns:
            raise UserError(
                f"{self.spec.path}: no column {column!r} (for {role}); columns are: {', '.join(self.columns)}"
            )
        if column not in self.used:
            self.used.append(column)
            if as_list and self.is_list(column):
                self.casts[column] = "VARCHAR[]"
        if self.spec.fmt == "csv":
            return f"f{self.columns.index(column) + 1}"
        return f"f{self.used.index(column) + 1}"

    def prepare(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read a CSV file once into a temporary table of records (Parquet is read in place):
        DuckDB's own reader when that is exact for this file (fastread.py), else line by line."""
        if self.spec.fmt == "csv":
            self.fast = fastread.read_whole_records(con, self.spec, MAX_LINE_BYTES)
            if not self.fast:
                _prepare_csv(con, self.spec)

    def release(self, con: duckdb.DuckDBPyConnection) -> None:
        if self.spec.fmt == "csv":
            fastread.drop(con)
            con.execute("DROP TABLE IF EXISTS _ingest_records")
            con.execute(f"DROP TABLE IF EXISTS {_READ_ERRORS}; DROP TABLE IF EXISTS {_READ_ERRORS}_scans")

    def rows_sql(self) -> str:
        """SELECT line, raw, _ctl, _err, f1..fN: the file's rows as text (after `prepare`); `_ctl` is
        false when no row can hold a control character."""
        if self.spec.fmt == "csv":
            return fastread.rows_sql(self.spec, self.fast) if self.fast else _csv_rows_sql(self.spec)
        return _parquet_rows_sql(self.spec, self.used, self.casts)

    def is_list(self, column: str) -> bool:
        """A Parquet list column (e.g. tags stored as list<string>): read as VARCHAR[], not text."""
        return self.types.get(column, "").endswith("[]")


def _first(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --------------------------------------------------------------------------- validation SQL


def _blank(expr: str) -> str:
    """NULL, empty, or only spaces, tabs and carriage returns. The trim runs only on values that
    start with one of those (a value that does not cannot be blank): trim is costly per row."""
    starts = " OR ".join(f"starts_with({expr}, {c})" for c in ("' '", "chr(9)", "chr(13)"))
    return f"({expr} IS NULL OR {expr} = '' OR (({starts}) AND trim({expr}, ' \t\r') = ''))"


class Derived:
    """Per-row values computed once, in layers (a layer may use the columns of earlier ones).

    Why: DuckDB does not share common subexpressions inside a CASE, so a cast written three
    times in the checks is computed three times; named columns are computed once.
    """

    def __init__(self) -> None:
        self.layers: list[list[tuple[str, str]]] = [[], [], []]

    def add(self, layer: int, name: str, expr: str) -> str:
        self.layers[layer].append((name, expr))
        return name

    def wrap(self, rows_sql: str) -> str:
        for layer in self.layers:
            if layer:
                cols = ", ".join(f"{expr} AS {name}" for name, expr in layer)
                rows_sql = f"SELECT *, {cols} FROM ({rows_sql})"
        return rows_sql


def parse_time(d: Derived, expr: str, time_format: str, tag: str) -> str:
    """Column name of a TIMESTAMP (UTC) parsed from text: epoch seconds, epoch ms or ISO 8601.

    NULL when unparsable or out of range. Needs the session TimeZone set to UTC, so ISO text
    without an offset is read as UTC and text with an offset is converted to UTC.
    """
    if time_format not in TIME_FORMATS:
        raise UserError(f"--time-format: expected one of {', '.join(TIME_FORMATS)}, got {time_format!r}")
    from_iso = f"timezone('UTC', TRY_CAST({expr} AS TIMESTAMPTZ))"
    if time_format == "iso":
        return d.add(2, f"_{tag}_ts", from_iso)
    num = d.add(0, f"_{tag}_num", f"TRY_CAST({expr} AS DOUBLE)")
    secs = {
        "seconds": num,
        "milliseconds": f"{num} / 1000.0",
        "auto": f"CASE WHEN abs({num}) > {MS_THRESHOLD} THEN {num} / 1000.0 ELSE {num} END",
    }[time_format]
    secs = d.add(1, f"_{tag}_secs", secs)
    from_num = (
        f"CASE WHEN isfinite({secs}) AND abs({secs}) < 9.0e12 "
        f"THEN make_timestamp(CAST(round({secs} * 1e6) AS BIGINT)) END"
    )
    if time_format == "auto":
        return d.add(2, f"_{tag}_ts", f"CASE WHEN {num} IS NOT NULL THEN {from_num} ELSE {from_iso} END")
    return d.add(2, f"_{tag}_ts", from_num)


def parse_number(d: Derived, expr: str, tag: str) -> tuple[str, str]:
    """(column of the finite DOUBLE value or NULL, condition 'present but not a number')."""
    raw = d.add(0, f"_{tag}_raw", f"TRY_CAST({expr} AS DOUBLE)")
    value = d.add(1, f"_{tag}_num", f"CASE WHEN isfinite({raw}) THEN {raw} END")
    return value, f"(NOT {_blank(expr)} AND {value} IS NULL)"


def _reason_sql(checks: Sequence[tuple[str, str]], accept: Sequence[str] = ()) -> str:
    """CASE over (condition, reason) pairs, first failing check wins; NULL = row accepted.

    `accept`: conditions that together prove a row passes every check, tested first with cheap
    comparisons; only rows they cannot prove good walk the checks one by one (a CASE of many
    string checks costs more per row than reading the file).
    """
    whens = " ".join(f"WHEN {cond} THEN {_sql_str(reason)}" for cond, reason in checks)
    fast = f"WHEN _err IS NULL AND {' AND '.join(accept)} THEN NULL " if accept else ""
    return f"CASE {fast}WHEN _err IS NOT NULL THEN _err {whens} END"


def _surely_filled(expr: str) -> str:
    """True only for text that is not blank: its first byte is above the space (so neither empty,
    nor a space, tab or carriage return: `_blank` is false). False proves nothing."""
    return f"{expr} >= '!'"


# --------------------------------------------------------------------------- batches


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _existing_batch(con: duckdb.DuckDBPyConnection, sha: str, kind: str) -> IngestResult | None:
    row = con.execute(
        "SELECT batch_id, path, kind, rows_read, rows_accepted, rows_rejected, batch_seq "
        "FROM raw.batches WHERE sha256 = ? AND kind = ? ORDER BY batch_seq LIMIT 1",
        [sha, kind],
    ).fetchone()
    if row is None:
        return None
    return IngestResult(row[0], row[1], row[2], row[3], row[4], row[5], True, row[6])


@dataclass
class Plan:
    """What one file becomes: per target table, the SELECT list over the validated rows."""

    kind: str
    reason: str  # SQL: NULL when the row is accepted
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (INSERT INTO ..., SELECT ... FROM ok)
    one_row_per_line: bool = True  # the first output's row count is the accepted count
    derived: Derived = field(default_factory=Derived)


def run_batch(con: duckdb.DuckDBPyConnection, source: Source, plan: Plan) -> IngestResult:
    """Validate and load one file in one transaction; rejects go to raw.rejects."""
    ensure_raw_tables(con)
    path = source.spec.path
    sha = file_sha256(path)
    existing = _existing_batch(con, sha, plan.kind)
    if existing is not None:
        return existing
    path_text = str(path.resolve())
    settings = con.execute(
        "SELECT current_setting('TimeZone'), current_setting('preserve_insertion_order')"
    ).fetchone()
    con.execute("SET TimeZone = 'UTC'")
    if source.spec.fmt == "csv":  # row_number() OVER () numbers lines in file order
        con.execute("SET preserve_insertion_order = true")
    try:
        source.prepare(con)
        with transaction(con):
            seq = con.execute("SELECT coalesce(max(batch_seq), 0) + 1 FROM raw.batches").fetchone()[0]
            batch_id = f"{plan.kind}-{seq:06d}-{sha[:12]}"
            rows = source.rows_sql()
            checked = f"SELECT *, {plan.reason} AS _reason FROM ({plan.derived.wrap(rows)})"
            con.execute(f"CREATE OR REPLACE TEMP VIEW _ingest_rows AS {checked}")
            con.execute(
                "CREATE OR REPLACE TEMP VIEW _ingest_ok AS SELECT * FROM _ingest_rows WHERE _reason IS NULL"
            )
            inserted = [
                int(
                    con.execute(
                        f"INSERT INTO {target} " + select.replace("__SEQ__", str(int(seq)))
                    ).fetchone()[0]
                )
                for target, select in plan.outputs
            ]
            if plan.one_row_per_line:
                accepted = inserted[0]
            else:  # long-form fan-out: count the accepted lines themselves
                accepted = int(con.execute("SELECT count(*) FROM _ingest_ok").fetchone()[0])
            read = con.execute(f"SELECT count(*) FROM ({rows})").fetchone()[0]
            rejected = read - accepted
            if rejected:
                con.execute(
                    "INSERT INTO raw.rejects SELECT ?, ?, line, raw, _reason, now()::TIMESTAMP "
                    "FROM _ingest_rows WHERE _reason IS NOT NULL",
                    [batch_id, path_text],
                )
            con.execute(
                "INSERT INTO raw.batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                [batch_id, seq, plan.kind, path_text, sha, read, accepted, rejected],
            )
            con.execute("DROP VIEW _ingest_ok")
            con.execute("DROP VIEW _ingest_rows")
    except BaseException as exc:
        if isinstance(exc, _FILE_ERRORS):  # the file's fault (or memory), not ours: one line
            raise UserError(_read_error(path, exc)) from None
        raise
    finally:
        source.release(con)
        con.execute(f"SET TimeZone = {_sql_str(settings[0])}")
        con.execute(f"SET preserve_insertion_order = {str(settings[1]).lower()}")
    return IngestResult(
        batch_id,
        path_text,
        plan.kind,
        int(read),
        int(accepted),
        int(rejected),
        False,
        int(seq),
        source.spec.encoding if source.spec.fmt == "csv" else "",
    )


def _read_error(path: Path, exc: duckdb.Error) -> str:
    text = str(exc)
    line = re.search(r"[Ll]ine:? (\d+)", text)
    where = f" at line {line.group(1)}" if line else ""
    if "unicode" in text.lower() or "utf-8" in text.lower():
        return f"{path}: not valid UTF-8 text{where} (pass --encoding latin-1 if that is its encoding)"
    return f"{path}: cannot read{where}: {_first(exc)}"


def check_reject_ratio(results: Sequence[IngestResult], max_reject_ratio: float | None) -> None:
    if max_reject_ratio is None:
        return
    if any(not r.duplicate_batch and r.reject_ratio > max_reject_ratio for r in results):
        raise RejectRatioExceeded([r for r in results if not r.duplicate_batch], max_reject_ratio)


# --------------------------------------------------------------------------- public API


def parse_time_bound(value: Any, key: str) -> dt.datetime | None:
    """A time-window bound: an ISO 8601 date or date-time (UTC unless it has an offset), a TOML
    date/datetime, or "none" (no bound). Returns naive UTC; UserError naming `key` otherwise."""
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return None
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, dt.date):
        stamp = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            stamp = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise UserError(
                f"{key}: expected an ISO date or time (e.g. 1990-01-01) or none, got {value!r}"
            ) from None
    else:
        raise UserError(f"{key}: expected an ISO date or time (e.g. 1990-01-01) or none, got {value!r}")
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
    return stamp


def time_window(min_time: Any = None, max_time: Any = None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The accepted event times: default not before DEFAULT_MIN_TIME and not after now + MAX_AHEAD
    (a clock or unit error far in the past or future is a reject, not a training signal)."""
    lo = DEFAULT_MIN_TIME if min_time is None else parse_time_bound(min_time, "--min-time")
    if max_time is None:
        hi: dt.datetime | None = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0) + MAX_AHEAD
    else:
        hi = parse_time_bound(max_time, "--max-time")
    if lo is not None and hi is not None and lo >= hi:
        raise UserError(f"time window: --min-time {lo} is not before --max-time {hi}")
    return lo, hi


def _has_control(expr: str) -> str:
    """`_ctl` (a column of every source's rows) is false where the whole file was shown to hold no
    control character (fastread.py), which spares the regular expression on every row."""
    return f"(_ctl AND regexp_matches({expr}, {_sql_str(_CONTROL_CHARS)}))"


def _id_checks(expr: str, name: str) -> list[tuple[str, str]]:
    """An id is non-blank text without control characters: they break exports and server databases
    (text that is not valid in the file's encoding never gets this far: it is refused when read)."""
    return [(_blank(expr), f"empty id: {name}"), (_has_control(expr), f"control character in id: {name}")]


def interactions_plan(
    *,
    user: str,
    item: str,
    ts: str,
    rating: str | None,
    time_format: str,
    names: tuple[str, str, str, str | None],
    window: tuple[dt.datetime | None, dt.datetime | None] | None = None,
) -> Plan:
    """Plan for raw.interactions from SQL expressions over the source's text columns.

    `window` (default: `time_window()`) bounds the accepted event times; outside it is a reject.
    """
    user_name, item_name, time_name, rating_name = names
    d = Derived()
    ts_col = parse_time(d, ts, time_format, "ts")
    lo, hi = window if window is not None else time_window()
    # one regexp over both ids per row; which id it was is asked only where it matched
    ids_cc = d.add(0, "_ids_cc", _has_control(f"concat({user}, {item})"))
    checks = [
        (_blank(user), f"empty id: {user_name}"),
        (_blank(item), f"empty id: {item_name}"),
        (f"{ids_cc} AND {_has_control(user)}", f"control character in id: {user_name}"),
        (ids_cc, f"control character in id: {item_name}"),
        (_blank(ts), f"empty time: {time_name}"),
        (f"{ts_col} IS NULL", f"unparsable time: {time_name}"),
    ]
    # a row meeting all of these passes every check above (see _reason_sql)
    accept = [_surely_filled(user), _surely_filled(item), f"NOT {ids_cc}", _surely_filled(ts)]
    accept.append(f"{ts_col} IS NOT NULL")
    if lo is not None:
        checks.append(
            (f"{ts_col} < TIMESTAMP '{lo.isoformat()}'", f"time out of range: {time_name} before {lo}")
        )
        accept.append(f"{ts_col} >= TIMESTAMP '{lo.isoformat()}'")
    if hi is not None:
        checks.append(
            (f"{ts_col} > TIMESTAMP '{hi.isoformat()}'", f"time out of range: {time_name} after {hi}")
        )
        accept.append(f"{ts_col} <= TIMESTAMP '{hi.isoformat()}'")
    rating_col = "NULL::DOUBLE"
    if rating is not None:
        rating_col, bad = parse_number(d, rating, "rating")
        checks.append((bad, f"unparsable number: {rating_name}"))
        accept.append(f"{rating_col} IS NOT NULL")
    select = f"SELECT {user}, {item}, {ts_col}, {rating_col}, __SEQ__, line FROM _ingest_ok"
    return Plan("interactions", _reason_sql(checks, accept), [("raw.interactions", select)], derived=d)


def ingest_interactions(
    con: duckdb.DuckDBPyConnection,
    path: Path | str,
    *,
    user_col: str,
    item_col: str,
    time_col: str,
    rating_col: str | None = None,
    time_format: TimeFormat = "auto",
    delimiter: str | None = None,
    encoding: str = "auto",
    max_reject_ratio: float | None = 0.05,
    min_time: Any = None,
    max_time: Any = None,
) -> IngestResult:
    """Load an interactions file (CSV with a header, or Parquet) into raw.interactions.

    `time_format` `auto` reads numbers as epoch seconds (milliseconds above 1e11) and text as
    ISO 8601 (UTC unless it carries an offset). Events outside [`min_time`, `max_time`]
    (default 1990-01-01 .. now + 1 day; "none" = no bound) are rejected. Raises
    `RejectRatioExceeded` (a UserError) after committing when more than `max_reject_ratio` of
    the rows were rejected.
    """
    if time_format not in TIME_FORMATS:
        raise UserError(f"--time-format: expected one of {', '.join(TIME_FORMATS)}, got {time_format!r}")
    window = time_window(min_time, max_time)
    spec, cols = open_spec(path, delimiter=delimiter, encoding=encoding)
    source = Source(con, spec, cols)
    user = source.ref(user_col, "--user-col")
    item = source.ref(item_col, "--item-col")
    ts = source.ref(time_col, "--time-col")
    rating = source.ref(rating_col, "--rating-col") if rating_col else None
    plan = interactions_plan(
        user=user,
        item=item,
        ts=ts,
        rating=rating,
        time_format=time_format,
        names=(user_col, item_col, time_col, rating_col),
        window=window,
    )
    result = run_batch(con, source, plan)
    check_reject_ratio([result], max_reject_ratio)
    return result


@dataclass(frozen=True)
class Attribute:
    """One attribute to store: its name, kind and a SQL expression over the source text columns."""

    name: str
    kind: Literal["sparse", "dense", "text"]
    expr: str
    source_col: str


def attributes_plan(
    *,
    entity: Literal["user", "item"],
    id_expr: str,
    id_name: str,
    attributes: Sequence[Attribute],
    tags_expr: str | None = None,
) -> Plan:
    """Plan for raw.user_attributes / raw.item_attributes (+ raw.item_tags) in long form."""
    d = Derived()
    checks = _id_checks(id_expr, id_name)
    values = []
    for k, a in enumerate(attributes):
        if a.kind == "dense":
            number, bad = parse_number(d, a.expr, f"a{k}")
            checks.append((bad, f"unparsable number: {a.source_col}"))
            values.append(f"CAST({number} AS VARCHAR)")
        else:
            # a NUL byte is text to DuckDB but refused by PostgreSQL: it would block every publish
            checks.append((f"contains({a.expr}, chr(0))", f"NUL character in value: {a.source_col}"))
            values.append(a.expr)
    if tags_expr is not None:
        checks.append(
            (f"len(list_filter({tags_expr}, lambda t: contains(t, chr(0)))) > 0", "NUL character in tags")
        )
    outputs: list[tuple[str, str]] = []
    table = f"raw.{entity}_attributes"
    if attributes:
        items = []
        for a, value in zip(attributes, values, strict=True):
            items.append(f"{{'name': {_sql_str(a.name)}, 'value': {value}, 'kind': {_sql_str(a.kind)}}}")
        outputs.append(
            (
                table,
                f"SELECT id, a.name, a.value, a.kind, __SEQ__, line FROM ("
                f"SELECT {id_expr} AS id, line, unnest([{', '.join(items)}]) AS a FROM _ingest_ok"
                f") WHERE a.value IS NOT NULL AND trim(a.value, ' \t\r') <> ''",
            )
        )
    if tags_expr is not None:
        outputs.append(
            (
                "raw.item_tags",
                f"SELECT id, tag, __SEQ__, line FROM (SELECT {id_expr} AS id, line, "
                f"unnest(list_distinct(list_filter(list_transform({tags_expr}, lambda t: trim(t, ' \t\r')), "
                f"lambda t: t IS NOT NULL AND t <> ''))) AS tag FROM _ingest_ok)",
            )
        )
    return Plan(f"{entity}s", _reason_sql(checks), outputs, one_row_per_line=False, derived=d)


def _valid_name(name: str, option: str) -> str:
    try:
        quote_ident(name)
    except UserError:
        raise UserError(
            f"{option}: attribute name {name!r} must be letters, digits and _ (it names a feature table)"
        ) from None
    return name


def _split_cols(cols: Sequence[str] | str | None) -> list[str]:
    if cols is None:
        return []
    if isinstance(cols, str):
        return [c.strip() for c in cols.split(",") if c.strip()]
    return [c for c in cols if c]


def _attribute_list(
    source: Source, spec: Sequence[tuple[str, Sequence[str] | str | None, str]]
) -> list[Attribute]:
    out: list[Attribute] = []
    seen: set[str] = set()
    for kind, cols, option in spec:
        for c in _split_cols(cols):
            if c in seen:
                raise UserError(f"{option}: column {c!r} is listed twice")
            seen.add(c)
            out.append(Attribute(_valid_name(c, option), kind, source.ref(c, option), c))  # type: ignore[arg-type]
    return out


def ingest_users(
    con: duckdb.DuckDBPyConnection,
    path: Path | str,
    *,
    id_col: str,
    sparse_cols: Sequence[str] | str = (),
    dense_cols: Sequence[str] | str = (),
    delimiter: str | None = None,
    encoding: str = "auto",
    max_reject_ratio: float | None = 0.05,
) -> IngestResult:
    """Load a user attribute file into raw.user_attributes (one row per user and attribute).

    Empty attribute values are skipped; a dense value that is not a number rejects the row.
    """
    spec, cols = open_spec(path, delimiter=delimiter, encoding=encoding)
    source = Source(con, spec, cols)
    id_expr = source.ref(id_col, "--id-col")
    attrs = _attribute_list(
        source, [("sparse", sparse_cols, "--sparse-cols"), ("dense", dense_cols, "--dense-cols")]
    )
    plan = attributes_plan(entity="user", id_expr=id_expr, id_name=id_col, attributes=attrs)
    result = run_batch(con, source, plan)
    check_reject_ratio([result], max_reject_ratio)
    return result


def ingest_items(
    con: duckdb.DuckDBPyConnection,
    path: Path | str,
    *,
    id_col: str,
    sparse_cols: Sequence[str] | str = (),
    dense_cols: Sequence[str] | str = (),
    text_cols: Sequence[str] | str = (),
    tags_col: str | None = None,
    tags_sep: str = "|",
    delimiter: str | None = None,
    encoding: str = "auto",
    max_reject_ratio: float | None = 0.05,
) -> IngestResult:
    """Load an item attribute file into raw.item_attributes, and its tag lists into raw.item_tags."""
    if not tags_sep:
        raise UserError("--tags-sep must not be empty")
    spec, cols = open_spec(path, delimiter=delimiter, encoding=encoding)
    source = Source(con, spec, cols)
    id_expr = source.ref(id_col, "--id-col")
    attrs = _attribute_list(
        source,
        [
            ("sparse", sparse_cols, "--sparse-cols"),
            ("dense", dense_cols, "--dense-cols"),
            ("text", text_cols, "--text-cols"),
        ],
    )
    tags = None
    if tags_col:
        ref = source.ref(tags_col, "--tags-col", as_list=True)
        tags = ref if source.casts.get(tags_col) else f"string_split({ref}, {_sql_str(tags_sep)})"
    plan = attributes_plan(entity="item", id_expr=id_expr, id_name=id_col, attributes=attrs, tags_expr=tags)
    result = run_batch(con, source, plan)
    check_reject_ratio([result], max_reject_ratio)
    return result
