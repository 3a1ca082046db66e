"""Benchmark: production user encoding on a built warehouse with a trained model, the fixed-shape
batches of `encode_current_users` (what scoring runs) beside `encode_users` (each batch fitted to
its longest history, 4,096 rows), alternately in one process, read-only.

    RECHUB_THREADS=1 python bench/encode.py <warehouse>/rechub.duckdb --repeat 3

Prints and writes (bench/out/encode.json) every pass's seconds, the users encoded, whether both
give the same vectors to float tolerance, and how many users' vectors differ in any bit between
the two (the reason scoring uses one shape per history length).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import duckdb
import numpy as np
import torch

from rechub_store.ranking.embeddings import encode_current_users, encode_users, window_widths
from rechub_store.retrieval.scoring import load_context

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("warehouse", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RECHUB_THREADS", "1")))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "encode.json")
    args = ap.parse_args()
    con = duckdb.connect(str(args.warehouse), read_only=True)
    ctx = load_context(con, threads=args.threads)
    model, store = ctx.loaded.model, ctx.store
    users = ctx.production_users()
    widths = window_widths(store.history_length(users), model.max_seq_len)
    runs: dict[str, list[float]] = {"stable": [], "fitted": []}
    out: dict[str, np.ndarray] = {}
    for _ in range(args.repeat):
        for name, encode in (
            ("stable", lambda: encode_current_users(model, store, users)),
            ("fitted", lambda: encode_users(model, store, users)),
        ):
            t0 = time.perf_counter()
            out[name] = encode()
            runs[name].append(round(time.perf_counter() - t0, 3))
            print(name, runs[name][-1], flush=True)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    result = {
        "commit": head.stdout.strip(),
        "warehouse": str(args.warehouse),
        "model": ctx.loaded.model_name,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "users": len(users),
        "width_classes": {int(w): int((widths == w).sum()) for w in np.unique(widths)},
        "seconds": runs,
        "best_ratio_stable_to_fitted": round(min(runs["stable"]) / min(runs["fitted"]), 3),
        "close": bool(np.allclose(out["stable"], out["fitted"], rtol=1e-4, atol=1e-5)),
        "users_differing_in_any_bit": int((out["stable"] != out["fitted"]).any(axis=1).sum()),
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
