"""Quality benchmark: every model's test metrics on a generated log, baselines beside them.

Generates the generator's default log shape (100 events per user, half as many items as users,
`rechub-store generate` defaults scaled by --scale), builds features with the default parameters,
trains dssm, youtubednn, gru4rec and sasrec with the same seed and epochs, and evaluates each on the
test split by exact full ranking. Written to run on this code AND on an older checkout (it only calls
APIs both have), so a before/after table compares the same log, seeds and epochs:

    RECHUB_THREADS=2 python bench/quality.py --label after --out bench/out/quality-after.json
    RECHUB_THREADS=2 PYTHONPATH=/path/to/older/checkout python bench/quality.py --label before \
        --out bench/out/quality-before.json
    python bench/quality.py --table bench/out/quality-before.json bench/out/quality-after.json

On code with the explicit evaluation protocol, each model and baseline is evaluated under every seen
filter (except-target, all, none) and the beyond-accuracy metrics of the production lists are kept.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import rechub_store
from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import generate_into
from rechub_store.pipeline.train import train
from rechub_store.results.evaluate import evaluate
from rechub_store.training.config import TrainConfig
from rechub_store.warehouse import Warehouse

OUT = Path(__file__).resolve().parent / "out"
MODELS = ("dssm", "youtubednn", "gru4rec", "sasrec")
BASELINES = ("popularity", "itemknn", "transition")
KS = (10, 20)
SHOWN = ("ndcg", "hit", "mrr")


def _metrics(rows: list[dict[str, Any]], split: str = "test") -> dict[str, dict[str, float]]:
    """model_run_id -> {metric@k: value} for the `all` slice of a split (exact index)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["split"] == split and r["index"] == "exact" and r.get("slice", "all") == "all":
            out.setdefault(r["model_run_id"], {})[f"{r['metric']}@{r['k']}"] = round(r["value"], 6)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    n_users, n_items, n_events = 10_000 // args.scale, 5_000 // args.scale, 1_000_000 // args.scale
    work = OUT / "work" / f"quality-{args.label}"
    if work.exists():
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
    wh = Warehouse(work / "rechub.duckdb", threads=args.threads)
    protocol = "seen_filter" in inspect.signature(evaluate).parameters  # the explicit protocol exists
    result: dict[str, Any] = {
        "label": args.label,
        "code": str(Path(rechub_store.__file__).resolve().parent.parent),
        "log": {"users": n_users, "items": n_items, "events": n_events, "seed": args.seed},
        "epochs": args.epochs,
        "threads": args.threads,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "protocol": protocol,
        "models": {},
        "baselines": {},
    }
    t0 = time.perf_counter()
    with wh.session() as con:
        generate_into(con, work / "data", n_users=n_users, n_items=n_items, n_events=n_events, seed=args.seed)
        report = build_features(con, BuildParams(seed=args.seed))
    result["samples"] = report.samples
    result["build_seconds"] = round(time.perf_counter() - t0, 1)
    filters = ("except-target", "all", "none") if protocol else (None,)
    for model in args.models.split(","):
        t1 = time.perf_counter()
        config = TrainConfig(model=model, epochs=args.epochs, seed=args.seed, progress=False)
        fit = train(wh, config)
        entry: dict[str, Any] = {
            "model_run_id": fit.model_run_id,
            "train_seconds": round(time.perf_counter() - t1, 1),
            "best_epoch": fit.best_epoch,
            "epochs_run": len(fit.history),
            "valid_ndcg@10": round(fit.best_metric, 6),
            "test": {},
        }
        for seen_filter in filters:
            kwargs: dict[str, Any] = {"ks": KS, "indexes": ("exact",), "run_id": f"q-{model}-{seen_filter}"}
            if protocol:
                first = seen_filter == "except-target"
                kwargs.update(
                    seen_filter=seen_filter,
                    baselines=BASELINES if model == args.models.split(",")[0] else (),  # once per filter
                    list_users=2_000 if first else 0,
                )
            report = evaluate(wh, model_run_id=fit.model_run_id, **kwargs)
            by_source = _metrics(report.rows)
            key = seen_filter or "legacy"
            entry["test"][key] = by_source[fit.model_run_id]
            for name, values in by_source.items():
                if name != fit.model_run_id:
                    result["baselines"].setdefault(name, {})[key] = values
            if seen_filter == "except-target":
                entry["slices"] = {
                    r["slice"]: {"ndcg@10": round(r["value"], 6), "users": r["n_users"]}
                    for r in report.rows
                    if r["split"] == "test" and r["metric"] == "ndcg" and r["k"] == 10
                    and r["model_run_id"] == fit.model_run_id
                }  # fmt: skip
                beyond = _metrics(report.rows, "production")
                entry["beyond@10"] = {
                    m: v for m, v in beyond.get(fit.model_run_id, {}).items() if m.endswith("@10")
                }
                for name in BASELINES:
                    if name in beyond:
                        result["baselines"][name]["beyond@10"] = {
                            m: v for m, v in beyond[name].items() if m.endswith("@10")
                        }
        result["models"][model] = entry
        print(f"{model}: {json.dumps(entry['test'])}", flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def table(before_path: Path, after_path: Path) -> str:
    """The markdown table of RESULTS.md from a before and an after run."""
    before, after = json.loads(before_path.read_text()), json.loads(after_path.read_text())
    old = "legacy"
    lines = [
        "| model | before: NDCG@10 / Hit@10 (old protocol) | after, `except-target` | after, `all` "
        "| after, `none` | best epoch before → after |",
        "|---|---|---|---|---|---|",
    ]

    def cell(values: dict[str, float] | None) -> str:
        if not values:
            return "—"
        return f"{values['ndcg@10']:.4f} / {values['hit@10']:.4f}"

    for model in MODELS:
        b, a = before["models"].get(model), after["models"].get(model)
        if not a:
            continue
        epochs = f"{b['best_epoch']} → {a['best_epoch']}" if b else f"— → {a['best_epoch']}"
        lines.append(
            f"| {model} | {cell(b['test'][old] if b else None)} | {cell(a['test']['except-target'])} "
            f"| {cell(a['test']['all'])} | {cell(a['test']['none'])} | {epochs} |"
        )
    for name in BASELINES:
        a = after["baselines"].get(name, {})
        b = before["baselines"].get(name, {})
        lines.append(
            f"| baseline `{name}` | {cell(b.get(old))} | {cell(a.get('except-target'))} "
            f"| {cell(a.get('all'))} | {cell(a.get('none'))} | |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="after")
    ap.add_argument("--scale", type=int, default=20, help="divide the generator's defaults by this")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RECHUB_THREADS", "2")))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--table", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.table:
        print(table(*args.table))
        return
    result = run(args)
    out = args.out or OUT / f"quality-{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} ({result['seconds']:.0f}s)", file=sys.stderr)


if __name__ == "__main__":
    main()
