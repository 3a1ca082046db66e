"""What a run page shows, gathered with SQL from a `Source` (the `rpt_*` views).

Everything is aggregated in DuckDB before it reaches Python: a run of a million users arrives
here as a few hundred metric rows, one row per run, 100 long-tail bins and a sample of item
vectors, so the page's size does not grow with the number of users.

Metrics are read generically: every column of `evaluation_metrics` beyond the standard ones is
either a protocol column (text, e.g. `seen_filter`: one value is chosen for the headline and
named on the page), a slice column (a text column whose name contains `slice` or `segment`:
rows outside the overall slice feed the slices section), or ignored (numbers such as counts).
A model row is one whose model_run_id is a model run; every other model_run_id is a baseline.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from rechub_store.config import DEFAULT_SEEN_FILTER
from rechub_store.errors import UserError
from rechub_store.report.source import Source

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).with_name("sql")

STANDARD_COLUMNS = {
    "run_id",
    "model_run_id",
    "split",
    "metric",
    "k",
    "value",
    "n_users",
    "index",
    "created_at",
}
ACCURACY = ("recall", "hit", "ndcg", "mrr", "precision", "map", "auc")
HEADLINE = ("recall", "ndcg", "mrr")  # higher is better for each
RETRIEVAL_PREFIX = "annoy"
OVERALL_SLICES = {None, "", "all", "overall"}
PREFERRED_PROTOCOL = {"seen_filter": DEFAULT_SEEN_FILTER}  # the evaluation protocol's default rule
# beyond-accuracy rows of production lists (rechub_store.results.evaluate): no held-out target, so
# their seen_filter is the production rule, not an evaluation protocol to match
PRODUCTION_SPLIT = "production"
TREND_RUNS = 30  # runs shown in trends and step durations (the nightly passes publish.keep_runs)
BATCHES_SHOWN = 40
REJECT_REASONS = 10
LONG_TAIL_BINS = 100
EMBEDDING_SAMPLE = 1500
EMBEDDING_SEED = 0
LABELS_SHOWN = 9  # embedding map colours: the most common labels, the rest is "other"
CATEGORY_NAMES = ("category", "genre", "genres", "section", "department", "type")


@cache
def query(name: str) -> str:
    """The text of `report/sql/<name>.sql`."""
    return (SQL_DIR / f"{name}.sql").read_text()


def _records(cur: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _json(value: Any) -> Any:
    if value is None or isinstance(value, dict | list):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return None


@dataclass
class Run:
    run_id: str
    job: str | None
    status: str  # success | failed | running | by hand
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    seconds: float | None
    rows: int | None
    error: str | None
    model_run_id: str | None
    log_path: str | None
    failed_step: str | None
    published: bool
    retrained: bool


@dataclass
class Step:
    step: str
    status: str
    seconds: float | None
    rows: int | None
    error: str | None
    details: dict[str, Any]


@dataclass
class Metric:
    """One evaluation_metrics row, with its role (`model` or the baseline's id) and its extra keys."""

    run_id: str
    model_run_id: str
    role: str
    split: str
    metric: str
    k: int
    index: str
    value: float
    n_users: int | None
    protocol: tuple[tuple[str, str | None], ...]  # (column, value) of the extra text columns
    slice: str | None

    @property
    def label(self) -> str:
        return "model" if self.role == "model" else self.role


@dataclass
class RunData:
    """Everything a run page needs, already aggregated."""

    source: Source
    run: Run
    steps: dict[str, Step]
    runs: list[Run]  # the trend window, oldest first, ending with this run
    previous: Run | None  # the latest published run before this one
    model_runs: dict[str, dict[str, Any]]  # model_run_id -> meta.model_runs row
    metrics: list[Metric]  # this run, headline protocol, every split/slice
    previous_metrics: list[Metric]
    trend_metrics: list[Metric]  # the window's runs
    protocol: dict[str, str | None]  # chosen value of each protocol column
    slice_column: str | None
    headline_k: int | None
    split: str | None
    durations: list[dict[str, Any]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    reject_reasons: list[dict[str, Any]] = field(default_factory=list)
    build: dict[str, Any] | None = None
    long_tail: dict[str, Any] | None = None
    embedding: dict[str, Any] | None = None
    annoy_trials: list[dict[str, Any]] | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # section -> why it is empty

    @property
    def model(self) -> dict[str, Any] | None:
        return self.model_runs.get(self.run.model_run_id or "")

    def step_ok(self, step: str) -> bool:
        """Did `step` produce this attempt's output? (runs made by hand have no steps: assume yes)"""
        if not self.steps:
            return True
        s = self.steps.get(step)
        return s is not None and s.status == "success"


def local_file(recorded: Path, folder: Path) -> Path:
    """A file the warehouse recorded by absolute path, found in this warehouse's own `folder` when it
    is there (a warehouse folder that was moved or restored from a backup), else the recorded path."""
    here = folder / recorded.name
    return here if here.exists() else recorded


# ---------------------------------------------------------------------------- runs
def list_runs(src: Source) -> list[Run]:
    """Every run, oldest first (nightly runs and runs that only left metrics)."""
    return [Run(**r) for r in _records(src.con.execute(query("runs")))]


def resolve_run(runs: list[Run], run_id: str | None) -> Run | None:
    """The run named `run_id`, or the newest run."""
    if run_id is None:
        return runs[-1] if runs else None
    return next((r for r in runs if r.run_id == run_id), None)


def _steps(src: Source, run: Run) -> dict[str, Step]:
    if run.job is None:
        return {}
    cur = src.con.execute(
        "SELECT step, status, seconds, rows, error, details FROM rpt_job_runs "
        "WHERE run_id = ? AND job = ? AND step <> 'whole' ORDER BY started_at",
        [run.run_id, run.job],
    )
    out = {}
    for r in _records(cur):
        out[r["step"]] = Step(
            r["step"], r["status"], r["seconds"], r["rows"], r["error"], _json(r["details"]) or {}
        )
    return out


# ---------------------------------------------------------------------------- metrics
def _metric_columns(src: Source) -> tuple[list[str], str | None]:
    """(protocol columns, slice column) among evaluation_metrics' extra text columns."""
    cols = src.con.execute("DESCRIBE rpt_metrics").fetchall()
    extra = [name for name, typ, *_ in cols if name not in STANDARD_COLUMNS and typ == "VARCHAR"]
    slices = [c for c in extra if "slice" in c.lower() or "segment" in c.lower()]
    return [c for c in extra if c not in slices], (slices[0] if slices else None)


def _fetch_metrics(
    src: Source, runs: list[str], model_ids: set[str], protocol_cols: list[str], slice_col: str | None
) -> list[Metric]:
    if not runs:
        return []
    extra = "".join(f', "{c}"' for c in [*protocol_cols, *([slice_col] if slice_col else [])])
    cur = src.con.execute(
        f'SELECT run_id, model_run_id, split, metric, k, "index", value, n_users{extra} FROM rpt_metrics '
        "WHERE list_contains(?, run_id) AND value IS NOT NULL",
        [runs],
    )
    out = []
    for r in _records(cur):
        model_run_id = r["model_run_id"] or ""
        out.append(
            Metric(
                run_id=r["run_id"],
                model_run_id=model_run_id,
                role="model" if model_run_id in model_ids else model_run_id,
                split=r["split"] or "",
                metric=r["metric"],
                k=int(r["k"] or 0),
                index=r["index"] or "",
                value=float(r["value"]),
                n_users=r["n_users"],
                protocol=tuple((c, r[c]) for c in protocol_cols),
                slice=r[slice_col] if slice_col else None,
            )
        )
    return out


def choose_protocol(metrics: list[Metric]) -> dict[str, str | None]:
    """One value per protocol column for the headline: the preferred one if present, else the most used."""
    chosen: dict[str, str | None] = {}
    columns = {c for m in metrics for c, _ in m.protocol}
    for col in sorted(columns):
        counts = Counter(dict(m.protocol)[col] for m in metrics)
        preferred = PREFERRED_PROTOCOL.get(col)
        if preferred in counts:
            chosen[col] = preferred
        else:
            chosen[col] = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0]
    return chosen


def _matches(m: Metric, protocol: dict[str, str | None]) -> bool:
    return all(protocol.get(c, v) == v for c, v in m.protocol)


def is_overall(m: Metric) -> bool:
    return m.slice in OVERALL_SLICES


def headline_k(metrics: list[Metric]) -> int | None:
    ks = sorted({m.k for m in metrics if m.metric in HEADLINE and m.k > 0})
    if not ks:
        return None
    return 10 if 10 in ks else ks[0]


def headline_split(metrics: list[Metric]) -> str | None:
    splits = {m.split for m in metrics if m.split != PRODUCTION_SPLIT}
    return "test" if "test" in splits else (sorted(splits)[0] if splits else None)


# ---------------------------------------------------------------------------- sections
def _pipeline(src: Source, data: RunData) -> None:
    ids = [r.run_id for r in data.runs if r.job is not None]
    data.durations = _records(src.con.execute(query("step_durations"), {"runs": ids})) if ids else []
    if not src.has("rpt_batches"):
        data.unavailable["batches"] = f"ingest batches are not in {src.path.name}"
    else:
        until = data.run.finished_at or data.run.started_at or dt.datetime.max
        since = data.run.started_at or until
        data.batches = _records(
            src.con.execute(query("batches"), {"since": since, "until": until, "limit": BATCHES_SHOWN})
        )
        if data.batches and src.has("rpt_rejects"):
            ids = [
                r[0]
                for r in src.con.execute(
                    "SELECT batch_id FROM rpt_batches WHERE list_contains(?, batch_seq)",
                    [[b["batch_seq"] for b in data.batches]],
                ).fetchall()
            ]
            data.reject_reasons = _records(
                src.con.execute(query("reject_reasons"), {"batch_ids": ids, "limit": REJECT_REASONS})
            )
        if not data.batches:
            data.unavailable["batches"] = "no batch has been ingested into this warehouse yet"
    if not src.has("rpt_builds"):
        data.unavailable["build"] = f"feature builds are not in {src.path.name}"
        return
    build_id = data.steps.get("build").details.get("build_id") if data.steps.get("build") else None
    if build_id:
        cur = src.con.execute(
            "SELECT build_id, status, started_at, finished_at, models, report FROM rpt_builds WHERE "
            "build_id = ?",
            [build_id],
        )
    else:  # the build in force when the run ended
        cur = src.con.execute(
            "SELECT build_id, status, started_at, finished_at, models, report FROM rpt_builds "
            "WHERE status = 'success' AND finished_at <= ? ORDER BY finished_at DESC LIMIT 1",
            [data.run.finished_at or dt.datetime.max],
        )
    rows = _records(cur)
    if not rows:
        data.unavailable["build"] = "no feature build was recorded before this run"
        return
    build = rows[0]
    build["models"] = _json(build["models"]) or {}
    build["report"] = _json(build["report"]) or {}
    data.build = build


def _long_tail(src: Source, data: RunData) -> None:
    if not data.step_ok("score"):
        data.unavailable["long_tail"] = "the run did not score (see the steps above)"
        return
    if src.missing & {"rpt_recs", "rpt_items"}:
        data.unavailable["long_tail"] = f"recommendations or the item catalogue are not in {src.path.name}"
        return
    rows = _records(src.con.execute(query("long_tail"), {"run_id": data.run.run_id, "bins": LONG_TAIL_BINS}))
    recs = np.array([r["recs"] for r in rows], dtype=np.float64)
    if not rows or recs.sum() == 0:
        data.unavailable["long_tail"] = (
            "this run's recommendations are no longer kept (recommendations_history keeps the last runs)"
        )
        return
    items = np.array([r["items"] for r in rows], dtype=np.float64)
    train = np.array([r["train"] for r in rows], dtype=np.float64)
    n_items = items.sum()
    data.long_tail = {
        "catalogue": np.concatenate([[0.0], np.cumsum(items) / n_items]),
        "recs": np.concatenate([[0.0], np.cumsum(recs) / recs.sum()]),
        "train": np.concatenate([[0.0], np.cumsum(train) / max(train.sum(), 1.0)]),
        "n_items": int(n_items),
        "items_recommended": int(sum(r["items_recommended"] for r in rows)),
        "slots": int(recs.sum()),
    }


def _label_attribute(src: Source) -> str | None:
    """The item attribute to colour the embedding map by: a category-like one with a few values."""
    stats = src.con.execute(
        "SELECT name, count(DISTINCT value) AS n_values, count(DISTINCT item_id) AS n_items "
        "FROM rpt_item_attributes GROUP BY name"
    ).fetchall()
    usable = {name: (n_values, n_items) for name, n_values, n_items in stats if 2 <= n_values <= 30}
    for name in CATEGORY_NAMES:
        if name in usable:
            return name
    few = [(n_items, -n_values, name) for name, (n_values, n_items) in usable.items() if n_values <= 12]
    return max(few)[2] if few else None


def _embedding(src: Source, data: RunData) -> None:
    model = data.model
    if model is None:
        data.unavailable["embedding"] = "no model run is recorded for this run"
        return
    path = local_file(
        Path(model.get("artifact_path") or "") / "item_embeddings.parquet",
        src.warehouse.models_dir / model["model_run_id"],
    )
    if not path.exists():
        data.unavailable["embedding"] = f"no item vectors at {path} (they are written when a run scores)"
        return
    table = src.con.sql(
        query("embedding_sample"), params={"path": str(path), "seed": EMBEDDING_SEED, "n": EMBEDDING_SAMPLE}
    ).to_arrow_table()
    if table.num_rows < 3:
        data.unavailable["embedding"] = "fewer than 3 item vectors"
        return
    codes = table.column("code").to_numpy()
    order = np.argsort(codes, kind="stable")  # a fixed order of points, whatever the sample's order
    vectors = np.asarray(table.column("vector").combine_chunks().flatten(), dtype=np.float64)
    vectors = vectors.reshape(table.num_rows, -1)[order]
    item_ids = table.column("item_id").to_pylist()
    item_ids = [item_ids[i] for i in order]
    from sklearn.decomposition import PCA  # here: about 2 s to import, for one chart

    pca = PCA(n_components=2, random_state=EMBEDDING_SEED)
    xy = pca.fit_transform(vectors)
    attr = _label_attribute(src)
    labels_by_item = dict(
        src.con.execute(query("item_labels"), {"attr": attr, "items": [i for i in item_ids if i]}).fetchall()
    )
    labels = [labels_by_item.get(i) if i else None for i in item_ids]
    counts = Counter(x for x in labels if x is not None)
    top = {name for name, _ in counts.most_common(LABELS_SHOWN)}
    shown = [(x if x in top else ("other" if x is not None else "unknown")) for x in labels]
    data.embedding = {
        "xy": xy,
        "labels": shown,
        "colour_by": f"attribute {attr!r}" if attr else ("most widespread tag" if counts else None),
        "explained": [float(v) for v in pca.explained_variance_ratio_],
        "n": int(table.num_rows),
        "dim": int(vectors.shape[1]),
        "path": str(path),
    }


def _annoy_trials(data: RunData) -> None:
    """The tuning trials of the run's annoy index (items.ann.json beside the model), when it used one."""
    score = data.steps.get("score")
    annoy = (score.details.get("annoy") if score else None) or {}
    path = annoy.get("path")
    if not path:
        return
    meta = local_file(Path(f"{path}.json"), data.source.warehouse.models_dir / (data.run.model_run_id or ""))
    try:
        trials = json.loads(meta.read_text()).get("trials")
    except (OSError, ValueError):
        return
    if isinstance(trials, list) and trials:
        data.annoy_trials = [t for t in trials if isinstance(t, dict)]


# ---------------------------------------------------------------------------- gather
def gather(src: Source, run_id: str | None = None, *, trend_runs: int = TREND_RUNS) -> RunData:
    """Collect one run's page data (the newest run when `run_id` is None)."""
    runs = list_runs(src)
    run = resolve_run(runs, run_id)
    if run is None:
        if run_id is None:
            raise UserError(
                f"no runs to report on in {src.path}: run `rechub-store nightly` or `rechub-store demo` first"
            )
        known = ", ".join(r.run_id for r in runs[-5:]) or "none"
        raise UserError(f"--run: no run {run_id!r} in {src.path} (latest: {known})")
    position = runs.index(run)
    window = runs[max(0, position + 1 - trend_runs) : position + 1]
    previous = next((r for r in reversed(runs[:position]) if r.published), None)
    model_runs = {
        r["model_run_id"]: r
        for r in _records(
            src.con.execute(
                "SELECT model_run_id, model, status, params, build_id, history, best_epoch, best_metric, "
                "artifact_path, wall_seconds, created_at, finished_at FROM rpt_model_runs"
            )
        )
    }
    for r in model_runs.values():
        r["params"] = _json(r["params"]) or {}
        r["history"] = _json(r["history"]) or {}
    protocol_cols, slice_col = _metric_columns(src)
    trend = _fetch_metrics(src, [r.run_id for r in window], set(model_runs), protocol_cols, slice_col)
    this = [m for m in trend if m.run_id == run.run_id]
    protocol = choose_protocol([m for m in this or trend if m.split != PRODUCTION_SPLIT])
    trend = [m for m in trend if m.split == PRODUCTION_SPLIT or _matches(m, protocol)]
    this = [m for m in trend if m.run_id == run.run_id]
    prev_metrics = (
        [
            m
            for m in _fetch_metrics(src, [previous.run_id], set(model_runs), protocol_cols, slice_col)
            if m.split == PRODUCTION_SPLIT or _matches(m, protocol)
        ]
        if previous
        else []
    )
    data = RunData(
        source=src,
        run=run,
        steps=_steps(src, run),
        runs=window,
        previous=previous,
        model_runs=model_runs,
        metrics=this,
        previous_metrics=prev_metrics,
        trend_metrics=trend,
        protocol=protocol,
        slice_column=slice_col,
        headline_k=headline_k(this),
        split=headline_split(this),
    )
    if not data.step_ok("evaluate") and data.steps:
        # an earlier attempt of the same run id may have left rows: they are not this attempt's
        data.metrics = []
        data.unavailable["metrics"] = "the run did not evaluate (see the steps above)"
    elif not this:
        data.unavailable["metrics"] = "no evaluation_metrics rows for this run"
    _pipeline(src, data)
    _long_tail(src, data)
    _embedding(src, data)
    _annoy_trials(data)
    return data


def index_metrics(src: Source, runs: list[Run]) -> tuple[str | None, dict[str, dict[str, float]]]:
    """The index's headline: NDCG@k (test split, headline protocol) per run and series (model · index)."""
    model_ids = {r[0] for r in src.con.execute("SELECT model_run_id FROM rpt_model_runs").fetchall()}
    protocol_cols, slice_col = _metric_columns(src)
    rows = _fetch_metrics(src, [r.run_id for r in runs], model_ids, protocol_cols, slice_col)
    protocol = choose_protocol(rows)
    rows = [m for m in rows if _matches(m, protocol) and is_overall(m) and m.metric == "ndcg"]
    k, split = headline_k(rows), headline_split(rows)
    if k is None:
        return None, {}
    out: dict[str, dict[str, float]] = {}
    for m in rows:
        if m.k == k and m.split == split:
            out.setdefault(m.run_id, {})[f"{m.label} · {m.index}"] = m.value
    return f"ndcg@{k}", out
