"""Text encodings: UTF-8 first, latin-1 when the bytes are not UTF-8 (decided before any row is
loaded), `--encoding` to override, a UTF-8 BOM tolerated, and MovieLens folders checked whole
before any file is loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data import encodings
from rechub_store.data.encodings import detect_encoding, first_invalid_utf8, normalize_encoding
from rechub_store.data.ingest import ingest_interactions, ingest_items, ingest_users
from rechub_store.data.movielens import ingest_movielens
from rechub_store.errors import UserError
from rechub_store.jobs.config import JobConfig
from rechub_store.jobs.job import Nightly
from rechub_store.jobs.records import JobRecorder
from rechub_store.warehouse import Warehouse

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"  # ml-1m / ml-100k: latin-1, as published
TITLES = {"ml-1m": ("4", "Misérables, Les"), "ml-100k": ("4", "Café au lait")}


def reencode(src: Path, dst: Path, encoding: str, bom: bytes = b"") -> Path:
    """A copy of a latin-1 MovieLens folder with every file re-encoded (as redistributions do)."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        (dst / path.name).write_bytes(bom + path.read_bytes().decode("latin-1").encode(encoding))
    return dst


def raw_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    tables = ("batches", "interactions", "user_attributes", "item_attributes", "item_tags", "rejects")
    exists = {
        r[0]
        for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'raw'").fetchall()
    }
    return {
        t: con.execute(f"SELECT count(*) FROM raw.{t}").fetchone()[0] if t in exists else 0 for t in tables
    }


def titles(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = con.execute("SELECT item_id, value FROM raw.item_attributes WHERE name = 'title'").fetchall()
    return dict(rows)


# ------------------------------------------------------------------ detection


def test_detection_and_names(tmp_path: Path) -> None:
    cases = {
        "ascii.csv": (b"a,b\n1,2\n", "utf-8"),
        "utf8.csv": ("a,b\n1,Misérables\n".encode(), "utf-8"),
        "bom.csv": (b"\xef\xbb\xbf" + "a,b\n1,Misérables\n".encode(), "utf-8"),
        "latin1.csv": ("a,b\n1,Misérables\n".encode("latin-1"), "latin-1"),
        "truncated.csv": ("a,b\n1,é".encode()[:-1], "latin-1"),  # a multi-byte character cut at EOF
        "utf16.csv": ("a,b\n1,Misérables\n".encode("utf-16"), "utf-16"),  # little-endian, with BOM
        "empty.csv": (b"", "utf-8"),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert detect_encoding(tmp_path / name) == expected, name
    assert detect_encoding(tmp_path / "utf8.csv", "latin-1") == "latin-1"  # an override is obeyed
    with pytest.raises(UserError, match=r"latin1\.csv: not valid UTF-8 at line 2 \(byte 9\)"):
        detect_encoding(tmp_path / "latin1.csv", "UTF8")
    (tmp_path / "be.csv").write_bytes(b"\xfe\xff" + "a,b\n".encode("utf-16-be"))
    with pytest.raises(UserError, match="UTF-16 big-endian text is not supported"):
        detect_encoding(tmp_path / "be.csv")
    assert [normalize_encoding(n) for n in ("UTF_8", "ISO-8859-1", "Latin1", "utf16")] == [
        "utf-8",
        "latin-1",
        "latin-1",
        "utf-16",
    ]
    with pytest.raises(UserError, match="expected one of auto, utf-8, latin-1, utf-16"):
        normalize_encoding("cp1252")


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60), junk=st.binary(max_size=8), chunk=st.integers(1, 7))
def test_first_invalid_utf8_matches_python_across_chunk_boundaries(
    tmp_path_factory: pytest.TempPathFactory, text: str, junk: bytes, chunk: int
) -> None:
    data = text.encode() + junk + text.encode()
    path = tmp_path_factory.mktemp("u") / "f"
    path.write_bytes(data)
    old, encodings._CHUNK = encodings._CHUNK, chunk  # tiny chunks: characters split across reads
    try:
        found = first_invalid_utf8(path)
    finally:
        encodings._CHUNK = old
    try:
        data.decode("utf-8")
        expected = None
    except UnicodeDecodeError as exc:
        expected = (exc.start, data.count(b"\n", 0, exc.start) + 1)
    assert found == expected


# ------------------------------------------------------------------ MovieLens folders


@pytest.mark.parametrize("layout", ["ml-1m", "ml-100k"])
def test_movielens_utf8_and_latin1_folders_give_the_same_rows(
    layout: str, tmp_path: Path, warehouse: Warehouse
) -> None:
    utf8 = reencode(FIXTURES / layout, tmp_path / f"{layout}-utf8", "utf-8")
    other = Warehouse(tmp_path / "other" / "rechub.duckdb", threads=2)
    with warehouse.session() as con:
        from_latin1 = ingest_movielens(con, FIXTURES / layout, max_reject_ratio=None)
        latin1_titles, latin1_counts = titles(con), raw_counts(con)
    with other.session() as con:
        from_utf8 = ingest_movielens(con, utf8, max_reject_ratio=None)
        utf8_titles, utf8_counts = titles(con), raw_counts(con)
    item, title = TITLES[layout]
    assert latin1_titles[item] == utf8_titles[item] == title
    assert latin1_titles == utf8_titles and latin1_counts == utf8_counts
    # per file: the ratings are ASCII (valid UTF-8), the movie titles are not, in the published folder
    assert {r.kind: r.encoding for r in from_latin1}["items"] == "latin-1"
    assert {r.encoding for r in from_utf8} == {"utf-8"}
    assert {r.kind: r.encoding for r in from_latin1}["interactions"] == "utf-8"


def test_movielens_encoding_override(tmp_path: Path, warehouse: Warehouse) -> None:
    with warehouse.session() as con:
        # forcing UTF-8 on the latin-1 folder: refused before anything is loaded (ratings included)
        with pytest.raises(UserError, match=r"movies\.dat: not valid UTF-8 at line 4 "):
            ingest_movielens(con, FIXTURES / "ml-1m", encoding="utf-8", max_reject_ratio=None)
        assert set(raw_counts(con).values()) == {0}
        # forcing latin-1 on a UTF-8 re-encoding is obeyed (and shows why auto is the default)
        utf8 = reencode(FIXTURES / "ml-1m", tmp_path / "utf8", "utf-8")
        ingest_movielens(con, utf8, encoding="latin-1", max_reject_ratio=None)
        assert titles(con)["4"] == "Misérables, Les".encode().decode("latin-1")


def test_movielens_bom_is_not_part_of_the_first_id(tmp_path: Path, warehouse: Warehouse) -> None:
    folder = reencode(FIXTURES / "ml-1m", tmp_path / "bom", "utf-8", bom=b"\xef\xbb\xbf")
    with warehouse.session() as con:
        results = ingest_movielens(con, folder, max_reject_ratio=None)
        first = con.execute("SELECT user_id, item_id FROM raw.interactions WHERE line = 1").fetchone()
        first_movie = con.execute("SELECT item_id FROM raw.item_tags WHERE line = 1 LIMIT 1").fetchone()
        assert titles(con)["4"] == "Misérables, Les"
    assert first == ("1", "1") and first_movie == ("1",)
    assert {r.encoding for r in results} == {"utf-8"}


@pytest.mark.parametrize(
    ("broken", "content", "message"),
    [
        ("movies.dat", "1,Toy Story (1995),Animation\n2,Jumanji (1995),Adventure\n", "movies.dat file: 2 of"),
        ("users.dat", "\x00\x01\x02garbage\n" * 5, "do not have 5 fields separated by '::'"),
        ("ratings.dat", "1\t1\t5\t978300760\n", "do not have 4 fields separated by '::'"),
    ],
)
def test_one_broken_file_and_nothing_of_the_folder_is_ingested(
    broken: str, content: str, message: str, tmp_path: Path, warehouse: Warehouse
) -> None:
    folder = tmp_path / "ml-1m"
    shutil.copytree(FIXTURES / "ml-1m", folder)
    (folder / broken).write_text(content, encoding="latin-1")
    with warehouse.session() as con:
        with pytest.raises(UserError) as info:
            ingest_movielens(con, folder, max_reject_ratio=None)
        assert set(raw_counts(con).values()) == {0}
    text = str(info.value)
    assert broken in text and message in text and "nothing was ingested" in text and "\n" not in text


def test_cli_movielens_encoding(warehouse: Warehouse) -> None:
    base = ["--warehouse", str(warehouse.path), "ingest", "movielens", str(FIXTURES / "ml-1m")]
    res = CliRunner().invoke(app, [*base, "--encoding", "utf-8"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.stderr.strip().startswith("error: ") and "movies.dat: not valid UTF-8" in res.stderr
    res = CliRunner().invoke(app, [*base, "--max-reject-ratio", "0.3", "--json"])
    assert res.exit_code == 0, res.output
    assert '"encoding": "latin-1"' in res.stdout


# ------------------------------------------------------------------ ingest interactions | users | items


def test_bom_csv_header_and_values(tmp_path: Path, warehouse: Warehouse) -> None:
    bom = b"\xef\xbb\xbf"
    (tmp_path / "events.csv").write_bytes(
        bom + "user,item,ts\nzoé,i1,1700000000\nu2,i2,1700000001\n".encode()
    )
    (tmp_path / "users.csv").write_bytes(bom + "user;country\nzoé;FR\n".encode())
    (tmp_path / "items.csv").write_bytes(bom + "item\ttitle\ni1\tMisérables\n".encode())
    with warehouse.session() as con:
        r = ingest_interactions(con, tmp_path / "events.csv", user_col="user", item_col="item", time_col="ts")
        ingest_users(con, tmp_path / "users.csv", id_col="user", sparse_cols="country")
        ingest_items(con, tmp_path / "items.csv", id_col="item", text_cols="title")
        users = con.execute("SELECT user_id FROM raw.interactions ORDER BY line").fetchall()
        attrs = con.execute("SELECT user_id, value FROM raw.user_attributes").fetchall()
        title = con.execute("SELECT value FROM raw.item_attributes").fetchall()
    assert r.encoding == "utf-8" and (r.rows_accepted, r.rows_rejected) == (2, 0)
    assert users == [("zoé",), ("u2",)] and attrs == [("zoé", "FR")] and title == [("Misérables",)]


def test_interactions_latin1_auto_utf16_and_override(tmp_path: Path, warehouse: Warehouse) -> None:
    text = "user,item,ts\nzoé,i1,1700000000\n"
    (tmp_path / "latin1.csv").write_bytes(text.encode("latin-1"))
    (tmp_path / "utf16.csv").write_bytes(text.replace("zoé", "zoë").encode("utf-16"))
    cols = {"user_col": "user", "item_col": "item", "time_col": "ts"}
    with warehouse.session() as con:
        assert ingest_interactions(con, tmp_path / "latin1.csv", **cols).encoding == "latin-1"
        assert ingest_interactions(con, tmp_path / "utf16.csv", **cols).encoding == "utf-16"
        users = sorted(r[0] for r in con.execute("SELECT user_id FROM raw.interactions").fetchall())
        with pytest.raises(UserError, match=r"latin1\.csv: not valid UTF-8 at line 2"):
            ingest_interactions(con, tmp_path / "latin1.csv", encoding="utf-8", **cols)
    assert users == ["zoé", "zoë"]
    args = ["--warehouse", str(warehouse.path), "ingest", "interactions", str(tmp_path / "latin1.csv")]
    cols_args = ["--user-col", "user", "--item-col", "item", "--time-col", "ts"]
    res = CliRunner().invoke(app, [*args, *cols_args, "--encoding", "cp1252"])
    assert res.exit_code == 2 and "--encoding: expected one of auto, utf-8, latin-1, utf-16" in res.stderr


def test_job_file_source_encoding(tmp_path: Path, warehouse: Warehouse) -> None:
    folder = reencode(FIXTURES / "ml-1m", tmp_path / "data" / "ml-1m", "utf-8")
    (tmp_path / "job.toml").write_text(
        '[[ingest.sources]]\nkind = "movielens"\npath = "data/ml-1m"\n'
        '[ingest.sources.options]\nencoding = "utf-8"\nmax_reject_ratio = 0.5\n'
    )
    job = JobConfig.load(tmp_path / "job.toml")
    assert job.sources[0].options["encoding"] == "utf-8" and job.source_files(job.sources[0]) == [folder]
    with warehouse.session() as con:
        step = Nightly(warehouse, job, "n1")._run_step(con, JobRecorder(con, "n1", job.name), "ingest")
        assert step.status == "success", step.error
        assert titles(con)["4"] == "Misérables, Les"
    assert {f["encoding"] for f in step.details["files"]} == {"utf-8"}
