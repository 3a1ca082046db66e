"""Quality per log shape: each model with its defaults and after `tune`, baselines beside them.

For every shape (`rechub-store generate --shape`, at the shape's own sizes, 100k events, divided by
`--scale`), generate
the log, build the features with the default parameters, then per model: train with the defaults,
`tune` with the given wall-clock budget (validation split only), and evaluate both runs on the test
split (exact full ranking, the protocol's default seen filter), with the popularity, item-kNN and
transition baselines from the same evaluation. Writes JSON after each shape, so a partial run keeps
what it measured:

    RECHUB_THREADS=2 python bench/tune.py --shapes short,long,weak-seq,skewed,mild \
        --models sasrec,gru4rec --tune-models sasrec --budget 5m --out bench/out/tune.json
    python bench/tune.py --table bench/out/tune.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import SHAPES, generate_into
from rechub_store.pipeline.train import train
from rechub_store.results.evaluate import evaluate
from rechub_store.training.config import TrainConfig
from rechub_store.tuning.study import TuneConfig, parse_duration, tune
from rechub_store.warehouse import Warehouse

OUT = Path(__file__).resolve().parent / "out"
BASELINES = ("popularity", "itemknn", "transition")


def _test_metrics(wh: Warehouse, model_run_id: str, baselines: bool) -> dict[str, dict[str, float]]:
    """model_run_id (and baseline names) -> {ndcg@10, hit@10, ...} on the test split, slice `all`."""
    report = evaluate(
        wh,
        model_run_id=model_run_id,
        run_id=f"bench-{model_run_id}",
        ks=(10, 20),
        indexes=("exact",),
        baselines=BASELINES if baselines else (),
        list_users=0,
    )
    out: dict[str, dict[str, float]] = {}
    for r in report.rows:
        if r["split"] == "test" and r["slice"] == "all":
            out.setdefault(r["model_run_id"], {})[f"{r['metric']}@{r['k']}"] = round(r["value"], 6)
    return out


def run_shape(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    users, items, events = (max(1, n // args.scale) for n in SHAPES[shape].sizes)
    work = OUT / "work" / f"tune-{shape}"
    shutil.rmtree(work, ignore_errors=True)
    wh = Warehouse(work / "rechub.duckdb", threads=args.threads)
    t0 = time.perf_counter()
    with wh.session() as con:
        generate_into(
            con, work / "data", n_users=users, n_items=items, n_events=events, seed=args.seed, shape=shape
        )
        report = build_features(con, BuildParams(seed=args.seed))
    result: dict[str, Any] = {
        "shape": shape,
        "description": SHAPES[shape].description,
        "log": {"users": users, "items": items, "events": events, "seed": args.seed},
        "samples": report.samples,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "models": {},
        "baselines": {},
    }
    first = True
    for model in args.models.split(","):
        entry: dict[str, Any] = {}
        t1 = time.perf_counter()
        fit = train(wh, TrainConfig(model=model, seed=args.seed, progress=False))
        entry["default"] = {
            "model_run_id": fit.model_run_id,
            "train_seconds": round(time.perf_counter() - t1, 1),
            "best_epoch": fit.best_epoch,
            "valid_ndcg@10": round(fit.best_metric, 6),
        }
        metrics = _test_metrics(wh, fit.model_run_id, baselines=first)
        entry["default"]["test"] = metrics.pop(fit.model_run_id)
        if first:
            result["baselines"] = metrics
            first = False
        if model in args.tune_models.split(","):
            t2 = time.perf_counter()
            cfg = TuneConfig(
                model=model,
                budget_seconds=args.budget_seconds,
                max_trials=args.trials,
                seed=args.seed,
                progress=False,
            )
            study = tune(wh, cfg)
            entry["tuned"] = {
                "study_id": study.study_id,
                "model_run_id": study.model_run_id,
                "budget_seconds": args.budget_seconds,
                "max_trials": args.trials,
                "wall_seconds": round(time.perf_counter() - t2, 1),
                "trials": study.n_trials,
                "trial_states": study.trial_states,
                "best_trial": study.best_trial,
                "best_params": study.best_params,
                "valid_ndcg@10": round(study.best_value or 0.0, 6),
            }
            assert study.model_run_id is not None
            entry["tuned"]["test"] = _test_metrics(wh, study.model_run_id, baselines=False)[
                study.model_run_id
            ]
        result["models"][model] = entry
        print(f"{shape} {model}: {json.dumps({k: v.get('test') for k, v in entry.items()})}", flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def table(path: Path) -> str:
    """The markdown table of RESULTS.md: test NDCG@10 / Hit@10 per shape and model."""
    data = json.loads(path.read_text())

    def cell(m: dict[str, float] | None) -> str:
        return "—" if not m else f"{m['ndcg@10']:.4f} / {m['hit@10']:.4f}"

    lines = [
        "| shape | model | default | tuned | budget / wall | trials (pruned) | popularity | item-kNN "
        "| transition |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in data["shapes"]:
        base = shape["baselines"]
        for model, entry in shape["models"].items():
            tuned = entry.get("tuned")
            budget = "—"
            if tuned:
                limits = [f"{tuned['max_trials']} trials"] if tuned.get("max_trials") else []
                limits += [f"{tuned['budget_seconds']:.0f} s"] if tuned["budget_seconds"] else []
                budget = f"{' + '.join(limits)} / {tuned['wall_seconds']:.0f} s"
            trials = f"{tuned['trials']} ({tuned['trial_states'].get('pruned', 0)})" if tuned else "—"
            lines.append(
                f"| {shape['shape']} | {model} | {cell(entry['default']['test'])} "
                f"| {cell(tuned['test'] if tuned else None)} | {budget} | {trials} "
                f"| {cell(base.get('popularity'))} | {cell(base.get('itemknn'))} "
                f"| {cell(base.get('transition'))} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="short,long,weak-seq,skewed,mild")
    ap.add_argument("--models", default="sasrec,gru4rec")
    ap.add_argument("--tune-models", default="sasrec")
    ap.add_argument(
        "--budget", default="5m", help="tune's wall-clock budget per model and shape ('none': --trials only)"
    )
    ap.add_argument(
        "--trials", type=int, help="tune's trial budget per model and shape (independent of the load)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=int, default=1, help="divide the shape's sizes by this")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RECHUB_THREADS", "2")))
    ap.add_argument("--out", type=Path, default=OUT / "tune.json")
    ap.add_argument("--table", type=Path)
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    args.budget_seconds = None if args.budget.strip().lower() == "none" else parse_duration(args.budget)
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
        "scale": args.scale,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "shapes": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for shape in args.shapes.split(","):
        result["shapes"].append(run_shape(shape, args))
        args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
