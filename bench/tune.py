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

With `--log PATH` (and `--log-cols USER,ITEM,TIME`), the same flow runs on a real interaction log
instead of the generated shapes: the file is read where it lies, through the product's own
`ingest_interactions`, and built with the default parameters; the oracle does not apply there.
Every run also records the evaluation's slices (`all`, `cold`/`active`, `head`/`tail`,
`repeat`/`new` targets) under `test_slices`; `--slices JSON` prints them:

    RECHUB_THREADS=1 python bench/tune.py --log DATA/wikipedia-edits.csv \
        --log-cols user_id,item_id,ts --models sasrec,gru4rec,itemknn --tune-models none \
        --budget none --out bench/out/tune-wikipedia.json
    python bench/tune.py --slices bench/out/tune-wikipedia.json

Every run also records `paired`: its test NDCG@10 minus each baseline's, user by user over the same
test users, with a 95 % interval (a margin is clear when the interval excludes 0). `--add-paired
JSON` adds it to an earlier JSON from its work warehouses, `--paired JSON` prints the table.
`--sizes USERS,ITEMS,EVENTS` replaces the shapes' own sizes (still divided by `--scale`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from rechub_store.api import ingest_interactions
from rechub_store.config import DEFAULT_SEEN_FILTER
from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import N_SUCCESSORS, P_DUPLICATE, SHAPES, _ids, _World, generate_into
from rechub_store.data.readers import FeatureStore
from rechub_store.pipeline.train import train
from rechub_store.ranking.baselines import SparseScorer, fallback_scores
from rechub_store.ranking.exact import scorer_ranks
from rechub_store.ranking.metrics import ndcg_gains, rank_metrics
from rechub_store.ranking.protocol import baseline_ranks, exclusions, model_ranks
from rechub_store.results.evaluate import BASELINES as EVAL_BASELINES
from rechub_store.results.evaluate import evaluate
from rechub_store.retrieval.scoring import load_context
from rechub_store.training.config import TrainConfig
from rechub_store.tuning.study import TuneConfig, parse_duration, tune
from rechub_store.warehouse import Warehouse

OUT = Path(__file__).resolve().parent / "out"
BASELINES = ("popularity", "itemknn", "transition")


def _test_metrics(
    wh: Warehouse, model_run_id: str, baselines: bool, seen_filter: str = DEFAULT_SEEN_FILTER
) -> dict[str, dict[str, Any]]:
    """model_run_id (and baseline names) -> {ndcg@10, hit@10, ...} on the test split, slice `all`,
    plus `slices`: {slice: {n_users, n_repeat_targets, ndcg@10, hit@10, ...}} for every slice."""
    report = evaluate(
        wh,
        model_run_id=model_run_id,
        run_id=f"bench-{model_run_id}-{seen_filter}",
        ks=(10, 20),
        indexes=("exact",),
        baselines=BASELINES if baselines else (),
        seen_filter=seen_filter,
        list_users=0,
    )
    out: dict[str, dict[str, Any]] = {}
    for r in report.rows:
        if r["split"] != "test" or r["index"] != "exact":
            continue
        entry = out.setdefault(r["model_run_id"], {"slices": {}})
        name = f"{r['metric']}@{r['k']}"
        if r["slice"] == "all":
            entry[name] = round(r["value"], 6)
        one = entry["slices"].setdefault(
            r["slice"], {"n_users": r["n_users"], "n_repeat_targets": r["n_repeat_targets"]}
        )
        one[name] = round(r["value"], 6)
    return out


def _split_slices(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(slice `all` metrics, per-slice metrics) of one `_test_metrics` entry."""
    rest = dict(metrics)
    return rest, rest.pop("slices", {})


class Oracle:
    """The generator's own next-item distribution given the user's last item (successors, the last
    item's cluster, global popularity, repeats) and, for shapes that go back (`p_back`), the item
    before it: what a model that knew the generating process from the last two items would rank.
    Ignores the walk's rule against returning to one of the user's last 12 items (the protocol's
    seen filter mostly does that)."""

    name = "oracle"

    def __init__(self, con: Any, store: FeatureStore, shape: str, n_items: int, seed: int) -> None:
        spec = SHAPES[shape]
        world = _World(np.random.default_rng([seed, 0]), n_items, spec)  # generate()'s first draws
        ids = _ids("i", n_items, 41).to_pylist()
        vocab = dict(con.execute("SELECT value, code FROM features.vocab_item_id").fetchall())
        code = np.array([vocab.get(i, 0) for i in ids], dtype=np.int64)  # world index -> item code
        n = store.n_items

        def to_codes(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> sp.csr_matrix:
            r, c_, v = (np.concatenate(x) for x in zip(*parts, strict=True))
            known = (code[r] > 0) & (code[c_] > 0)
            return sp.csr_matrix((v[known], (code[r[known]], code[c_[known]])), shape=(n, n))

        succ_p = np.asarray(spec.successor_p, dtype=np.float64)
        succ_p = spec.p_successor * succ_p / succ_p.sum()
        successors = to_codes(
            [
                (
                    np.repeat(np.arange(n_items), N_SUCCESSORS),
                    world.successors.ravel(),
                    np.tile(succ_p, n_items),
                )
            ]
        )
        rest = [(np.arange(n_items), np.arange(n_items), np.full(n_items, P_DUPLICATE))]
        cluster_w = np.bincount(world.cluster, weights=world.weight, minlength=world.n_clusters)
        for c in range(world.n_clusters):  # the last item's cluster, by popularity weight
            members = np.flatnonzero(world.cluster == c)
            share = spec.p_cluster * world.weight[members] / cluster_w[c]
            rest.append(
                (
                    np.repeat(members, members.size),
                    np.tile(members, members.size),
                    np.tile(share, members.size),
                )
            )
        top = np.argsort(-world.weight)[:200]  # anywhere, by popularity: the head is what can rank
        anywhere = max(0.0, 1.0 - spec.p_successor - spec.p_cluster)
        rest.append(
            (
                np.repeat(np.arange(n_items), top.size),
                np.tile(top, n_items),
                np.tile(anywhere * world.weight[top] / world.weight.sum(), n_items),
            )
        )
        # rows 0..n-1 score from the last item, rows n..2n-1 from the item before it
        back = spec.p_back
        self.matrix = sp.vstack([(1.0 - back) * successors + to_codes(rest), back * successors]).tocsr()
        self.store, self.fallback = store, fallback_scores(store)

    def scorer(self, user_codes: np.ndarray, hist_end: np.ndarray) -> SparseScorer:
        window = self.store.history_windows(user_codes, hist_end, 2)
        last, before = window[:, 1], window[:, 0]
        before = np.where(before > 0, before, last)  # no item before: the walk went on from the last
        ok = last > 0
        users = np.flatnonzero(ok)
        n = self.store.n_items
        rows = sp.csr_matrix(
            (
                np.ones(2 * users.size),
                (np.concatenate([users, users]), np.concatenate([last[ok], n + before[ok]])),
            ),
            shape=(len(user_codes), 2 * n),
        )
        return SparseScorer(rows, self.matrix, self.fallback)


def oracle_metrics(wh: Warehouse, shape: str, n_items: int, seed: int) -> dict[str, float]:
    """Test NDCG@10 / Hit@10 of `Oracle` under the protocol's default seen filter."""
    with wh.session() as con:
        store = FeatureStore.load(con, None, splits=("test",), popularity_index=False)
        oracle = Oracle(con, store, shape, n_items, seed)
    m = rank_metrics(baseline_ranks(oracle, store, store.samples["test"]), (10,))
    return {"ndcg@10": round(m["ndcg"][10], 6), "hit@10": round(m["hit"][10], 6)}


def paired_ndcg(wh: Warehouse, model_run_id: str, against: tuple[str, ...] = BASELINES) -> dict[str, Any]:
    """The run's test NDCG@10 minus each baseline's, user by user on the same test users: the mean
    difference, its standard error and 95 % interval (normal approximation), and how many users
    each side wins. A margin is clear when the interval excludes 0; it is paired, so it is tighter
    than comparing two means."""
    with wh.session() as con:
        ctx = load_context(con, model_run_id, splits=("test",), threads=wh.threads)
    store = ctx.store
    samples = store.samples["test"]
    if ctx.knn is not None:  # an item-kNN model run: ranked from its neighbour matrix
        exclude = exclusions(store, samples.user_code, samples.pos, samples.target, DEFAULT_SEEN_FILTER)
        ranks = scorer_ranks(ctx.knn.scorer(samples.user_code, samples.pos), samples.target, exclude)
    else:
        ranks = model_ranks(ctx.loaded.model, store, samples)
    model_gain = ndcg_gains(ranks, 10)
    out: dict[str, Any] = {"n_users": len(ranks), "ndcg@10": round(float(model_gain.mean()), 6)}
    for name in against:
        diff = model_gain - ndcg_gains(baseline_ranks(EVAL_BASELINES[name]().fit(store), store, samples), 10)
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        mean = float(diff.mean())
        out[name] = {
            "diff": round(mean, 6),
            "se": round(se, 6),
            "ci95": [round(mean - 1.96 * se, 6), round(mean + 1.96 * se, 6)],
            "wins": int((diff > 0).sum()),
            "losses": int((diff < 0).sum()),
        }
    return out


def run_shape(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    sizes = args.sizes or SHAPES[shape].sizes
    users, items, events = (max(1, n // args.scale) for n in sizes)
    work = args.work / f"tune-{shape}"
    shutil.rmtree(work, ignore_errors=True)
    wh = Warehouse(work / "rechub.duckdb", threads=args.threads)
    load = os.getloadavg()
    t0 = time.perf_counter()
    with wh.session() as con:
        generate_into(
            con, work / "data", n_users=users, n_items=items, n_events=events, seed=args.seed, shape=shape
        )
        report = build_features(con, BuildParams(seed=args.seed))
    result: dict[str, Any] = {
        "shape": shape,
        "description": SHAPES[shape].description,
        "load_average_start": [round(x, 1) for x in load],
        "log": {"users": users, "items": items, "events": events, "seed": args.seed},
        "samples": report.samples,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "oracle": oracle_metrics(wh, shape, items, args.seed),
    }
    return run_models(wh, result, args, t0)


def run_log(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same flow on a real interaction log, ingested through the product's API (no oracle)."""
    user_col, item_col, time_col = args.log_cols.split(",")
    work = args.work / f"tune-log-{path.stem}"
    shutil.rmtree(work, ignore_errors=True)
    wh = Warehouse(work / "rechub.duckdb", threads=args.threads)
    load = os.getloadavg()
    t0 = time.perf_counter()
    ingested = ingest_interactions(wh, path, user_col=user_col, item_col=item_col, time_col=time_col)
    with wh.session() as con:
        report = build_features(con, BuildParams(seed=args.seed))
        users, items, events = con.execute(
            "SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(*) FROM raw.interactions"
        ).fetchone()
    result: dict[str, Any] = {
        "shape": f"log:{path.name}",
        "description": f"real log {path} (columns {args.log_cols})",
        "load_average_start": [round(x, 1) for x in load],
        "log": {
            "path": str(path),
            "users": users,
            "items": items,
            "events": events,
            "rows_read": ingested.rows_read,
            "rows_rejected": ingested.rows_rejected,
            "seed": args.seed,
        },
        "samples": report.samples,
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    return run_models(wh, result, args, t0)


def run_models(wh: Warehouse, result: dict[str, Any], args: argparse.Namespace, t0: float) -> dict[str, Any]:
    """Per model: defaults, candidate variants, tuned; test metrics and baselines beside them."""
    shape = result["shape"]
    result["models"], result["baselines"], result["baseline_slices"] = {}, {}, {}
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
        default = entry["default"]
        default["test"], default["test_slices"] = _split_slices(metrics.pop(fit.model_run_id))
        default["paired"] = paired_ndcg(wh, fit.model_run_id)
        if first:
            for name, m in metrics.items():
                result["baselines"][name], result["baseline_slices"][name] = _split_slices(m)
            first = False
        for name, options in args.variants.get(model, {}).items():  # candidate defaults, side by side
            t3 = time.perf_counter()
            fit = train(wh, TrainConfig(model=model, seed=args.seed, progress=False, **options))
            entry[name] = {
                "options": options,
                "model_run_id": fit.model_run_id,
                "train_seconds": round(time.perf_counter() - t3, 1),
                "best_epoch": fit.best_epoch,
                "valid_ndcg@10": round(fit.best_metric, 6),
            }
            entry[name]["test"], entry[name]["test_slices"] = _split_slices(
                _test_metrics(wh, fit.model_run_id, baselines=False)[fit.model_run_id]
            )
            entry[name]["paired"] = paired_ndcg(wh, fit.model_run_id)
        if model in args.tune_models.split(","):
            args.write_partial(dict(result, models=dict(result["models"], **{model: entry})))
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
            entry["tuned"]["test"], entry["tuned"]["test_slices"] = _split_slices(
                _test_metrics(wh, study.model_run_id, baselines=False)[study.model_run_id]
            )
            entry["tuned"]["paired"] = paired_ndcg(wh, study.model_run_id)
        result["models"][model] = entry
        print(f"{shape} {model}: {json.dumps({k: v.get('test') for k, v in entry.items()})}", flush=True)
        args.write_partial(result)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["load_average_end"] = [round(x, 1) for x in os.getloadavg()]
    return result


def table(path: Path) -> str:
    """The markdown table of RESULTS.md: test NDCG@10 / Hit@10 per shape and model."""
    data = json.loads(path.read_text())

    def cell(m: dict[str, float] | None) -> str:
        return "—" if not m else f"{m['ndcg@10']:.4f} / {m['hit@10']:.4f}"

    lines = [
        "| shape | model | default | tuned | budget / wall | trials (pruned) | popularity | item-kNN "
        "| transition | oracle |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
                f"| {cell(base.get('transition'))} | {cell(shape.get('oracle'))} |"
            )
            for name, variant in entry.items():
                if name not in ("default", "tuned"):
                    lines.append(
                        f"| {shape['shape']} | {model} `{name}` {json.dumps(variant['options'])} "
                        f"| {cell(variant['test'])} | | | | | | | |"
                    )
    return "\n".join(lines)


def _work_warehouse(shape: str, work: Path, threads: int) -> Warehouse:
    """The warehouse a shape (or `log:NAME`) of a JSON was measured in, under --work."""
    folder = f"tune-log-{Path(shape.split(':', 1)[1]).stem}" if shape.startswith("log:") else f"tune-{shape}"
    return Warehouse(work / folder / "rechub.duckdb", threads=threads)


def add_paired(path: Path, work: Path, threads: int) -> None:
    """Add `paired` (see `paired_ndcg`) to every run of this JSON, from its work warehouse."""
    data = json.loads(path.read_text())
    for shape in data["shapes"]:
        wh = _work_warehouse(shape["shape"], work, threads)
        for entry in shape["models"].values():
            for run in entry.values():
                run["paired"] = paired_ndcg(wh, run["model_run_id"])
    path.write_text(json.dumps(data, indent=2))


def paired_table(path: Path) -> str:
    """Per run: test NDCG@10 minus each baseline's, paired over the same users, with 95 % intervals."""
    data = json.loads(path.read_text())
    lines = [
        "| log | run | users | NDCG@10 | − transition | − item-kNN | − popularity |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape in data["shapes"]:
        for model, entry in shape["models"].items():
            for name, run in entry.items():
                p = run.get("paired")
                if not p:
                    continue
                cells = " | ".join(
                    f"{p[b]['diff']:+.4f} [{p[b]['ci95'][0]:+.4f}, {p[b]['ci95'][1]:+.4f}]"
                    for b in BASELINES[::-1]
                )
                lines.append(
                    f"| {shape['shape']} | {model} {name} | {p['n_users']} | {p['ndcg@10']:.4f} | {cells} |"
                )
    return "\n".join(lines)


def add_seen_filter(path: Path, seen_filter: str, work: Path, threads: int) -> None:
    """Evaluate every run of this JSON again from its work warehouse under another seen filter:
    per-slice metrics under `test_slices_by_filter[seen_filter]` (models and baselines)."""
    data = json.loads(path.read_text())
    for shape in data["shapes"]:
        wh = _work_warehouse(shape["shape"], work, threads)
        first = True
        for entry in shape["models"].values():
            for run in entry.values():
                metrics = _test_metrics(wh, run["model_run_id"], baselines=first, seen_filter=seen_filter)
                run.setdefault("test_slices_by_filter", {})[seen_filter] = metrics.pop(run["model_run_id"])[
                    "slices"
                ]
                if first:
                    for base, m in metrics.items():
                        shape.setdefault("baseline_slices_by_filter", {}).setdefault(seen_filter, {})[
                            base
                        ] = m["slices"]
                    first = False
    path.write_text(json.dumps(data, indent=2))


def slices_table(path: Path, seen_filter: str | None = None) -> str:
    """Test NDCG@10 / Hit@10 per evaluation slice (users in the slice, repeat targets among them)."""
    data = json.loads(path.read_text())
    lines = []
    for shape in data["shapes"]:
        runs: list[tuple[str, dict[str, Any]]] = []
        for model, entry in shape["models"].items():
            for name, run in entry.items():
                sl = (
                    run.get("test_slices_by_filter", {}).get(seen_filter)
                    if seen_filter
                    else run.get("test_slices")
                )
                if sl:
                    runs.append((model if name == "default" else f"{model} {name}", sl))
        base = (
            shape.get("baseline_slices_by_filter", {}).get(seen_filter, {})
            if seen_filter
            else shape.get("baseline_slices", {})
        )
        runs += [(f"baseline {name}", sl) for name, sl in base.items()]
        if not runs:
            continue
        names = list(runs[0][1])
        first = runs[0][1]
        sizes = " | ".join(
            f"{n} ({first[n]['n_users']} users, {first[n]['n_repeat_targets']} repeats)" for n in names
        )
        lines += [f"**{shape['shape']}**", "", f"| run | {sizes} |", "|---|" + "---|" * len(names)]
        for run, sl in runs:
            cells = " | ".join(
                f"{sl[n]['ndcg@10']:.4f} / {sl[n]['hit@10']:.4f}" if n in sl else "—" for n in names
            )
            lines.append(f"| {run} | {cells} |")
        lines.append("")
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
    ap.add_argument(
        "--sizes",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        help="USERS,ITEMS,EVENTS instead of the shape's own sizes (then divided by --scale)",
    )
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RECHUB_THREADS", "2")))
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="MODEL:NAME:JSON",
        help="a candidate default trained beside the default, e.g. 'sasrec:dim128:{\"embed_dim\": 128}'",
    )
    ap.add_argument(
        "--shape-variant",
        action="append",
        default=[],
        metavar="NAME:SHAPE:JSON",
        help="a shape made from another with some knobs changed, for ablations, usable in --shapes, "
        "e.g. 'short-ring:short:{\"successor_window\": 8}'",
    )
    ap.add_argument("--out", type=Path, default=OUT / "tune.json")
    ap.add_argument("--work", type=Path, default=OUT / "work", help="where each shape's warehouse is built")
    ap.add_argument(
        "--log", type=Path, help="run on this interaction log (CSV or Parquet), not the generated shapes"
    )
    ap.add_argument("--log-cols", default="user_id,item_id,ts", help="the log's user, item and time columns")
    ap.add_argument("--table", type=Path)
    ap.add_argument("--slices", type=Path, help="print the per-slice table of this JSON")
    ap.add_argument(
        "--seen-filter",
        help="with --slices: the table under this seen filter (added by --add-seen-filter); alone with "
        "--add-seen-filter JSON: evaluate that JSON's runs again under it",
    )
    ap.add_argument("--add-seen-filter", type=Path, help="see --seen-filter")
    ap.add_argument(
        "--add-oracle",
        type=Path,
        help="compute the oracle of every shape of this JSON from its work warehouse",
    )
    ap.add_argument("--add-paired", type=Path, help="add the paired comparison to every run of this JSON")
    ap.add_argument("--paired", type=Path, help="print the paired comparison table of this JSON")
    args = ap.parse_args()
    for spec in args.shape_variant:
        name, base, knobs = spec.split(":", 2)
        SHAPES[name] = dataclasses.replace(SHAPES[base], name=name, **json.loads(knobs))
    if args.add_paired:
        add_paired(args.add_paired, args.work, args.threads)
        return
    if args.paired:
        print(paired_table(args.paired))
        return
    if args.table:
        print(table(args.table))
        return
    if args.slices:
        print(slices_table(args.slices, args.seen_filter))
        return
    if args.add_seen_filter:
        add_seen_filter(args.add_seen_filter, args.seen_filter, args.work, args.threads)
        return
    if args.add_oracle:
        data = json.loads(args.add_oracle.read_text())
        for shape in data["shapes"]:
            wh = Warehouse(args.work / f"tune-{shape['shape']}" / "rechub.duckdb", threads=args.threads)
            shape["oracle"] = oracle_metrics(wh, shape["shape"], shape["log"]["items"], shape["log"]["seed"])
        args.add_oracle.write_text(json.dumps(data, indent=2))
        return
    args.variants = {}
    for spec in args.variant:
        model, name, options = spec.split(":", 2)
        args.variants.setdefault(model, {})[name] = json.loads(options)
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

    def write_partial(current: dict[str, Any]) -> None:  # after each model: a stopped run keeps it
        args.out.write_text(json.dumps(dict(result, shapes=[*result["shapes"], current]), indent=2))

    args.write_partial = write_partial
    if args.log:
        result["shapes"].append(run_log(args.log, args))
        args.out.write_text(json.dumps(result, indent=2))
    for shape in [] if args.log else args.shapes.split(","):
        result["shapes"].append(run_shape(shape, args))
        args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
