"""A generated log written as MovieLens ml-1m's `ratings.dat` (`user::item::rating::timestamp`,
integer ids, no header), so ingest and feature benchmarks can run on the layout `ingest movielens`
reads. Ids become dense integers (as in the published files); rows keep the generator's order.
"""

from __future__ import annotations

from pathlib import Path

import duckdb


def write_ratings_dat(interactions_parquet: Path, folder: Path) -> Path:
    """folder/ratings.dat from a generated interactions.parquet (kept when already there)."""
    out = folder / "ratings.dat"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "ratings.dat.tmp"
    con = duckdb.connect()
    src = str(interactions_parquet).replace("'", "''")
    con.execute(
        f"""
        COPY (
            SELECT concat_ws('::', dense_rank() OVER (ORDER BY user_id), dense_rank() OVER (ORDER BY item_id),
                             rating, ts) AS line
            FROM (SELECT *, row_number() OVER () AS n FROM read_parquet('{src}'))
            ORDER BY n
        ) TO '{str(tmp).replace("'", "''")}' (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\t')
        """
    )
    con.close()
    tmp.rename(out)
    return out
