"""Command-line options that several commands share, declared once as `Annotated` aliases, and
`settings_from`: a command's options as a settings class, checked by the one configuration path."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from rechub_store.config import flags, typed

T = TypeVar("T")

Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]

# --engine spark (build-features, score; cli/spark.py)
Engine = Annotated[str, typer.Option("--engine", help="duckdb (one box) | spark (needs the spark extra).")]
SparkMaster = Annotated[
    str | None,
    typer.Option(
        "--spark-master",
        envvar="RECHUB_SPARK_MASTER",
        help="Spark master URL (spark://host:7077, yarn, k8s://...) "
        "[env RECHUB_SPARK_MASTER; default local[threads]]",
    ),
]
Lake = Annotated[
    Path | None,
    typer.Option("--lake", envvar="RECHUB_LAKE", help="Lake folder of the Spark engine [env RECHUB_LAKE]."),
]

# reading files (ingest interactions|users|items|movielens)
Delimiter = Annotated[
    str | None, typer.Option("--delimiter", help="CSV field separator (default: sniffed from the header).")
]
Encoding = Annotated[
    str,
    typer.Option(
        "--encoding",
        help="Text encoding: auto (UTF-8, else latin-1; checked over the whole file before loading), "
        "utf-8, latin-1, utf-16.",
    ),
]
RejectRatio = Annotated[
    float,
    typer.Option(
        "--max-reject-ratio",
        min=0.0,
        max=1.0,
        help="Exit non-zero when more than this share of rows is rejected.",
    ),
]
SparseCols = Annotated[str, typer.Option("--sparse-cols", help="Comma-separated categorical columns.")]
DenseCols = Annotated[str, typer.Option("--dense-cols", help="Comma-separated numeric columns.")]

# writing results (score, evaluate)
RunId = Annotated[str | None, typer.Option("--run-id", help="Run id to write [default: manual-<model run>]")]


def settings_from(
    ctx: typer.Context, cls: type[T], renamed: Mapping[str, str] | None = None, **values: Any
) -> T:
    """`cls` (a settings class) from the command's options of the same names, plus `values` (parsed
    from options under other names: `renamed` maps such a field to its option, `ks` -> `k`); a bad
    value is a one-line error naming its flag (`--neg-ratio: expected ...`)."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = {k: v for k, v in ctx.params.items() if k in fields}
    renamed = renamed or {}
    return typed(cls, {**given, **values}, lambda loc: flags((renamed.get(str(loc[0]), loc[0]), *loc[1:])))
