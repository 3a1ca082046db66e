"""Fuzzed malformed input rows: nothing lost, every reject explained, no traceback from the CLI.

Each example writes a CSV mixing well-formed rows (written by Python's csv module, so odd ids
are quoted properly) with garbage lines (wrong field counts, stray quotes, empty ids, bad
times and ratings, unicode, separators, huge numbers), ingests it and checks against a plain
Python reference of what a record is (RFC 4180: a quoted field may span lines; an unbalanced
quote costs only its own line): rows read = accepted + rejected = the reference's records,
each reject has a known reason and its exact raw text, every clearly valid row that is a record
of its own is accepted with its ids intact, and the CLI exits 0 or 2 with a one-line error.
A second property writes valid RFC 4180 files (quoted newlines, doubled quotes, CRLF) and
checks that every row is accepted, numbered by its first line.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tally import TALLY
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data.ingest import ingest_interactions

HEADER = "user,item,ts,rating"
REASONS = (
    "wrong field count: expected 4, got ",
    "malformed quoting",
    "empty id: user",
    "empty id: item",
    "control character in id: ",
    "empty time: ts",
    "unparsable time: ts",
    "time out of range: ts",
    "unparsable number: rating",
)
RECORD = re.compile(r'(?:"(?:[^"]|"")*"|[^",]*)(?:,(?:"(?:[^"]|"")*"|[^",]*))*')


def reference_records(lines: list[str]) -> dict[int, str]:
    """First line number -> text of every non-blank record after the header, in plain Python: a
    line with an odd number of quotes opens a quoted field that the next such line closes; if the
    lines between do not form one well-formed record, each line is a record of its own."""
    odd = [n for n in range(2, len(lines) + 1) if lines[n - 1].count('"') % 2]
    joined: dict[int, tuple[int, str]] = {}
    for i in range(0, len(odd), 2):
        first, last = odd[i], odd[i + 1] if i + 1 < len(odd) else len(lines)
        text = "\n".join(lines[first - 1 : last])
        if RECORD.fullmatch(text):
            joined[first] = (last, text)
    out: dict[int, str] = {}
    n = 2
    while n <= len(lines):
        last, text = joined.get(n, (n, lines[n - 1]))
        if text.strip(" \t\r"):
            out[n] = text
        n = last + 1
    return out


# Any printable text: no control characters (newlines end a row; NUL and friends are binary).
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12)
ODD = st.sampled_from(
    [
        "",
        " ",
        '"',
        '""',
        ",",
        "a,b",
        'q"x',
        "9" * 40,
        "-0",
        "ü",
        "名前",
        "🍕",
        "|",
        ";",
        "\\",
        "'",
        "NULL",
        "nan",
    ]
)
IDS = st.one_of(TEXT, ODD)
TIMES = st.one_of(
    st.integers(-(10**14), 10**14).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "garbage", "2024-01-01", "2024-13-45", "2024-01-01T00:00:00Z", "1e400", "9" * 30]),
    TEXT,
)
RATINGS = st.one_of(
    st.integers(-5, 10).map(str), st.sampled_from(["", "x", "inf", "1e400", "3.5", " 4 "]), TEXT
)


def _csv_line(fields: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue()


VALID = st.tuples(
    IDS.filter(lambda s: s.strip(" \t\r") != ""),
    IDS.filter(lambda s: s.strip(" \t\r") != ""),
    st.integers(631_152_000, 1_700_000_000),  # inside the default time window (1990 .. now)
    st.integers(1, 5),
)
ROW = st.one_of(
    VALID.map(lambda v: ("valid", v, _csv_line([v[0], v[1], str(v[2]), str(v[3])]))),
    st.tuples(IDS, IDS, TIMES, RATINGS).map(lambda f: ("csv", None, _csv_line(list(f)))),
    st.lists(st.one_of(IDS, TIMES), max_size=7).map(lambda f: ("fields", None, _csv_line(f))),
    st.lists(TEXT, max_size=6).map(lambda f: ("raw", None, ",".join(f))),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROW, min_size=1, max_size=25))
def test_fuzzed_rows_nothing_lost_every_reject_explained(rows: list[tuple[str, object, str]]) -> None:
    lines = [HEADER] + [line for _, _, line in rows]
    records = reference_records(lines)
    with tempfile.TemporaryDirectory() as tmp, TALLY.case("inputs"):
        path = Path(tmp) / "fuzz.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        con = duckdb.connect()
        con.execute("CREATE SCHEMA raw")
        r = ingest_interactions(
            con,
            path,
            user_col="user",
            item_col="item",
            time_col="ts",
            rating_col="rating",
            max_reject_ratio=None,
        )
        assert r.rows_read == len(records) == r.rows_accepted + r.rows_rejected
        assert con.execute("SELECT count(*) FROM raw.interactions").fetchone()[0] == r.rows_accepted
        rejects = con.execute("SELECT line, raw, reason FROM raw.rejects").fetchall()
        assert len(rejects) == r.rows_rejected
        for line, raw, reason in rejects:
            assert raw == records[line]
            assert reason.startswith(REASONS), reason
        accepted = set(
            con.execute(
                "SELECT user_id, item_id, epoch(ts)::BIGINT, rating, line FROM raw.interactions"
            ).fetchall()
        )
        for k, (kind, value, line) in enumerate(rows):
            if kind == "valid" and records.get(k + 2) == line:
                user, item, ts, rating = value  # type: ignore[misc]
                assert (user, item, ts, float(rating), k + 2) in accepted

        result = CliRunner().invoke(
            app,
            ["--warehouse", str(Path(tmp) / "wh" / "r.duckdb"), "ingest", "interactions", str(path),
             "--user-col", "user", "--item-col", "item", "--time-col", "ts", "--rating-col", "rating"],
        )  # fmt: skip
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert "Traceback" not in result.output
        assert result.exit_code in (0, 2), result.output
        if result.exit_code == 2:
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
            assert r.reject_ratio > 0.05


# Printable text with the characters that need quoting; notes may also hold line breaks.
PRINTABLE = st.text(st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from('",;|'), max_size=8)
NOTE = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r") | st.just("\n"), max_size=12
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(
            PRINTABLE.filter(lambda s: s.strip(" \t\r")),
            PRINTABLE.filter(lambda s: s.strip(" \t\r")),
            st.integers(631_152_000, 1_700_000_000),
            NOTE,
        ),
        min_size=1,
        max_size=20,
    ),
    crlf=st.booleans(),
)
def test_valid_rfc4180_is_accepted_whole(rows: list[tuple[str, str, int, str]], crlf: bool) -> None:
    """Quoted fields with line breaks, doubled quotes and CRLF line ends: every row accepted, ids
    exact, each numbered by the physical line it starts on."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(["user", "item", "ts", "note"])
    starts = []
    for user, item, ts, note in rows:
        starts.append(buf.getvalue().count("\n") + 1)
        writer.writerow([user, item, ts, note])
    with tempfile.TemporaryDirectory() as tmp, TALLY.case("inputs"):
        path = Path(tmp) / "valid.csv"
        path.write_bytes(buf.getvalue().encode("utf-8"))
        con = duckdb.connect()
        con.execute("CREATE SCHEMA raw")
        r = ingest_interactions(
            con, path, user_col="user", item_col="item", time_col="ts", max_reject_ratio=None
        )
        rejects = con.execute("SELECT line, reason FROM raw.rejects").fetchall()
        assert (r.rows_read, r.rows_accepted, r.rows_rejected) == (len(rows), len(rows), 0), rejects
        got = con.execute(
            "SELECT user_id, item_id, epoch(ts)::BIGINT, line FROM raw.interactions ORDER BY line"
        ).fetchall()
        assert got == [(u, i, t, line) for (u, i, t, _), line in zip(rows, starts, strict=True)]
