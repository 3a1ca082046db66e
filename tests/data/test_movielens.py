"""MovieLens ml-1m and ml-100k layouts, from the hand-made files in tests/fixtures/."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data.ingest import RejectRatioExceeded
from rechub_store.data.movielens import detect_movielens, ingest_movielens
from rechub_store.errors import UserError
from rechub_store.warehouse import Warehouse

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _counts(results) -> list[tuple[str, int, int, int]]:
    return [(r.kind, r.rows_read, r.rows_accepted, r.rows_rejected) for r in results]


def _loaded(con) -> tuple[dict, dict, dict, dict]:
    """What ingest stored: titles and years by item, tags by item, the attributes of user 1."""

    def pairs(sql: str) -> dict:
        return dict(con.execute(sql).fetchall())

    return (
        pairs("SELECT item_id, value FROM raw.item_attributes WHERE name = 'title'"),
        pairs("SELECT item_id, value FROM raw.item_attributes WHERE name = 'year'"),
        pairs("SELECT item_id, list(tag ORDER BY tag) FROM raw.item_tags GROUP BY 1"),
        pairs("SELECT name, value FROM raw.user_attributes WHERE user_id = '1'"),
    )


def test_ml1m(warehouse: Warehouse) -> None:
    with warehouse.session() as con:
        results = ingest_movielens(con, FIXTURES / "ml-1m", max_reject_ratio=None)
        rejects = con.execute("SELECT path, line, reason FROM raw.rejects ORDER BY path, line").fetchall()
        first = con.execute("SELECT * FROM raw.interactions WHERE line = 1").fetchone()
        title, year, tags, user1 = _loaded(con)
    assert _counts(results) == [("interactions", 26, 22, 4), ("users", 8, 6, 2), ("items", 8, 7, 1)]
    assert [(Path(p).name, line, reason) for p, line, reason in rejects] == [
        ("movies.dat", 7, "wrong field count: expected 3, got 2"),
        ("ratings.dat", 11, "unparsable number: rating"),
        ("ratings.dat", 17, "wrong field count: expected 4, got 2"),
        ("ratings.dat", 22, "unparsable time: timestamp"),
        ("ratings.dat", 26, "empty id: user_id"),
        ("users.dat", 7, "empty id: user_id"),
        ("users.dat", 8, "wrong field count: expected 5, got 4"),
    ]
    assert first == ("1", "1", dt.datetime(2000, 12, 31, 22, 12, 40), 5.0, 1, 1)
    assert title["4"] == "Misérables, Les"  # latin-1 decoded
    assert title["6"] == "City of Lost Children, The (Cité des enfants perdus, La)"
    assert title["5"] == "Untitled Project" and "5" not in year
    assert year["1"] == "1995" and year["6"] == "1995"
    assert tags["1"] == ["Animation", "Children's", "Comedy"] and tags["8"] == [
        "Adventure",
        "IMAX",
        "Romance",
    ]
    assert user1 == {"gender": "F", "age": "1", "occupation": "10", "zip": "48067"}


def test_ml100k(warehouse: Warehouse) -> None:
    with warehouse.session() as con:
        results = ingest_movielens(con, FIXTURES / "ml-100k", max_reject_ratio=None)
        rejects = con.execute("SELECT line, reason FROM raw.rejects WHERE path LIKE '%u.data'").fetchall()
        title, year, tags, user1 = _loaded(con)
        ties = con.execute(
            "SELECT count(*) FROM raw.interactions WHERE user_id = '5' AND epoch(ts) = 875635748"
        )
        n_ties = ties.fetchone()[0]
    assert _counts(results) == [("interactions", 23, 20, 3), ("users", 8, 6, 2), ("items", 8, 7, 1)]
    assert sorted(rejects) == [
        (14, "unparsable number: rating"),
        (15, "wrong field count: expected 4, got 2"),
        (23, "unparsable time: timestamp"),
    ]
    assert title["4"] == "Café au lait" and year["4"] == "1993"
    assert title["8"] == "No Year Title" and year["8"] == "1996"  # year from the release date
    assert title["5"] == "unknown" and "5" not in year
    assert tags["1"] == ["Animation", "Children's", "Comedy"]
    assert tags["2"] == ["Action", "Adventure", "Thriller"] and tags["5"] == ["unknown"]
    assert user1 == {"age": "24", "gender": "M", "occupation": "technician", "zip": "85711"}
    assert n_ties == 3  # timestamp ties kept as they are


def test_detect_layouts_one_folder_down_and_errors(tmp_path: Path) -> None:
    assert detect_movielens(FIXTURES / "ml-1m") == ("ml-1m", FIXTURES / "ml-1m")
    assert detect_movielens(FIXTURES / "ml-100k")[0] == "ml-100k"
    shutil.copytree(FIXTURES / "ml-100k", tmp_path / "download" / "ml-100k")
    assert detect_movielens(tmp_path / "download") == ("ml-100k", tmp_path / "download" / "ml-100k")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no MovieLens files found"):
        detect_movielens(tmp_path / "empty")
    with pytest.raises(UserError, match="not a directory"):
        detect_movielens(tmp_path / "missing")


def test_only_ratings_present(warehouse: Warehouse, tmp_path: Path) -> None:
    (tmp_path / "ml").mkdir()
    shutil.copy(FIXTURES / "ml-100k" / "u.data", tmp_path / "ml" / "u.data")
    with warehouse.session() as con:
        assert [r.kind for r in ingest_movielens(con, tmp_path / "ml", max_reject_ratio=None)] == [
            "interactions"
        ]


def test_reingest_is_a_noop_and_ratio_is_enforced(warehouse: Warehouse) -> None:
    with warehouse.session() as con:
        with pytest.raises(RejectRatioExceeded):
            ingest_movielens(con, FIXTURES / "ml-1m")  # the fixtures have ~15-25% bad rows
        before = con.execute("SELECT count(*) FROM raw.interactions").fetchone()[0]
        again = ingest_movielens(con, FIXTURES / "ml-1m")  # duplicates: nothing new, no ratio error
        after = con.execute("SELECT count(*) FROM raw.interactions").fetchone()[0]
    assert all(r.duplicate_batch for r in again)
    assert before == after == 22


def test_cli_movielens(warehouse: Warehouse) -> None:
    args = ["--warehouse", str(warehouse.path), "ingest", "movielens", str(FIXTURES / "ml-100k")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.output
    res = CliRunner().invoke(app, [*args, "--max-reject-ratio", "0.3"])
    assert res.exit_code == 0, res.output
    assert "0 new batch(es)" in res.stdout and "3 file(s) already ingested" in res.stdout
