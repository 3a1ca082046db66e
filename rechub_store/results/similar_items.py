"""`similar_items`: each item's most similar items (item_id, similar_item_id, rank, score), the
item-to-item table that "more like this" features read.

Written to the warehouse's working copy when an item-kNN model run is scored (its neighbour matrix:
cosine similarity of the items' training users), replacing the previous one in one transaction, and
copied into the analytics file by publish like the other result tables. Raw ids, ranks from 1 (score
descending, ties by item code), `model_run_id` and `generated_at` say which fit it came from.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from rechub_store.schema import SIMILAR_ITEMS
from rechub_store.warehouse import transaction

TABLE = SIMILAR_ITEMS.qualified


def top_neighbours(similar: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(item code, neighbour code, rank 1.., score) of each row's k best entries (score desc, code asc)."""
    coo = similar.tocoo()
    keep = (coo.data > 0) & (coo.row > 0) & (coo.col > 0)
    rows, cols, vals = coo.row[keep], coo.col[keep], coo.data[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - starts + 1
    top = rank <= k
    return rows[top], cols[top], rank[top], vals[top]


def write_similar_items(
    con: duckdb.DuckDBPyConnection, similar: sp.csr_matrix, model_run_id: str, k: int
) -> int:
    """Replace `similar_items` with each item's top-k neighbours; returns the rows written."""
    items, neighbours, rank, score = top_neighbours(similar, k)
    staged = pa.table(
        {
            "item_code": items.astype(np.int32),
            "similar_code": neighbours.astype(np.int32),
            "rank": rank.astype(np.int32),
            "score": score.astype(np.float64),
        }
    )
    generated_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    con.register("_similar_codes", staged)
    try:
        with transaction(con):
            con.execute(
                f"""
                CREATE OR REPLACE TABLE {TABLE} AS
                SELECT i.value AS item_id, j.value AS similar_item_id, s.rank, s.score,
                       $model_run_id::VARCHAR AS model_run_id, $generated_at::TIMESTAMP AS generated_at
                FROM _similar_codes s
                JOIN features.vocab_item_id i ON i.code = s.item_code
                JOIN features.vocab_item_id j ON j.code = s.similar_code
                ORDER BY i.value, s.rank
                """,
                {"model_run_id": model_run_id, "generated_at": generated_at},
            )
            (rows,) = con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()  # type: ignore[misc]
    finally:
        con.unregister("_similar_codes")
    return int(rows)
