"""MovieLens ml-1m and ml-100k, read in their original layouts through the generic ingest.

Why a module of its own: the files have no header, use `::` / tab / `|` separators, are
latin-1 as published (UTF-8 in some redistributions), pack the year into the title ('Heat
(1995)') and ml-100k spells genres as 19 flag columns. Here that becomes column names and SQL
expressions; validation, rejects, batches and idempotency are the generic ingest's.

A folder is checked whole before any file is loaded: every file's encoding (`auto`: UTF-8, else
latin-1, per file) and its basic format (most of its first lines split into the expected
fields). One broken file therefore stops the ingest with nothing loaded, instead of leaving the
ratings in and the movies out.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from rechub_store.data.encodings import python_codec
from rechub_store.data.ingest import (
    Attribute,
    FileSpec,
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
ML1M_MOVIES = ["item_id", "title", "genres"]
ML100K_ITEM = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
ML100K_ITEM += [f"g{i:02d}" for i in range(len(ML100K_GENRES))]  # one 0/1 flag column per genre
# Format check before loading: of a file's first lines, more than this share must split right.
_SAMPLE_LINES = 1000
_MIN_GOOD_SHARE = 0.5


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


def _check(path: Path, sep: str, names: list[str], encoding: str, layout: str) -> FileSpec:
    """Settle the file's encoding and check that it looks like the MovieLens file it is named as.

    Basic format: of its first non-blank lines, more than half must split into the expected
    number of fields (single bad rows are left to the loader, which rejects them with a reason).
    """
    spec, _ = open_spec(path, delimiter=sep, header=False, names=names, encoding=encoding, quote=False)
    seen = good = 0
    example = ""
    with path.open(encoding=python_codec(spec.encoding), newline="") as fh:
        for number, line in enumerate(fh, 1):
            text = line.rstrip("\r\n")
            if not text.strip(" \t\r"):
                continue
            seen += 1
            if len(text.split(sep)) == len(names):
                good += 1
            elif not example:
                example = f"line {number} has {len(text.split(sep))}: {text[:60]!r}"
            if seen == _SAMPLE_LINES:
                break
    if seen and good <= seen * _MIN_GOOD_SHARE:
        raise UserError(
            f"{path}: not a MovieLens {layout} {path.name} file: {seen - good} of its first {seen} lines "
            f"do not have {len(names)} fields separated by {sep!r} ({example}); nothing was ingested"
        )
    return spec


def _layout(layout: str, folder: Path) -> list[tuple[str, Path, str, list[str]]]:
    """(role, path, separator, column names) of the layout's files present in the folder."""
    if layout == "ml-1m":
        files = [
            ("ratings", folder / "ratings.dat", "::", ["user_id", "item_id", "rating", "timestamp"]),
            ("users", folder / "users.dat", "::", ["user_id", "gender", "age", "occupation", "zip"]),
            ("movies", folder / "movies.dat", "::", ML1M_MOVIES),
        ]
    else:
        files = [
            ("ratings", folder / "u.data", "\t", ["user_id", "item_id", "rating", "timestamp"]),
            ("users", folder / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"]),
            ("genres", folder / "u.genre", "|", ["name", "index"]),
            ("movies", folder / "u.item", "|", ML100K_ITEM),
        ]
    return [f for f in files if f[0] == "ratings" or f[1].is_file()]


def _ratings(con: duckdb.DuckDBPyConnection, spec: FileSpec) -> IngestResult:
    src = Source(con, spec, list(spec.names))
    plan = interactions_plan(
        user=src.ref("user_id", "ratings"),
        item=src.ref("item_id", "ratings"),
        ts=src.ref("timestamp", "ratings"),
        rating=src.ref("rating", "ratings"),
        time_format="seconds",
        names=("user_id", "item_id", "timestamp", "rating"),
    )
    return run_batch(con, src, plan)


def _users(con: duckdb.DuckDBPyConnection, spec: FileSpec) -> IngestResult:
    src = Source(con, spec, list(spec.names))
    attrs = [Attribute(n, "sparse", src.ref(n, "users"), n) for n in ("gender", "age", "occupation", "zip")]
    plan = attributes_plan(
        entity="user", id_expr=src.ref("user_id", "users"), id_name="user_id", attributes=attrs
    )
    return run_batch(con, src, plan)


def _title_attributes(title: str, fallback_year: str = "NULL") -> list[Attribute]:
    name = f"coalesce(nullif(regexp_extract({title}, '{_TITLE_RE}', 1), ''), {title})"
    year = f"coalesce(nullif(regexp_extract({title}, '{_TITLE_RE}', 2), ''), {fallback_year})"
    return [Attribute("title", "text", name, "title"), Attribute("year", "sparse", year, "title")]


def _movies_1m(con: duckdb.DuckDBPyConnection, spec: FileSpec) -> IngestResult:
    src = Source(con, spec, list(spec.names))
    plan = attributes_plan(
        entity="item",
        id_expr=src.ref("item_id", "movies"),
        id_name="item_id",
        attributes=_title_attributes(src.ref("title", "movies")),
        tags_expr=f"string_split({src.ref('genres', 'movies')}, '|')",
    )
    return run_batch(con, src, plan)


def _genre_names(spec: FileSpec | None) -> tuple[str, ...]:
    """Genre names from u.genre ('name|index' lines) when present, else the published list."""
    if spec is None:
        return ML100K_GENRES
    text = spec.path.read_text(encoding=python_codec(spec.encoding))
    rows = [line.rsplit("|", 1) for line in text.splitlines() if "|" in line]
    names = dict((int(i), n) for n, i in rows if i.strip().isdigit())
    return tuple(names.get(i, g) for i, g in enumerate(ML100K_GENRES))


def _items_100k(con: duckdb.DuckDBPyConnection, spec: FileSpec, genres: tuple[str, ...]) -> IngestResult:
    src = Source(con, spec, list(spec.names))
    flag_cols = [f"g{i:02d}" for i in range(len(genres))]
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
    con: duckdb.DuckDBPyConnection,
    directory: Path | str,
    *,
    encoding: str = "auto",
    max_reject_ratio: float | None = 0.05,
) -> list[IngestResult]:
    """Ingest a MovieLens folder: ratings, then users and movies when their files are present.

    Every file is checked first (encoding: `auto` = UTF-8, else latin-1, per file, or the one
    given; basic format), so a broken file raises a UserError before anything is loaded. Users
    get sparse attributes gender, age, occupation, zip; movies get text `title`, sparse `year`
    and genre tags. Ratings' timestamps are epoch seconds. Raises `RejectRatioExceeded` after
    everything is committed if a file had too many bad rows.
    """
    layout, folder = detect_movielens(directory)
    specs = {
        role: _check(path, sep, names, encoding, layout) for role, path, sep, names in _layout(layout, folder)
    }
    results = [_ratings(con, specs["ratings"])]
    if "users" in specs:
        results.append(_users(con, specs["users"]))
    if "movies" in specs:
        if layout == "ml-1m":
            results.append(_movies_1m(con, specs["movies"]))
        else:
            results.append(_items_100k(con, specs["movies"], _genre_names(specs.get("genres"))))
    check_reject_ratio(results, max_reject_ratio)
    return results
