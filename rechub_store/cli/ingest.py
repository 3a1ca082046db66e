"""CLI commands: `ingest movielens|interactions|users|items` and `generate`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from rechub_store.cli.app import app, print_json, warehouse_of
from rechub_store.cli.options import Delimiter, DenseCols, Encoding, Json, Lake, RejectRatio, SparseCols
from rechub_store.cli.spark import sync_lake
from rechub_store.data.generate import SHAPES, generate, generate_into, get_shape
from rechub_store.data.ingest import (
    IngestResult,
    RejectRatioExceeded,
    ingest_interactions,
    ingest_items,
    ingest_users,
)
from rechub_store.data.movielens import ingest_movielens

ingest_app = typer.Typer(help="Load raw logs (CSV, Parquet, MovieLens) into the warehouse's raw tables.")
app.add_typer(ingest_app, name="ingest", no_args_is_help=True)


@ingest_app.callback()
def _ingest_options(ctx: typer.Context, lake: Lake = None) -> None:
    """`--lake DIR`: also write the warehouse's new raw batches to the lake as Parquet (--engine spark)."""
    ctx.meta["lake"] = lake


def _print_results(results: Sequence[IngestResult], as_json: bool) -> None:
    if as_json:
        print_json([r.as_dict() for r in results])
        return
    table = Table(title="ingest")
    for col in ("file", "kind", "batch_seq", "encoding", "read", "accepted", "rejected", "status"):
        table.add_column(
            col, justify="right" if col in ("read", "accepted", "rejected") else "left", overflow="fold"
        )
    for r in results:
        status = "duplicate" if r.duplicate_batch else "new"
        table.add_row(
            Path(r.path).name,
            r.kind,
            str(r.batch_seq),
            r.encoding or "-",
            str(r.rows_read),
            str(r.rows_accepted),
            str(r.rows_rejected),
            status,
        )
    Console().print(table)
    fresh = [r for r in results if not r.duplicate_batch]
    line = (
        f"{len(fresh)} new batch(es): {sum(r.rows_read for r in fresh)} rows read, "
        f"{sum(r.rows_accepted for r in fresh)} accepted, {sum(r.rows_rejected for r in fresh)} rejected"
    )
    if len(fresh) < len(results):
        line += f"; {len(results) - len(fresh)} file(s) already ingested, skipped"
    typer.echo(line)


def _run(ctx: typer.Context, ingest: Callable[..., IngestResult | list[IngestResult]]) -> None:
    """Open the warehouse, call `ingest(con, <the path argument>, **<the other options>)` (each command's
    options are its ingest function's keywords), print counts; on too many rejects print them, then fail."""
    options = dict(ctx.params)
    as_json = options.pop("as_json")
    path = options.pop("directory", None) or options.pop("file")
    with warehouse_of(ctx, create=True).session() as con:
        con.execute("SET enable_progress_bar = false")  # our spinner instead; stdout stays clean for --json
        try:
            with Console(stderr=True).status("ingesting ...", spinner="dots"):
                out = ingest(con, path, **options)
        except RejectRatioExceeded as exc:
            _print_results(exc.results, as_json)
            raise
    _print_results(out if isinstance(out, list) else [out], as_json)
    lake = ctx.meta.get("lake")
    if lake is not None:
        exported = sync_lake(warehouse_of(ctx), lake)
        if not as_json:
            typer.echo(f"lake {lake}: {len(exported)} raw batch(es) written")


@ingest_app.command("movielens")
def movielens_cmd(
    ctx: typer.Context,
    directory: Path = typer.Argument(
        ..., help="Folder with ml-1m (ratings.dat, ...) or ml-100k (u.data, ...)."
    ),
    encoding: Encoding = "auto",
    max_reject_ratio: RejectRatio = 0.05,
    as_json: Json = False,
) -> None:
    """Ingest a MovieLens ml-1m or ml-100k folder (ratings, users, movies with genres).

    Every file is checked (encoding, format) before any is loaded.
    """
    _run(ctx, ingest_movielens)


@ingest_app.command("interactions")
def interactions_cmd(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="CSV (with a header) or Parquet file of events."),
    user_col: str = typer.Option(..., "--user-col", help="Column with the user id."),
    item_col: str = typer.Option(..., "--item-col", help="Column with the item id."),
    time_col: str = typer.Option(..., "--time-col", help="Column with the event time."),
    rating_col: str = typer.Option(None, "--rating-col", help="Optional rating/weight column."),
    time_format: str = typer.Option(
        "auto", "--time-format", help="auto | seconds | milliseconds | iso (auto: numbers > 1e11 are ms)."
    ),
    delimiter: Delimiter = None,
    encoding: Encoding = "auto",
    max_reject_ratio: RejectRatio = 0.05,
    min_time: str = typer.Option(
        None, "--min-time", help="Reject events before this ISO date/time (UTC) [default 1990-01-01; none]"
    ),
    max_time: str = typer.Option(
        None, "--max-time", help="Reject events after this ISO date/time (UTC) [default now + 1 day; none]"
    ),
    as_json: Json = False,
) -> None:
    """Ingest an interactions file (user, item, time, optional rating) into raw.interactions."""
    _run(ctx, ingest_interactions)


@ingest_app.command("users")
def users_cmd(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="CSV (with a header) or Parquet file of user attributes."),
    id_col: str = typer.Option(..., "--id-col", help="Column with the user id."),
    sparse_cols: SparseCols = "",
    dense_cols: DenseCols = "",
    delimiter: Delimiter = None,
    encoding: Encoding = "auto",
    max_reject_ratio: RejectRatio = 0.05,
    as_json: Json = False,
) -> None:
    """Ingest user attributes into raw.user_attributes."""
    _run(ctx, ingest_users)


@ingest_app.command("items")
def items_cmd(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="CSV (with a header) or Parquet file of item attributes."),
    id_col: str = typer.Option(..., "--id-col", help="Column with the item id."),
    sparse_cols: SparseCols = "",
    dense_cols: DenseCols = "",
    text_cols: str = typer.Option("", "--text-cols", help="Comma-separated free-text columns (e.g. title)."),
    tags_col: str = typer.Option(None, "--tags-col", help="Column holding a tag list such as 'a|b|c'."),
    tags_sep: str = typer.Option("|", "--tags-sep", help="Separator inside the tags column."),
    delimiter: Delimiter = None,
    encoding: Encoding = "auto",
    max_reject_ratio: RejectRatio = 0.05,
    as_json: Json = False,
) -> None:
    """Ingest item attributes into raw.item_attributes and tag lists into raw.item_tags."""
    _run(ctx, ingest_items)


@app.command("generate")
def generate_cmd(
    ctx: typer.Context,
    out_dir: Path = typer.Argument(..., help="Folder to write interactions/users/items files into."),
    users: int = typer.Option(None, "--users", min=1, help="Number of users (default: the shape's, 10000)."),
    items: int = typer.Option(None, "--items", min=1, help="Number of items (default: the shape's, 5000)."),
    events: int = typer.Option(
        None, "--events", min=1, help="Number of interaction rows (default: the shape's, 1000000)."
    ),
    shape: str = typer.Option(
        "default",
        "--shape",
        help=f"Log shape: {' | '.join(SHAPES)} (distribution and default sizes; README, Data).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same files)."),
    fmt: str = typer.Option("parquet", "--format", help="parquet | csv"),
    chunk_events: int = typer.Option(2_000_000, "--chunk-events", min=1, help="Rows generated per chunk."),
    ingest: bool = typer.Option(False, "--ingest", help="Also ingest the files into the warehouse."),
    as_json: Json = False,
) -> None:
    """Write seeded synthetic logs (heavy tails, sequential structure, ties, odd ids)."""
    sizes = get_shape(shape).sizes
    users, items, events = (given or size for given, size in zip((users, items, events), sizes, strict=True))
    if ingest:
        with warehouse_of(ctx, create=True).session() as con:
            results = generate_into(
                con,
                out_dir,
                n_users=users,
                n_items=items,
                n_events=events,
                seed=seed,
                fmt=fmt,  # type: ignore[arg-type]
                shape=shape,
            )
        _print_results(results, as_json)
        return
    err = Console(stderr=True)
    with Progress(transient=True, console=err, disable=not err.is_terminal) as progress:
        task = progress.add_task("generating events", total=events)
        data = generate(
            out_dir,
            n_users=users,
            n_items=items,
            n_events=events,
            seed=seed,
            fmt=fmt,  # type: ignore[arg-type]
            chunk_events=chunk_events,
            on_chunk=lambda done, _total: progress.update(task, completed=done),
            shape=shape,
        )
    if as_json:
        print_json({k: str(v) for k, v in vars(data).items()})
    else:
        typer.echo(
            f"wrote {events} events, {users} users, {items} items in {data.n_chunks} chunk(s): "
            f"{data.interactions}, {data.users}, {data.items}"
        )
