"""Ingest's fast path (DuckDB's reader over the whole file, data/fastread.py) gives exactly what the
detailed line-by-line path gives: the same accepted rows with the same line numbers, the same rejects
with the same raw text and reason, the same counts; and it steps aside whenever it could not."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rechub_store.data import fastread
from rechub_store.data.ingest import ensure_raw_tables, ingest_interactions

GOOD = [
    "u1,i1,1700000000,5",
    "ü2,ï2,1700000001,4.5",
    "u3,i-3,1700000002,",
    "42,7,1600000000,1",
    " u1,i1,1700000000,5",
]
BAD = [
    ",i1,1700000000,5",  # empty user id
    "u1, ,1700000000,5",  # blank item id
    "u\x01,i1,1700000000,5",  # control character in an id
    "u1,i\u0085,1700000000,5",  # C1 control character
    "u1,i1,,5",  # empty time
    "u1,i1,soon,5",  # unparsable time
    "u1,i1,100,5",  # before the window
    "u1,i1,99999999999,5",  # after the window
    "u1,i1,1700000000,five",  # unparsable rating
    "u1,i1,1700000000,inf",  # not finite
]
BREAKERS = ["", "u1,i1,1700000000", "u1,i1,1700000000,5,6", '"u1",i1,1700000000,5', "  "]  # fall back


def ingest(tmp: Path, text: bytes, delimiter: str, fast: bool) -> dict[str, list[tuple]]:
    path = tmp / "log.csv"
    path.write_bytes(text)
    fastread.ENABLED = fast
    try:
        con = duckdb.connect()
        con.execute("SET threads = 1")
        ensure_raw_tables(con)
        r = ingest_interactions(
            con, path, user_col="user", item_col="item", time_col="ts", rating_col="rating",
            delimiter=delimiter, max_reject_ratio=None, min_time="2000-01-01", max_time="2030-01-01",
        )  # fmt: skip
    finally:
        fastread.ENABLED = True
    out = {
        "rows": con.execute(
            "SELECT user_id, item_id, ts, rating, line FROM raw.interactions ORDER BY line"
        ).fetchall(),
        "rejects": con.execute("SELECT line, raw, reason FROM raw.rejects ORDER BY line").fetchall(),
        "counts": [(r.rows_read, r.rows_accepted, r.rows_rejected)],
    }
    con.close()
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.sampled_from(GOOD + BAD), min_size=0, max_size=10),
    breaker=st.one_of(st.none(), st.tuples(st.integers(0, 12), st.sampled_from(BREAKERS))),
    delimiter=st.sampled_from([",", "::", "\t", "|"]),
    crlf=st.booleans(),
    final_newline=st.booleans(),
)
def test_fast_path_equals_the_detailed_path(
    tmp_path: Path,
    lines: list[str],
    breaker: tuple[int, str] | None,
    delimiter: str,
    crlf: bool,
    final_newline: bool,
) -> None:
    body = list(lines)
    if breaker is not None:
        body.insert(min(breaker[0], len(body)), breaker[1])
    rows = ["user,item,ts,rating", *body]
    end = "\r\n" if crlf else "\n"
    text = end.join(r.replace(",", delimiter) for r in rows) + (end if final_newline else "")
    data = text.encode("utf-8")
    assert ingest(tmp_path, data, delimiter, fast=True) == ingest(tmp_path, data, delimiter, fast=False)


def test_a_clean_file_takes_the_fast_path_and_a_broken_one_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[bool] = []
    original = fastread.read_whole_records

    def spy(*args, **kwargs):
        facts = original(*args, **kwargs)
        taken.append(facts is not None)
        return facts

    monkeypatch.setattr(fastread, "read_whole_records", spy)
    clean = ("user,item,ts,rating\n" + "\n".join(GOOD + BAD) + "\n").encode()
    got = ingest(tmp_path, clean, ",", fast=True)
    assert taken == [True] and len(got["rejects"]) == len(BAD)
    blank_line = ("user,item,ts,rating\n" + "\n\n".join(GOOD) + "\n").encode()
    got = ingest(tmp_path, blank_line, ",", fast=True)
    assert taken == [True, False] and len(got["rows"]) == len(GOOD) and not got["rejects"]
    assert [line for *_, line in got["rows"]] == [2, 4, 6, 8, 10]  # blank lines counted, not rows


def _scan_reference(data: bytes, quote: bool, encoding: str, delimiter: str) -> fastread.FileFacts | None:
    """What `scan` must report, from the whole file at once: regular expressions, no chunks."""
    if quote and b'"' in data:
        return None
    if data.count(b"\r") != data.count(b"\r\n"):
        return None  # a lone CR
    c0 = "".join(
        chr(b) for b in range(0x20) if b not in (0x0A, 0x0D) and not (delimiter == "\t" and b == 0x09)
    )
    if encoding == "latin-1":
        control = re.search(f"[{re.escape(c0)}\x7f\x80-\x9f]".encode("latin-1"), data)
    else:
        control = re.search(f"[{re.escape(c0)}\x7f]".encode("latin-1") + rb"|\xc2[\x80-\x9f]", data)
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return fastread.FileFacts(lines, control is not None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(
        st.sampled_from(
            [b"a", b",", b"\t", b"\n", b"\r", b"\r\n", b"\xc2", b"\x85", b"\xa0", b"\x01", b"\x7f", b'"']
        ),
        max_size=40,
    ),
    chunk_bytes=st.integers(1, 7),
    quote=st.booleans(),
    encoding=st.sampled_from(["utf-8", "latin-1"]),
    delimiter=st.sampled_from([",", "\t"]),
)
def test_scan_in_chunks_sees_what_the_whole_file_holds(
    tmp_path: Path, parts: list[bytes], chunk_bytes: int, quote: bool, encoding: str, delimiter: str
) -> None:
    # tiny chunks: CR LF pairs and UTF-8 C1 sequences split across chunk boundaries
    data = b"".join(parts)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    got = fastread.scan(path, quote, encoding, delimiter, chunk_bytes=chunk_bytes)
    assert got == _scan_reference(data, quote, encoding, delimiter)
