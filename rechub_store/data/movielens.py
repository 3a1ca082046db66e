"""MovieLens ml-1m and ml-100k, read in their original layouts through the generic ingest.

Why a module of its own: the files have no header, use `::` / tab / `|` separators, are
latin-1, pack the year into the title ('Heat (1995)') and ml-100k spells genres as 19 flag
columns. Here that becomes column names and SQL expressions; validation, rejects, batches and
idempotency are the generic ingest's.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from rechub_store.data.ingest import (
    Attribute,
    IngestResult,
    Source,
    attributes_plan,
    check_reject_ratio,
    interactions_plan,
    open_spec,
    run_batch,
)
from rechub_store.errors import UserError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
# 'Title (1995)' -> 'Title' and '1995'.
_TITLE_RE = r"^(.*\S)\s*\((\d{4})\)\s*$"


def detect_movielens(directory: Path | str) -> tuple[str, Path]:
    """('ml-1m' | 'ml-100k', folder holding the files); also looks one folder down."""
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (expected a MovieLens ml-1m or ml-100k folder)")
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (folder / "ratings.dat").is_file():
            return "ml-1m", folder
        if (folder / "u.data").is_file():
            return "ml-100k", folder
    raise UserError(
        f"{root}: no MovieLens files found (expected ratings.dat for ml-1m or u.data for ml-100k)"
    )


def _spec(con: duckdb.DuckDBPyConnection, path: Path, sep: str, names: list[str]) -> Source:
    spec, cols = open_spec(path, delimiter=sep, header=False, names=names, encoding="latin-1", quote=False)
    return Source(con, spec, cols)


def _ratings(con: duckdb.DuckDBPyConnection, path: Path, sep: str) -> IngestResult:
    src = _spec(con, path, sep, ["user_id", "item_id", "rating", "timestamp"])
    plan = interactions_plan(
        user=src.ref("user_id", "ratings"),
        item=src.ref("item_id", "ratings"),
        ts=src.ref("timestamp", "ratings"),
        rating=src.ref("rating", "ratings"),
        time_format="seconds",
        names=("user_id", "item_id", "timestamp", "rating"),
    )
    return run_batch(con, src, plan)


def _users(con: duckdb.DuckDBPyConnection, path: Path, sep: str, names: list[str]) -> IngestResult:
    src = _spec(con, path, sep, names)
    attrs = [Attribute(n, "sparse", src.ref(n, "users"), n) for n in ("gender", "age", "occupation", "zip")]
    plan = attributes_plan(
        entity="user", id_expr=src.ref("user_id", "users"), id_name="user_id", attributes=attrs
    )
    return run_batch(con, src, plan)


def _title_attributes(title: str, fallback_year: str = "NULL") -> list[Attribute]:
    name = f"coalesce(nullif(regexp_extract({title}, '{_TITLE_RE}', 1), ''), {title})"
    year = f"coalesce(nullif(regexp_extract({title}, '{_TITLE_RE}', 2), ''), {fallback_year})"
    return [Attribute("title", "text", name, "title"), Attribute("year", "sparse", year, "title")]


def _movies_1m(con: duckdb.DuckDBPyConnection, path: Path) -> IngestResult:
    src = _spec(con, path, "::", ["item_id", "title", "genres"])
    plan = attributes_plan(
        entity="item",
        id_expr=src.ref("item_id", "movies"),
        id_name="item_id",
        attributes=_title_attributes(src.ref("title", "movies")),
        tags_expr=f"string_split({src.ref('genres', 'movies')}, '|')",
    )
    return run_batch(con, src, plan)


def _genre_names(folder: Path) -> tuple[str, ...]:
    """Genre names from u.genre ('name|index' lines) when present, else the published list."""
    path = folder / "u.genre"
    if not path.is_file():
        return ML100K_GENRES
    rows = [line.rsplit("|", 1) for line in path.read_text(encoding="latin-1").splitlines() if "|" in line]
    names = dict((int(i), n) for n, i in rows if i.strip().isdigit())
    return tuple(names.get(i, g) for i, g in enumerate(ML100K_GENRES))


def _items_100k(con: duckdb.DuckDBPyConnection, path: Path, genres: tuple[str, ...]) -> IngestResult:
    flag_cols = [f"g{i:02d}" for i in range(len(genres))]
    src = _spec(
        con, path, "|", ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flag_cols]
    )
    release = src.ref("release_date", "u.item")
    # Year from the title, else from the release date ('01-Jan-1995').
    fallback = f"nullif(regexp_extract({release}, '(\\d{{4}})\\s*$', 1), '')"
    picks = ", ".join(
        f"CASE WHEN trim({src.ref(c, 'u.item')}) = '1' THEN '{g.replace(chr(39), chr(39) * 2)}' END"
        for c, g in zip(flag_cols, genres, strict=True)
    )
    plan = attributes_plan(
        entity="item",
        id_expr=src.ref("item_id", "u.item"),
        id_name="item_id",
        attributes=_title_attributes(src.ref("title", "u.item"), fallback),
        tags_expr=f"list_filter([{picks}], lambda g: g IS NOT NULL)",
    )
    return run_batch(con, src, plan)


def ingest_movielens(
    con: duckdb.DuckDBPyConnection, directory: Path | str, *, max_reject_ratio: float | None = 0.05
) -> list[IngestResult]:
    """Ingest a MovieLens folder: ratings, then users and movies when their files are present.

    Users get sparse attributes gender, age, occupation, zip; movies get text `title`, sparse
    `year` and genre tags. Ratings' timestamps are epoch seconds. Raises `RejectRatioExceeded`
    after everything is committed if a file had too many bad rows.
    """
    layout, folder = detect_movielens(directory)
    results: list[IngestResult] = []
    if layout == "ml-1m":
        results.append(_ratings(con, folder / "ratings.dat", "::"))
        if (folder / "users.dat").is_file():
            names = ["user_id", "gender", "age", "occupation", "zip"]
            results.append(_users(con, folder / "users.dat", "::", names))
        if (folder / "movies.dat").is_file():
            results.append(_movies_1m(con, folder / "movies.dat"))
    else:
        results.append(_ratings(con, folder / "u.data", "\t"))
        if (folder / "u.user").is_file():
            names = ["user_id", "age", "gender", "occupation", "zip"]
            results.append(_users(con, folder / "u.user", "|", names))
        if (folder / "u.item").is_file():
            results.append(_items_100k(con, folder / "u.item", _genre_names(folder)))
    check_reject_ratio(results, max_reject_ratio)
    return results
