"""Edge-case inputs through the whole nightly (ingest -> build -> train -> score -> evaluate -> publish):
each run completes with sane results, or fails with a clear one-line error; never a crash."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from rel_helpers import BASE_DATE, run_in_process, write_job, write_rows

from rechub_store.errors import UserError

pytestmark = pytest.mark.slow

T = 1_700_000_000


def _regular(n_users: int = 12, n_items: int = 15, start: int = 0) -> list[tuple]:
    return [
        (f"u{u}", f"i{(u * 3 + j) % n_items}", T + u * 1000 + j * 60)
        for u in range(start, start + n_users)
        for j in range(6)
    ]


ODD_IDS = ["o'neil", 'say "hi"', "a,b;c|d", "ünï-çødé ✓", "  spaced  ", "🙂", "\\N", "NULL"]
FAR_TIMES = [-2_208_988_800, 0, T, 32_503_680_000, 253_402_300_799]  # 1900, 1970, 2023, 3000, 9999

CASES: dict[str, list[tuple]] = {
    "empty input": [],
    "an id with a newline inside quotes": [("new\nline", f"i{j % 5}", T + j) for j in range(6)] + _regular(6),
    "single user": [("solo", f"i{j % 4}", T + j * 60) for j in range(8)],
    "a user with one event": [*_regular(), ("lonely", "i1", T + 99)],
    "an item only in the test split": [*_regular(), ("u0", "only-in-test", T + 10**6)],
    "ids with unicode, quotes and separators": [
        (uid, f"item {ODD_IDS[(i + j) % len(ODD_IDS)]}", T + i * 1000 + j * 60)
        for i, uid in enumerate(ODD_IDS)
        for j in range(6)
    ]
    + _regular(6),
    "timestamps far in the past and future": [
        (f"u{u}", f"i{(u + j) % 10}", ts + (u if ts > T else 0))
        for u in range(10)
        for j, ts in enumerate(FAR_TIMES)
    ],
    "timestamps far in the past and future, window opened": [
        (f"u{u}", f"i{(u + j) % 10}", ts + (u if ts > T else 0))
        for u in range(10)
        for j, ts in enumerate(FAR_TIMES)
    ],
    "a few ids with control characters (tab, NUL, ESC)": [
        *_regular(20),
        ("tab\there", "i1", T + 5),
        ("u1", "nul\x00item", T + 6),
        ("esc\x1b[31m", "i2", T + 7),
    ],
    "huge numeric ids": [
        (str(10**30 + u), str(18446744073709551615 + (u * 7 + j) % 12), T + u * 1000 + j)
        for u in range(12)
        for j in range(6)
    ],
    "all events at one timestamp (ties)": [
        (f"u{u}", f"i{(u + j) % 9}", T) for u in range(10) for j in range(5)
    ],
}


# Must complete; the others may instead fail with a clear one-line error (empty input must fail).
MUST_COMPLETE = {
    case
    for case in CASES
    if case
    not in ("empty input", "an id with a newline inside quotes", "timestamps far in the past and future")
}
# Extra keys for the job's ingest source, per case.
SOURCE_KEYS = {"timestamps far in the past and future, window opened": 'min_time = "none"\nmax_time = "none"'}
# The reason a case that must fail gives.
FAILS_BECAUSE = {
    "empty input": "",
    "an id with a newline inside quotes": "rows rejected",  # a newline is a control character
    "timestamps far in the past and future": "rows rejected",  # 1900, 1970, 3000, 9999 out of the window
}


@pytest.mark.parametrize("case", list(CASES))
def test_edge_case_input_completes_or_fails_cleanly(case: str, tmp_path: Path, tally) -> None:
    rows = CASES[case]
    write_rows(tmp_path / "data" / "events-1.csv", rows)
    job = write_job(tmp_path / "data" / "job.toml", source_keys=SOURCE_KEYS.get(case, ""))
    wh = tmp_path / "wh" / "rechub.duckdb"
    with tally.case("inputs"):
        _check(case, rows, wh, job)


def _check(case: str, rows: list[tuple], wh: Path, job: Path) -> None:
    try:
        report = run_in_process(wh, job, BASE_DATE)
    except UserError as exc:  # a clean failure: one line that says what is wrong
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        assert case not in MUST_COMPLETE, message
        assert FAILS_BECAUSE[case] in message, message
        return
    assert case not in FAILS_BECAUSE, f"{case!r} must be refused, not published"
    assert report.status == "success"

    con = duckdb.connect(str(wh.parent / "analytics.duckdb"), read_only=True)
    try:
        recs = con.execute("SELECT user_id, item_id, rank FROM recommendations").fetchall()
    finally:
        con.close()
    users = {r[0] for r in rows}
    items = {r[1] for r in rows}
    assert {r[0] for r in recs} <= users, "recommendations must carry raw user ids"
    assert {r[1] for r in recs} <= items, "recommendations must carry raw item ids"
    per_user: dict[str, list[int]] = {}
    for user, _, rank in recs:
        per_user.setdefault(user, []).append(rank)
    assert all(sorted(ranks) == list(range(1, len(ranks) + 1)) for ranks in per_user.values())
    if case == "ids with unicode, quotes and separators":
        assert set(ODD_IDS) & {r[0] for r in recs}, "odd ids should survive the round trip"
    if case.startswith("a few ids with control characters"):
        seen = {r[0] for r in recs} | {r[1] for r in recs}
        assert not any(ch in "".join(seen) for ch in "\t\x00\x1b"), "control characters never published"
        con = duckdb.connect(str(wh), read_only=True)
        try:
            reasons = sorted(r[0] for r in con.execute("SELECT reason FROM raw.rejects").fetchall())
        finally:
            con.close()
        assert reasons == [
            "control character in id: item_id",
            "control character in id: user_id",
            "control character in id: user_id",
        ]
    if case.endswith("window opened"):
        con = duckdb.connect(str(wh), read_only=True)
        try:
            (n,) = con.execute("SELECT count(*) FROM raw.interactions").fetchone()
        finally:
            con.close()
        assert n == len(rows), "with the window opened every time is accepted"
