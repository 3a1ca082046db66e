"""Benchmark: fitting the item-kNN baseline (rechub_store/ranking/itemknn.py) on a built warehouse,
optionally beside another source tree's item-kNN (e.g. an export of the code before a change), run
alternately in one process on the same training interactions, read-only.

    git archive <commit> | tar -x -C /tmp/rechub-before
    RECHUB_THREADS=1 python bench/itemknn.py bench/out/work/wh_10000000/rechub.duckdb \
        --compare /tmp/rechub-before

Prints and writes (bench/out/itemknn.json) every fit's seconds, and, with --compare, how many items
keep the same neighbour similarities and the same neighbour items in both (ties at the cut may
keep different items with equal similarity).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path

import duckdb
import numpy as np
import scipy.sparse as sp
import torch

from rechub_store.data.readers import FeatureStore
from rechub_store.ranking import itemknn

ROOT = Path(__file__).resolve().parent.parent


def itemknn_of(tree: Path) -> type:
    """The ItemKNN class of another source tree (its other imports resolve to this package)."""
    spec = importlib.util.spec_from_file_location("itemknn_compare", tree / "rechub_store/ranking/itemknn.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.ItemKNN


def rows_equal(a: sp.csr_matrix, b: sp.csr_matrix, part: str) -> int:
    """Items whose kept neighbours agree: as sorted similarity values, or as sorted item codes."""
    return sum(
        np.array_equal(np.sort(getattr(a[i], part)), np.sort(getattr(b[i], part))) for i in range(a.shape[0])
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("warehouse", type=Path)
    ap.add_argument("--compare", type=Path, default=None, help="another source tree (its itemknn.py)")
    ap.add_argument("--neighbours", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RECHUB_THREADS", "1")))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "itemknn.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    con = duckdb.connect(str(args.warehouse), read_only=True)
    con.execute(f"SET threads = {args.threads}")
    store = FeatureStore.load(con, splits=("train",))
    classes = {"this": itemknn.ItemKNN} | ({"compare": itemknn_of(args.compare)} if args.compare else {})
    seconds: dict[str, list[float]] = {name: [] for name in classes}
    fitted = {}
    for _ in range(args.repeat):
        for name, cls in classes.items():
            t0 = time.perf_counter()
            fitted[name] = cls(neighbours=args.neighbours).fit(store)
            seconds[name].append(round(time.perf_counter() - t0, 2))
            print(f"{name}: fit {seconds[name][-1]:.2f} s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result: dict[str, object] = {
        "warehouse": str(args.warehouse),
        "commit": commit.stdout.strip(),
        "threads": args.threads,
        "items": store.n_items,
        "users": store.n_users,
        "neighbours": args.neighbours,
        "fit_seconds": seconds,
    }
    if args.compare:
        a, b = fitted["this"].similar, fitted["compare"].similar
        result["items_with_equal_kept_similarities"] = rows_equal(a, b, "data")
        result["items_with_equal_kept_neighbours"] = rows_equal(a, b, "indices")
        ratio = min(seconds["this"]) / min(seconds["compare"])
        print(
            f"this / compare: {ratio:.2f}x (best of {args.repeat}); equal kept similarities "
            f"{result['items_with_equal_kept_similarities']}/{store.n_items}, equal kept items "
            f"{result['items_with_equal_kept_neighbours']}/{store.n_items}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
