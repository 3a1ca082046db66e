"""Ingest: every rejection reason, nothing lost, idempotent batches, time formats, odd ids, CLI."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data.ingest import (
    RejectRatioExceeded,
    ensure_raw_tables,
    ingest_interactions,
    ingest_items,
    ingest_users,
)
from rechub_store.errors import UserError
from rechub_store.warehouse import Warehouse

UTC = dt.UTC


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _ingest(con, path: Path, **kw):
    kw.setdefault("max_reject_ratio", None)
    return ingest_interactions(con, path, user_col="user", item_col="item", time_col="ts", **kw)


def _rejects(con) -> dict[int, tuple[str, str]]:
    return {
        line: (raw, reason)
        for line, raw, reason in con.execute("SELECT line, raw, reason FROM raw.rejects").fetchall()
    }


BAD_FILE = (
    "user,item,ts,rating\n"  # line 1 header
    "u1,i1,1700000000,5\n"  # 2 ok
    "u2,i2,1700000000\n"  # 3 wrong field count
    "u3,i3,1700000000,4,extra\n"  # 4 wrong field count
    '"u4,i4,1700000000,4\n'  # 5 malformed quoting
    ",i5,1700000000,4\n"  # 6 empty user id
    "u6,  ,1700000000,4\n"  # 7 empty item id (blank)
    "u7,i7,,4\n"  # 8 empty time
    "u8,i8,yesterday,4\n"  # 9 unparsable time
    "u9,i9,1700000000,five\n"  # 10 unparsable rating
    "u10,i10,1700000000,inf\n"  # 11 non-finite rating
    "\n"  # 12 blank: not a row
    "u11,i11,1700000000,\n"  # 13 ok, rating NULL
)


def test_each_rejection_reason_with_line_and_raw_text(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(tmp_path / "events.csv", BAD_FILE)
    with warehouse.session() as con:
        r = _ingest(con, path, rating_col="rating")
        rejects = _rejects(con)
        accepted = con.execute("SELECT user_id, line, rating FROM raw.interactions ORDER BY line").fetchall()
    assert rejects == {
        3: ("u2,i2,1700000000", "wrong field count: expected 4, got 3"),
        4: ("u3,i3,1700000000,4,extra", "wrong field count: expected 4, got 5"),
        5: ('"u4,i4,1700000000,4', "malformed quoting"),
        6: (",i5,1700000000,4", "empty id: user"),
        7: ("u6,  ,1700000000,4", "empty id: item"),
        8: ("u7,i7,,4", "empty time: ts"),
        9: ("u8,i8,yesterday,4", "unparsable time: ts"),
        10: ("u9,i9,1700000000,five", "unparsable number: rating"),
        11: ("u10,i10,1700000000,inf", "unparsable number: rating"),
    }
    assert accepted == [("u1", 2, 5.0), ("u11", 13, None)]
    assert (r.rows_read, r.rows_accepted, r.rows_rejected) == (11, 2, 9)
    assert r.rows_read == r.rows_accepted + r.rows_rejected


def test_counts_match_tables_and_batches_record_each_file(warehouse: Warehouse, tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", BAD_FILE)
    b = _write(tmp_path / "b.csv", "user,item,ts\nx,y,1700000001\nx,z,1700000002\n")
    with warehouse.session() as con:
        ra, rb = _ingest(con, a, rating_col="rating"), _ingest(con, b)
        batches = con.execute(
            "SELECT batch_id, batch_seq, kind, rows_read, rows_accepted, rows_rejected, sha256 "
            "FROM raw.batches ORDER BY batch_seq"
        ).fetchall()
        per_batch = dict(
            con.execute("SELECT batch_seq, count(*) FROM raw.interactions GROUP BY 1").fetchall()
        )
        n_rejects = con.execute(
            "SELECT count(*) FROM raw.rejects WHERE batch_id = ?", [ra.batch_id]
        ).fetchone()[0]
    assert [row[1] for row in batches] == [1, 2]
    assert batches[0][:6] == (ra.batch_id, 1, "interactions", 11, 2, 9)
    assert batches[1][:6] == (rb.batch_id, 2, "interactions", 2, 2, 0)
    assert len(batches[0][6]) == 64
    assert per_batch == {1: ra.rows_accepted, 2: rb.rows_accepted}
    assert n_rejects == ra.rows_rejected


def test_same_content_twice_adds_nothing(warehouse: Warehouse, tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", BAD_FILE)
    copy = _write(tmp_path / "copy_of_a.csv", BAD_FILE)
    with warehouse.session() as con:
        first = _ingest(con, a, rating_col="rating")
        again = _ingest(con, a, rating_col="rating")
        renamed = _ingest(con, copy, rating_col="rating")
        counts = [
            con.execute(f"SELECT count(*) FROM raw.{t}").fetchone()[0]
            for t in ("interactions", "rejects", "batches")
        ]
        # The same bytes as another kind are a different batch.
        users = ingest_users(con, a, id_col="user", sparse_cols="item", max_reject_ratio=None)
    assert not first.duplicate_batch
    assert again.duplicate_batch and renamed.duplicate_batch
    assert again.batch_id == renamed.batch_id == first.batch_id
    assert (again.rows_read, again.rows_accepted) == (first.rows_read, first.rows_accepted)
    assert counts == [2, 9, 1]
    assert not users.duplicate_batch and users.batch_seq == 2


def test_epoch_seconds_milliseconds_and_iso(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "t.csv",
        "user,item,ts\n"
        "a,1,1700000000\n"
        "a,2,1700000000000\n"
        "a,3,1700000000.5\n"
        "a,4,2023-11-14T22:13:20Z\n"
        "a,5,2023-11-14 23:13:20+01:00\n"
        "a,6,2023-11-14 22:13:20\n"
        "a,7,2023-11-14\n"
        "a,8,-86400\n",
    )
    with warehouse.session() as con:
        r = _ingest(con, path, min_time="none")  # 1969 is outside the default window
        got = dict(con.execute("SELECT item_id, ts FROM raw.interactions").fetchall())
    base = dt.datetime(2023, 11, 14, 22, 13, 20)
    assert r.rows_rejected == 0
    assert got == {
        "1": base,
        "2": base,
        "3": base + dt.timedelta(microseconds=500_000),
        "4": base,
        "5": base,
        "6": base,
        "7": dt.datetime(2023, 11, 14),
        "8": dt.datetime(1969, 12, 31),
    }


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        ("milliseconds", "1700000000000", dt.datetime(2023, 11, 14, 22, 13, 20)),
        ("milliseconds", "5000", dt.datetime(1970, 1, 1, 0, 0, 5)),
        ("seconds", "5000", dt.datetime(1970, 1, 1, 1, 23, 20)),
        ("iso", "2023-11-14T22:13:20", dt.datetime(2023, 11, 14, 22, 13, 20)),
        ("iso", "1700000000", None),
        ("seconds", "2023-11-14", None),
    ],
)
def test_forced_time_format(warehouse: Warehouse, tmp_path: Path, fmt: str, value: str, expected) -> None:
    path = _write(tmp_path / "t.csv", f"user,item,ts\nu,i,{value}\n")
    with warehouse.session() as con:
        r = _ingest(con, path, time_format=fmt, min_time="none")
        rows = con.execute("SELECT ts FROM raw.interactions").fetchall()
        reasons = [x[1] for x in _rejects(con).values()]
    if expected is None:
        assert r.rows_rejected == 1 and reasons == ["unparsable time: ts"]
    else:
        assert rows == [(expected,)]


def test_bad_time_format_option_is_a_user_error(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "user,item,ts\nu,i,1\n")
    with warehouse.session() as con, pytest.raises(UserError, match="--time-format"):
        _ingest(con, path, time_format="days")


ODD_IDS = [
    "ü-ser",
    "名前",
    "🍕 pizza",
    'say "hi"',
    "comma,inside",
    "semi;colon|pipe",
    "123456789012345678901234567890",
    "007",
    " padded ",
    "'single'",
    "a\\b",
    "-1e5",
]


def test_odd_ids_survive_exactly_csv(warehouse: Warehouse, tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user", "item", "ts"])
        for k, uid in enumerate(ODD_IDS):
            w.writerow([uid, ODD_IDS[-1 - k], 1_700_000_000 + k])
    with warehouse.session() as con:
        r = _ingest(con, path)
        got = con.execute("SELECT user_id, item_id FROM raw.interactions ORDER BY line").fetchall()
    assert r.rows_rejected == 0
    assert got == [(u, ODD_IDS[-1 - k]) for k, u in enumerate(ODD_IDS)]


def test_parquet_typed_columns_nulls_and_row_numbers(warehouse: Warehouse, tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    ts = [
        dt.datetime(2024, 1, 1, 12, tzinfo=UTC),
        None,
        dt.datetime(2024, 1, 2, tzinfo=UTC),
        dt.datetime(2024, 1, 3, tzinfo=UTC),
    ]
    table = pa.table(
        {
            "uid": pa.array([18446744073709551615, 2, 3, None], pa.uint64()),
            "item": pa.array(["x,1", 'q"2', "ü3", "i4"]),
            "when": pa.array(ts, pa.timestamp("us", tz="Europe/Berlin")),
            "score": pa.array([1.5, 2.0, None, 4.0]),
        }
    )
    pq.write_table(table, path)
    with warehouse.session() as con:
        r = ingest_interactions(
            con,
            path,
            user_col="uid",
            item_col="item",
            time_col="when",
            rating_col="score",
            max_reject_ratio=None,
        )
        rows = con.execute(
            "SELECT user_id, item_id, ts, rating, line FROM raw.interactions ORDER BY line"
        ).fetchall()
        rejects = con.execute("SELECT line, raw, reason FROM raw.rejects ORDER BY line").fetchall()
    assert (r.rows_read, r.rows_accepted, r.rows_rejected) == (4, 2, 2)
    assert rows == [
        ("18446744073709551615", "x,1", dt.datetime(2024, 1, 1, 12), 1.5, 1),
        ("3", "ü3", dt.datetime(2024, 1, 2), None, 3),
    ]
    assert [(line, reason) for line, _, reason in rejects] == [(2, "empty time: when"), (4, "empty id: uid")]
    assert json.loads(rejects[0][1])["item"] == 'q"2'


def test_parquet_epoch_milliseconds(warehouse: Warehouse, tmp_path: Path) -> None:
    path = tmp_path / "ms.parquet"
    pq.write_table(pa.table({"u": ["a"], "i": ["b"], "t": pa.array([1_700_000_000_000], pa.int64())}), path)
    with warehouse.session() as con:
        ingest_interactions(con, path, user_col="u", item_col="i", time_col="t")
        assert con.execute("SELECT ts FROM raw.interactions").fetchall() == [
            (dt.datetime(2023, 11, 14, 22, 13, 20),)
        ]


def test_missing_column_unreadable_and_empty_files(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(tmp_path / "e.csv", "user,item,time\nu,i,1\n")
    empty = _write(tmp_path / "empty.csv", "")
    with warehouse.session() as con:
        ensure_raw_tables(con)
        with pytest.raises(
            UserError, match=r"e\.csv: no column 'ts' \(for --time-col\); columns are: user, item, time"
        ):
            _ingest(con, path)
        with pytest.raises(UserError, match="file not found"):
            _ingest(con, tmp_path / "nope.csv")
        with pytest.raises(UserError, match="is a directory"):
            _ingest(con, tmp_path)
        with pytest.raises(UserError, match="empty file"):
            _ingest(con, empty)
        corrupt = tmp_path / "corrupt.parquet"
        corrupt.write_bytes(b"PAR1" + b"\x00garbage" * 10)
        with pytest.raises(UserError, match=r"corrupt\.parquet: cannot read Parquet file"):
            _ingest(con, corrupt)
        assert con.execute("SELECT count(*) FROM raw.batches").fetchone()[0] == 0


def test_header_only_file_is_an_empty_batch(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(tmp_path / "h.csv", "user,item,ts\n")
    with warehouse.session() as con:
        r = _ingest(con, path)
    assert (r.rows_read, r.rows_accepted, r.rows_rejected) == (0, 0, 0)


def test_invalid_utf8_fails_whole_file_atomically(warehouse: Warehouse, tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    good = "".join(f"u{k},i{k},{1_700_000_000 + k}\n" for k in range(5000))
    path.write_bytes(b"user,item,ts\n" + good.encode() + "Café,x,1700000000\n".encode("latin-1"))
    with warehouse.session() as con:
        ensure_raw_tables(con)
        with pytest.raises(UserError, match=r"not valid UTF-8 at line 5002 .*--encoding latin-1"):
            _ingest(con, path, encoding="utf-8")
        counts = [
            con.execute(f"SELECT count(*) FROM raw.{t}").fetchone()[0]
            for t in ("interactions", "rejects", "batches")
        ]
        assert counts == [0, 0, 0]
        r = _ingest(con, path)  # auto: not UTF-8, so latin-1
        assert r.rows_accepted == 5001 and r.encoding == "latin-1"
        assert con.execute("SELECT count(*) FROM raw.interactions WHERE user_id = 'Café'").fetchone()[0] == 1


def test_delimiter_sniffing_and_explicit(warehouse: Warehouse, tmp_path: Path) -> None:
    semi = _write(tmp_path / "s.csv", 'user;item;ts\n"a;b";i;1700000001\n')
    tsv = _write(tmp_path / "t.tsv", "user\titem\tts\na,b\ti\t1700000002\n")
    with warehouse.session() as con:
        assert _ingest(con, semi).rows_accepted == 1
        assert _ingest(con, tsv, delimiter="\\t").rows_accepted == 1
        got = sorted(con.execute("SELECT user_id FROM raw.interactions").fetchall())
    assert got == [("a,b",), ("a;b",)]


def test_reject_ratio_exceeded_still_records_everything(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", BAD_FILE)
    with warehouse.session() as con:
        with pytest.raises(RejectRatioExceeded, match=r"9 of 11 rows rejected") as info:
            _ingest(con, path, rating_col="rating", max_reject_ratio=0.5)
        assert info.value.exit_code == 2
        assert con.execute("SELECT count(*) FROM raw.interactions").fetchone()[0] == 2
        assert con.execute("SELECT count(*) FROM raw.rejects").fetchone()[0] == 9


def test_user_attributes_long_form(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "users.csv",
        "id,gender,age,score,ignored\n1,M,18,3.5,z\n2,,25, 7 ,z\n3,F,,abc,z\n,M,1,1,z\n4,F,30,,z\n",
    )
    with warehouse.session() as con:
        r = ingest_users(
            con, path, id_col="id", sparse_cols="gender,age", dense_cols=["score"], max_reject_ratio=None
        )
        rows = con.execute(
            "SELECT user_id, name, value, kind, line FROM raw.user_attributes ORDER BY line, name"
        ).fetchall()
        reasons = sorted(_rejects(con).items())
    assert (r.kind, r.rows_read, r.rows_accepted, r.rows_rejected) == ("users", 5, 3, 2)
    assert rows == [
        ("1", "age", "18", "sparse", 2),
        ("1", "gender", "M", "sparse", 2),
        ("1", "score", "3.5", "dense", 2),
        ("2", "age", "25", "sparse", 3),
        ("2", "score", "7.0", "dense", 3),
        ("4", "age", "30", "sparse", 6),
        ("4", "gender", "F", "sparse", 6),
    ]
    assert reasons == [(4, ("3,F,,abc,z", "unparsable number: score")), (5, (",M,1,1,z", "empty id: id"))]


def test_item_attributes_and_tags(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "items.csv",
        'id,title,cat,price,tags\n1,"Hello, ""world""",a,3,x|y| x |\n2,T2,b,,\n3,T3,c,1e2,solo\n',
    )
    with warehouse.session() as con:
        r = ingest_items(
            con, path, id_col="id", sparse_cols="cat", dense_cols="price", text_cols="title", tags_col="tags"
        )
        attrs = con.execute(
            "SELECT item_id, name, value, kind FROM raw.item_attributes ORDER BY item_id, name"
        ).fetchall()
        tags = con.execute("SELECT item_id, tag, line FROM raw.item_tags ORDER BY item_id, tag").fetchall()
    assert r.rows_accepted == 3 and r.kind == "items"
    assert attrs == [
        ("1", "cat", "a", "sparse"),
        ("1", "price", "3.0", "dense"),
        ("1", "title", 'Hello, "world"', "text"),
        ("2", "cat", "b", "sparse"),
        ("2", "title", "T2", "text"),
        ("3", "cat", "c", "sparse"),
        ("3", "price", "100.0", "dense"),
        ("3", "title", "T3", "text"),
    ]
    assert tags == [("1", "x", 2), ("1", "y", 2), ("3", "solo", 4)]


def test_attribute_names_must_be_identifiers(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(tmp_path / "u.csv", "id,Zip Code\n1,123\n")
    with (
        warehouse.session() as con,
        pytest.raises(UserError, match="--sparse-cols: attribute name 'Zip Code'"),
    ):
        ingest_users(con, path, id_col="id", sparse_cols=["Zip Code"])


# ---------------------------------------------------------------------------- CLI


def _cli(warehouse: Warehouse, *args: str):
    return CliRunner().invoke(app, ["--warehouse", str(warehouse.path), *args])


def test_cli_interactions_json_and_table(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(tmp_path / "ok.csv", "u,i,t,r\na,b,1700000000,5\nc,d,1700000001,4\n")
    res = _cli(warehouse, "ingest", "interactions", str(path), "--user-col", "u", "--item-col", "i",
               "--time-col", "t", "--rating-col", "r", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload[0]["rows_accepted"] == 2 and payload[0]["duplicate_batch"] is False
    res = _cli(
        warehouse,
        "ingest",
        "interactions",
        str(path),
        "--user-col",
        "u",
        "--item-col",
        "i",
        "--time-col",
        "t",
    )
    assert res.exit_code == 0
    assert "0 new batch(es): 0 rows read, 0 accepted, 0 rejected; 1 file(s) already ingested" in res.stdout


def test_cli_errors_are_one_line(warehouse: Warehouse, tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", BAD_FILE)
    res = _cli(warehouse, "ingest", "interactions", str(path), "--user-col", "user", "--item-col", "item",
               "--time-col", "nope")  # fmt: skip
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "'nope'" in res.stderr
    assert "Traceback" not in res.output
    res = _cli(warehouse, "ingest", "interactions", str(path), "--user-col", "user", "--item-col", "item",
               "--time-col", "ts", "--rating-col", "rating", "--max-reject-ratio", "0.1")  # fmt: skip
    assert res.exit_code == 2
    assert "9 of 11 rows rejected" in res.stderr and res.stderr.count("\n") == 1
    assert "1 new batch(es): 11 rows read, 2 accepted, 9 rejected" in res.stdout  # counts still printed


def test_cli_users_items_and_generate(warehouse: Warehouse, tmp_path: Path) -> None:
    out = str(tmp_path / "gen")
    res = _cli(warehouse, "generate", out, "--users", "20", "--items", "15", "--events", "300",
               "--format", "csv", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    files = json.loads(res.stdout)
    res = _cli(warehouse, "ingest", "users", files["users"], "--id-col", "user_id",
               "--sparse-cols", "gender,country", "--dense-cols", "account_age_days", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["rows_accepted"] == 20
    res = _cli(warehouse, "ingest", "items", files["items"], "--id-col", "item_id", "--sparse-cols",
               "category", "--text-cols", "title", "--tags-col", "tags", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["rows_accepted"] == 15
    res = _cli(warehouse, "generate", str(tmp_path / "gen2"), "--users", "5", "--events", "2")
    assert res.exit_code == 2 and res.stderr.startswith("error: ")


def test_parquet_items_with_list_tags(warehouse: Warehouse, tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    table = pa.table(
        {
            "item": ["a", "b", None],
            "genre": ["x", None, "z"],
            "tags": pa.array([["t1", "t2", "t1"], [], ["t3"]], pa.list_(pa.string())),
        }
    )
    pq.write_table(table, path)
    with warehouse.session() as con:
        r = ingest_items(
            con, path, id_col="item", sparse_cols="genre", tags_col="tags", max_reject_ratio=None
        )
        tags = con.execute("SELECT item_id, tag FROM raw.item_tags ORDER BY ALL").fetchall()
        attrs = con.execute("SELECT item_id, name, value FROM raw.item_attributes").fetchall()
    assert (r.rows_read, r.rows_accepted, r.rows_rejected) == (3, 2, 1)
    assert tags == [("a", "t1"), ("a", "t2")]
    assert attrs == [("a", "genre", "x")]


def test_killed_ingest_leaves_all_or_nothing(warehouse: Warehouse, tmp_path: Path) -> None:
    """kill -9 while a file is being loaded: the batch is either complete or absent."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "big.csv"
    path.write_text(
        "user,item,ts\n" + "".join(f"u{k % 997},i{k % 313},{1_600_000_000 + k}\n" for k in range(400_000))
    )
    code = (
        "import sys; from rechub_store.warehouse import Warehouse; "
        "from rechub_store.data.ingest import ingest_interactions; "
        "con = Warehouse.at(sys.argv[1], threads=1).connect(); print('ready', flush=True); "
        "ingest_interactions(con, sys.argv[2], user_col='user', item_col='item', time_col='ts')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(warehouse.path), str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with warehouse.session() as con:
        ensure_raw_tables(con)
        batches = con.execute("SELECT rows_accepted FROM raw.batches").fetchall()
        n = con.execute("SELECT count(*) FROM raw.interactions").fetchone()[0]
        print("batch committed before the kill:", bool(batches))
        assert batches in ([], [(400_000,)])
        assert n == (batches[0][0] if batches else 0)
        r = _ingest(con, path)  # a rerun completes and nothing is duplicated
        assert con.execute("SELECT count(*) FROM raw.interactions").fetchone()[0] == 400_000
        assert r.rows_accepted == 400_000
