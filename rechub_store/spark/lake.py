"""The lake: a folder (local, or mounted from shared storage) that the Spark engine reads and writes.

    <lake>/raw/<table>/batch-<batch_seq>.parquet   raw.* rows of one ingested batch (DuckDB writes them)
    <lake>/features/_manifest.json                 the published feature tables (see `manifest`)
    <lake>/features/builds/<build_id>/<table>/     one build's tables, Parquet (part files)
    <lake>/scratch/                                a running job's intermediate steps

Raw batches are immutable: each is exported once, its `raw.batches` row written last, so a batch
whose `batches` file exists is complete and an export killed half-way is redone by the next one.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from rechub_store.warehouse import table_exists

# raw tables in the order they are written; `batches` last marks a batch as complete
RAW_TABLES = ("interactions", "user_attributes", "item_attributes", "item_tags", "batches")


def raw_dir(lake: Path, table: str) -> Path:
    return lake / "raw" / table


def _batch_file(lake: Path, table: str, batch_seq: int) -> Path:
    return raw_dir(lake, table) / f"batch-{batch_seq:08d}.parquet"


def export_raw(con: duckdb.DuckDBPyConnection, lake: Path) -> list[int]:
    """Write the warehouse's raw batches that the lake lacks as Parquet; returns their batch_seq."""
    lake = Path(lake)
    if not table_exists(con, "raw.batches"):
        return []
    done = {
        int(p.stem.split("-")[1]) for p in raw_dir(lake, "batches").glob("batch-*.parquet") if p.is_file()
    }
    todo = [int(r[0]) for r in con.execute("SELECT batch_seq FROM raw.batches ORDER BY batch_seq").fetchall()]
    todo = [b for b in todo if b not in done]
    for batch_seq in todo:
        for table in RAW_TABLES:
            if not table_exists(con, f"raw.{table}"):
                continue
            path = _batch_file(lake, table, batch_seq)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
            con.execute(
                f"COPY (SELECT * FROM raw.{table} WHERE batch_seq = ?) "
                f"TO '{_sql_path(tmp)}' (FORMAT parquet)",
                [batch_seq],
            )
            os.replace(tmp, path)
    return todo


def raw_tables(lake: Path) -> dict[str, Path]:
    """raw.<table> -> its folder, for the tables the lake holds complete batches of."""
    lake = Path(lake)
    return {
        f"raw.{t}": raw_dir(lake, t)
        for t in RAW_TABLES
        if raw_dir(lake, t).is_dir() and any(raw_dir(lake, t).glob("batch-*.parquet"))
    }


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
