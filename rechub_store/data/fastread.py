"""The fast path of CSV ingest: DuckDB's own CSV reader over the whole file, when that gives
exactly what the detailed path would.

Why: the detailed path (ingest.py: every physical line read as one text value, numbered, then
assembled into RFC 4180 records and split in SQL) is what makes rejects exact for any file, but it
costs several times DuckDB's native reader, which splits fields in C++ while it reads. Most files
need none of that care: no quote characters to interpret, no blank lines, one record per line.
For those, the native reader's rows ARE the detailed path's records, in the same order, so the
line of row n is n (+ 1 for a header) and its raw text is its fields joined by the delimiter.

When is that so? It is not guessed: it is checked on the file itself, after reading it.
- The file has no quote character where quotes would mean something (a quoting CSV spec), and
  no lone carriage return (a line end DuckDB counts that Python's line count would not);
- the reader rejected no line (wrong field count, bad text in the encoding, an over-long line:
  all recorded in its rejects table), and
- it returned exactly one row per physical line after the header: a blank line, which the
  reader skips silently, would make the counts differ.
Otherwise the caller falls back to the detailed path, which reads the file again and gives every
bad line its own reject with a reason. Empty fields come back as '' (not NULL), as the detailed
path's `string_split` gives them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import duckdb

ENABLED = True  # tests turn it off to compare both paths on the same file
FAST_TABLE = "_ingest_fast"
_FAST_REJECTS = "_ingest_fast_errors"
_NEVER_NULL = "chr(1) || chr(2) || chr(3)"  # a null string no file holds: empty fields stay ''


class _Spec(Protocol):
    path: Path
    delimiter: str
    quote: bool
    header: bool
    names: tuple[str, ...]
    encoding: str


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class FileFacts:
    """What one pass over the file's bytes showed."""

    lines: int  # physical lines as DuckDB's reader counts them
    control: bool  # a control character (C0, DEL, C1) somewhere that is not a line end or the delimiter


_UTF8_C1 = re.compile(rb"\xc2[\x80-\x9f]")  # U+0080..U+009F in UTF-8


def _control_bytes(encoding: str, delimiter: str) -> bytes:
    """The single bytes that mean a control character in the file's text (LF and the CR of CR LF
    end lines; a tab that is the delimiter separates fields). In UTF-8 the C1 controls are the
    two-byte sequences of `_UTF8_C1`; in latin-1 they are the bytes 0x80..0x9F."""
    c0 = bytes(b for b in range(0x20) if b not in (0x0A, 0x0D) and not (delimiter == "\t" and b == 0x09))
    return c0 + b"\x7f" + (bytes(range(0x80, 0xA0)) if encoding == "latin-1" else b"")


def scan(
    path: Path, spec_quote: bool, encoding: str, delimiter: str, chunk_bytes: int = 1 << 22
) -> FileFacts | None:
    """Line count and control characters in one pass, or None when the file cannot take the fast
    path whatever its content (a lone CR, a quote character where quotes mean something).
    Each test is one C-speed pass over a chunk (count, find, translate); the rarer ones run
    only on chunks where a cheaper test found their first byte."""
    lines = cr = crlf = 0
    control = False
    controls = _control_bytes(encoding, delimiter)
    utf8 = encoding != "latin-1"
    tail = b""
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            if spec_quote and b'"' in chunk:
                return None
            lines += chunk.count(b"\n")
            chunk_cr = chunk.count(b"\r")
            if chunk_cr or tail == b"\r":  # a CR LF may straddle the two chunks
                cr += chunk_cr
                crlf += (tail + chunk).count(b"\r\n")  # tail is one byte: no pair of its own
            if not control:
                control = len(chunk.translate(None, controls)) != len(chunk)
            if not control and utf8 and (tail == b"\xc2" or b"\xc2" in chunk):
                control = _UTF8_C1.search(tail + chunk) is not None
            tail = chunk[-1:]
    if cr != crlf:
        return None
    return FileFacts(lines + (1 if tail not in (b"", b"\n") else 0), control)


def read_whole_records(con: duckdb.DuckDBPyConnection, spec: _Spec, max_line_bytes: int) -> FileFacts | None:
    """Try the fast path: TEMP TABLE _ingest_fast (f1..fN) from DuckDB's reader. The file's facts
    when the table holds every record exactly as the detailed path would; None (and no table) when
    the caller must use the detailed path. Needs preserve_insertion_order: the rows are stored in
    file order, so a row's line is its rowid plus the lines before the first record (`rows_sql`),
    with no window over the whole file (`row_number() OVER ()` took 1.2-1.9 s more at 10M lines)."""
    if not ENABLED or spec.encoding == "utf-16" or len(spec.names) < 2:
        return None  # line counts in bytes do not hold for UTF-16; one column: blank lines are rows
    facts = scan(spec.path, spec.quote, spec.encoding, spec.delimiter)
    if facts is None:
        return None
    expected = facts.lines
    skip = 1 if spec.header else 0
    columns = ", ".join(f"'f{i + 1}': 'VARCHAR'" for i in range(len(spec.names)))
    reader = (
        f"read_csv({_sql_str(str(spec.path))}, columns={{{columns}}}, header=false, skip={skip}, "
        f"delim={_sql_str(spec.delimiter)}, quote='', escape='', auto_detect=false, strict_mode=true, "
        f"nullstr={_NEVER_NULL}, encoding={_sql_str(spec.encoding)}, max_line_size={max_line_bytes}, "
        f"store_rejects=true, rejects_table='{_FAST_REJECTS}', rejects_scan='{_FAST_REJECTS}_scans')"
    )
    drop(con)
    try:
        con.execute(f"CREATE TEMP TABLE {FAST_TABLE} AS SELECT * FROM {reader}")
        (rejected,) = con.execute(f"SELECT count(*) FROM {_FAST_REJECTS}").fetchone()  # type: ignore[misc]
        (rows,) = con.execute(f"SELECT count(*) FROM {FAST_TABLE}").fetchone()  # type: ignore[misc]
    except duckdb.Error:
        drop(con)
        return None
    if rejected or rows != max(expected - skip, 0):
        drop(con)
        return None
    return facts


def rows_sql(spec: _Spec, facts: FileFacts) -> str:
    """SELECT line, raw, _ctl, _err, f1..fN over the fast path's table (raw = the line as written;
    _ctl = whether a row may hold a control character)."""
    fields = [f"f{i + 1}" for i in range(len(spec.names))]
    raw = f"concat_ws({_sql_str(spec.delimiter)}, {', '.join(fields)})"
    first_line = 2 if spec.header else 1
    return (
        f"SELECT rowid + {first_line} AS line, {raw} AS raw, {str(facts.control).lower()} AS _ctl, "
        f"NULL::VARCHAR AS _err, {', '.join(fields)} FROM {FAST_TABLE}"
    )


def drop(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"DROP TABLE IF EXISTS {FAST_TABLE}")
    con.execute(f"DROP TABLE IF EXISTS {_FAST_REJECTS}; DROP TABLE IF EXISTS {_FAST_REJECTS}_scans")
