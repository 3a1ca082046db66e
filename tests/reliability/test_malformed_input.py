"""Fuzzed malformed input rows: nothing lost, every reject explained, no traceback from the CLI.

Each example writes a CSV mixing well-formed rows (written by Python's csv module, so odd ids
are quoted properly) with garbage lines (wrong field counts, stray quotes, empty ids, bad
times and ratings, unicode, separators, huge numbers), ingests it and checks:
rows read = accepted + rejected = non-blank lines, each reject has a known reason and its
exact raw line, every clearly valid row is accepted with its ids intact, and the CLI exits
0 or 2 with a one-line error.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data.ingest import ingest_interactions

HEADER = "user,item,ts,rating"
REASONS = (
    "wrong field count: expected 4, got ",
    "malformed quoting",
    "empty id: user",
    "empty id: item",
    "empty time: ts",
    "unparsable time: ts",
    "unparsable number: rating",
)
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
    st.integers(0, 4_000_000_000),
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
    with tempfile.TemporaryDirectory() as tmp:
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
        non_blank = sum(1 for line in lines[1:] if line.strip(" \t\r"))
        assert r.rows_read == non_blank == r.rows_accepted + r.rows_rejected
        assert con.execute("SELECT count(*) FROM raw.interactions").fetchone()[0] == r.rows_accepted
        rejects = con.execute("SELECT line, raw, reason FROM raw.rejects").fetchall()
        assert len(rejects) == r.rows_rejected
        for line, raw, reason in rejects:
            assert raw == lines[line - 1]
            assert reason.startswith(REASONS), reason
        accepted = set(
            con.execute(
                "SELECT user_id, item_id, epoch(ts)::BIGINT, rating, line FROM raw.interactions"
            ).fetchall()
        )
        for k, (kind, value, _) in enumerate(rows):
            if kind == "valid":
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
