"""HTML assembly: one self-contained page per run, and the index of runs.

Pages are plain HTML with inline CSS and inline SVG charts: no script, no font, no image and no
stylesheet is loaded from anywhere, so a page opens from disk or any static file server with no
network. Every value shown comes from `RunData`; numbers in the headline table carry their exact
value in `data-value` (the browser test compares them with `evaluation_metrics`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from rechub_store.report import charts
from rechub_store.report.data import (
    ACCURACY,
    HEADLINE,
    PRODUCTION_SPLIT,
    RETRIEVAL_PREFIX,
    Metric,
    Run,
    RunData,
    headline_k,
    headline_split,
    is_overall,
)

CSS = """
:root { --good: #1a7f37; --bad: #cf222e; --muted: #57606a; --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       color: #1f2328; margin: 0; background: #fff; }
header { background: #24292f; color: #fff; padding: 14px 24px; }
header h1 { margin: 0; font-size: 20px; }
header .sub { color: #c9d1d9; font-size: 13px; }
header a { color: #9ecbff; }
nav { position: sticky; top: 0; background: var(--bg); border-bottom: 1px solid var(--line);
      padding: 6px 24px; font-size: 13px; z-index: 1; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
main { max-width: 1060px; padding: 8px 24px 40px; }
h2 { border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 28px; font-size: 17px; }
h3 { font-size: 14px; margin: 16px 0 6px; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.delta { font-size: 11px; margin-left: 4px; }
.delta.up { color: var(--good); } .delta.down { color: var(--bad); } .delta.flat { color: var(--muted); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         color: #fff; background: var(--muted); }
.badge.success { background: var(--good); } .badge.failed { background: var(--bad); }
.badge.skipped { background: #8c959f; } .badge.running { background: #9a6700; }
.banner { border: 1px solid var(--bad); background: #ffebe9; padding: 10px 14px; border-radius: 6px;
          margin: 14px 0; }
.note { border: 1px solid #d4a72c; background: #fff8c5; padding: 8px 12px; border-radius: 6px;
        margin: 10px 0; }
.na { color: var(--muted); font-style: italic; }
.kpis { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.kpi { border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; min-width: 130px; }
.kpi .v { font-size: 17px; font-weight: 600; } .kpi .l { font-size: 12px; color: var(--muted); }
figure.chart { margin: 10px 0 18px; }
figure.chart svg { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 12.5px; color: var(--muted); margin-top: 2px; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 12px; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; }
"""

SECTIONS = (
    ("headline", "Headline"),
    ("trend", "Trend"),
    ("training", "Training"),
    ("retrieval", "Retrieval"),
    ("beyond", "Beyond accuracy"),
    ("slices", "Slices"),
    ("pipeline", "Pipeline"),
    ("embedding", "Embedding map"),
)


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_int(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def fmt_time(value: dt.datetime | None) -> str:
    return "–" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


def badge(status: str | None) -> str:
    return f'<span class="badge {e(status)}">{e(status)}</span>'


def na(reason: str) -> str:
    return f'<p class="na">Not computed for this run: {e(reason)}.</p>'


def figure(chart_id: str, svg: str, caption: str) -> str:
    return f'<figure class="chart" id="chart-{chart_id}">{svg}<figcaption>{e(caption)}</figcaption></figure>'


def href(path: str | Path, base: Path) -> str:
    """A relative link from the folder `base` to `path` (so the page works wherever the folder is served)."""
    return quote(os.path.relpath(Path(path).resolve(), base.resolve()))


def delta(value: float | None, before: float | None, higher_is_better: bool | None = True) -> str:
    """The change against the previous published run: green when better, red when worse, grey otherwise."""
    if value is None or before is None:
        return ""
    d = value - before
    if abs(d) < 5e-5:
        return '<span class="delta flat" title="previous published run">= 0</span>'
    arrow = "▲" if d > 0 else "▼"
    cls = "flat" if higher_is_better is None else ("up" if (d > 0) == higher_is_better else "down")
    rel = f", {d / before:+.1%}" if before else ""
    return (
        f'<span class="delta {cls}" title="change vs the previous published run">{arrow} {d:+.4f}{rel}</span>'
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are HTML already (escape values before passing them)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(rows_cell(c) for c in row) + "</tr>" for row in rows)
    return (
        f'<div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def rows_cell(cell: str) -> str:
    return cell if cell.startswith("<td") else f"<td>{cell}</td>"


def series_name(m: Metric) -> str:
    return f"{m.label} · {m.index}"


def _order(metrics: Sequence[Metric]) -> list[tuple[str, str]]:
    """(role, index) pairs: the model first (exact, then annoy), then baselines by name."""
    pairs = {(m.role, m.index) for m in metrics}
    return sorted(pairs, key=lambda p: (p[0] != "model", p[0], p[1] != "exact", p[1]))


def _lookup(metrics: Sequence[Metric]) -> dict[tuple[str, str, str, int, str], float]:
    return {(m.role, m.index, m.metric, m.k, m.split): m.value for m in metrics if is_overall(m)}


# ---------------------------------------------------------------------------- sections
def _header(d: RunData, links: dict[str, str | None], generated: dt.datetime) -> str:
    run = d.run
    model = d.model
    index_link = f' · <a href="{links["index"]}">all runs</a>' if links.get("index") else ""
    log_link = f' · <a href="{links["log"]}">log file</a>' if links.get("log") else ""
    model_text = f"{model['model']} ({model['model_run_id']})" if model else (run.model_run_id or "–")
    return (
        f"<header><h1>Run {e(run.run_id)} {badge(run.status)}</h1>"
        f'<div class="sub">job {e(run.job or "– (by hand)")} · model {e(model_text)} · '
        f"report generated {e(fmt_time(generated))}{index_link}{log_link}</div></header>"
        "<nav>" + "".join(f'<a href="#{sid}">{e(name)}</a>' for sid, name in SECTIONS) + "</nav>"
    )


def _summary(d: RunData, links: dict[str, str | None]) -> str:
    run = d.run
    parts = []
    if run.status == "failed":
        step = run.failed_step or "unknown step"
        log_link = (
            f' <a class="log" href="{links["log"]}">Open the log file</a> for the full traceback.'
            if links.get("log")
            else " The log file is not available."
        )
        parts.append(
            f'<div class="banner failed-step" data-failed-step="{e(step)}"><strong>Step '
            f'<code>{e(step)}</code> failed:</strong> <span class="error">{e(run.error)}</span>.'
            f"{log_link}</div>"
        )
    if d.source.note:
        parts.append(f'<div class="note">{e(d.source.note)}</div>')
    score = d.steps.get("score")
    sd = score.details if score else {}
    users_s = (sd.get("users") / sd["seconds"]) if sd.get("users") and sd.get("seconds") else None
    model = d.model
    kpis = [
        ("status", badge(run.status)),
        ("duration", e(fmt_seconds(run.seconds))),
        ("started", e(fmt_time(run.started_at))),
        ("users scored", e(fmt_int(sd.get("users")))),
        ("recommendations", e(fmt_int(sd.get("rows")))),
        ("users / s (scoring)", e(fmt_int(users_s))),
        ("model", e(model["model"] if model else "–")),
        ("published", "yes" if run.published else "no"),
        ("previous published run", e(d.previous.run_id if d.previous else "none")),
    ]
    parts.append(
        '<div class="kpis">'
        + "".join(
            f'<div class="kpi"><div class="v">{v}</div><div class="l">{e(k)}</div></div>' for k, v in kpis
        )
        + "</div>"
    )
    if d.steps:
        rows = [
            [
                f"<code>{e(s.step)}</code>",
                badge(s.status),
                f'<td class="num">{e(fmt_seconds(s.seconds))}</td>',
                f'<td class="num">{e(fmt_int(s.rows))}</td>',
                e(s.error or s.details.get("reason") or ""),
            ]
            for s in d.steps.values()
        ]
        parts.append(
            "<h3>Steps</h3>" + table(["step", "status", "time", "rows", "error / note"], rows, "steps")
        )
    return "".join(parts)


def _headline(d: RunData) -> str:
    out = ['<section id="headline"><h2>Headline: model vs baselines</h2>']
    if "metrics" in d.unavailable:
        return out[0] + na(d.unavailable["metrics"]) + "</section>"
    k, split = d.headline_k, d.split
    ks = sorted({m.k for m in d.metrics if m.metric in HEADLINE and m.split == split and is_overall(m)})
    now, before = _lookup(d.metrics), _lookup(d.previous_metrics)
    acc = [m for m in d.metrics if m.metric in HEADLINE and m.split == split and is_overall(m)]
    pairs = _order(acc)
    if not pairs:
        return out[0] + na("no Recall/NDCG/MRR rows") + "</section>"
    protocol = ", ".join(f"{c} = {v}" for c, v in d.protocol.items())
    prev = d.previous.run_id if d.previous else None
    out.append(
        f"<p>Split <code>{e(split)}</code>, up to {e(fmt_int(max((m.n_users or 0) for m in acc)))} "
        "evaluated users per row"
        + (f"; protocol {e(protocol)}" if protocol else "")
        + (
            f". Changes are against the previous published run <code>{e(prev)}</code> (green: better)."
            if prev
            else ". No earlier published run to compare with."
        )
        + "</p>"
    )
    headers = ["model / baseline", "index"] + [f"{m}@{kk}" for kk in ks for m in HEADLINE]
    rows = []
    for role, index in pairs:
        model_run_id = next((m.model_run_id for m in acc if m.role == role), role)
        cells = [e("model" if role == "model" else role), e(index)]
        for kk in ks:
            for metric in HEADLINE:
                value = now.get((role, index, metric, kk, split))
                if value is None:
                    cells.append('<td class="num">–</td>')
                    continue
                cells.append(
                    f'<td class="num headline" data-role="{e(role)}" data-model-run="{e(model_run_id)}" '
                    f'data-index="{e(index)}" data-metric="{e(metric)}" data-k="{kk}" '
                    f'data-split="{e(split)}" '
                    f'data-value="{value!r}">{fmt(value)}'
                    f"{delta(value, before.get((role, index, metric, kk, split)))}</td>"
                )
        rows.append(cells)
    out.append(table(headers, rows, "headline"))
    series = {
        f"{'model' if role == 'model' else role} · {index}": [
            now.get((role, index, m, k, split), math.nan) for m in HEADLINE
        ]
        for role, index in pairs
    }
    svg = charts.grouped_bars("headline", f"{split} split, k = {k}", [f"{m}@{k}" for m in HEADLINE], series)
    out.append(
        figure(
            "headline",
            svg,
            f"Each bar is a {split}-split metric at k={k} for the model (ranked exactly and through the "
            "annoy index it serves from) and for each baseline; higher is better, and the model should "
            "clear every baseline.",
        )
    )
    return "".join(out) + "</section>"


def _trend(d: RunData) -> str:
    out = ['<section id="trend"><h2>Trend over the kept runs</h2>']
    # a run without metrics (failed before evaluate) still shows the runs before it
    k = d.headline_k or headline_k(d.trend_metrics)
    split = d.split or headline_split(d.trend_metrics)
    runs = [r.run_id for r in d.runs]
    if k is None or len(runs) < 1 or not d.trend_metrics:
        return out[0] + na("no metrics over the kept runs") + "</section>"
    pos = {r: i for i, r in enumerate(runs)}
    panels: dict[str, dict[str, list[float]]] = {}
    for metric in ("ndcg", "recall"):
        series: dict[str, list[float]] = {}
        for m in d.trend_metrics:
            if m.metric == metric and m.k == k and m.split == split and is_overall(m):
                series.setdefault(series_name(m), [math.nan] * len(runs))[pos[m.run_id]] = m.value
        if series:
            panels[f"{metric}@{k}"] = dict(
                sorted(series.items(), key=lambda kv: (not kv[0].startswith("model"), kv[0]))
            )
    if not panels:
        return out[0] + na("no NDCG/Recall rows over the kept runs") + "</section>"
    retrains = []
    for i in range(1, len(d.runs)):
        now, before = d.runs[i].model_run_id, d.runs[i - 1].model_run_id
        if now and before and now != before:
            retrains.append(i)
    failed = [i for i, r in enumerate(d.runs) if r.status == "failed"]
    svg = charts.trend(
        "trend", f"{split} split, k = {k}, last {len(runs)} run(s)", runs, panels, retrains, failed
    )
    out.append(
        figure(
            "trend",
            svg,
            "Each line is the model (per index) or a baseline over the kept runs, oldest on the left; dashed "
            "verticals mark the first run of a newly trained model, red × marks failed runs.",
        )
    )
    return "".join(out) + "</section>"


def _training(d: RunData) -> str:
    out = ['<section id="training"><h2>Training curves</h2>']
    model = d.model
    if model is None:
        return out[0] + na("no model run is recorded for this run") + "</section>"
    epochs = (model.get("history") or {}).get("epochs") or []
    train_step = d.steps.get("train")
    trained_now = bool(train_step and train_step.status == "success")
    out.append(
        f"<p>Model run <code>{e(model['model_run_id'])}</code> ({e(model['model'])}), "
        f"{'trained by this run' if trained_now else 'trained earlier'}, finished "
        f"{e(fmt_time(model.get('finished_at')))}"
        f" in {e(fmt_seconds(model.get('wall_seconds')))}; best epoch {e(model.get('best_epoch'))}, "
        f"validation NDCG@10 {e(fmt(model.get('best_metric')))}.</p>"
    )
    params = model.get("params") or {}
    shown = {k: v for k, v in params.items() if not isinstance(v, dict | list)}
    if shown:
        out.append(
            "<details><summary>parameters</summary>"
            + table(["parameter", "value"], [[f"<code>{e(k)}</code>", e(v)] for k, v in shown.items()])
            + "</details>"
        )
    valid_key = _valid_key(epochs)
    if not epochs or valid_key is None:
        return "".join(out) + na("the model run recorded no per-epoch history") + "</section>"
    xs = [int(ep.get("epoch", i + 1)) for i, ep in enumerate(epochs)]
    loss = [float(ep.get("train_loss", math.nan)) for ep in epochs]
    valid = [float((ep.get("valid") or {}).get(valid_key, math.nan)) for ep in epochs]
    baseline = ((model.get("history") or {}).get("popularity_valid") or {}).get(valid_key)
    svg = charts.training(
        "training", "training curves", xs, loss, valid, valid_key, model.get("best_epoch"), baseline
    )
    out.append(
        figure(
            "training",
            svg,
            f"Left: training loss per epoch (should fall). Right: validation {valid_key} per epoch against "
            "the popularity baseline (dotted); the star marks the best epoch, the one the model keeps.",
        )
    )
    return "".join(out) + "</section>"


def _valid_key(epochs: list[dict[str, Any]]) -> str | None:
    keys = [k for ep in epochs for k in (ep.get("valid") or {})]
    ndcg = sorted({k for k in keys if k.startswith("ndcg@")}, key=lambda k: (k != "ndcg@10", k))
    return ndcg[0] if ndcg else None


def _retrieval(d: RunData) -> str:
    out = ['<section id="retrieval"><h2>Retrieval</h2>']
    score = d.steps.get("score")
    sd = score.details if score and score.status == "success" else {}
    if sd:
        annoy = sd.get("annoy") or {}
        users_s = sd["users"] / sd["seconds"] if sd.get("users") and sd.get("seconds") else None
        rows = [
            ["index", e(sd.get("index"))],
            ["k", e(sd.get("k"))],
            ["users scored", e(fmt_int(sd.get("users")))],
            ["seconds", e(fmt(sd.get("seconds"), 2))],
            ["users / s", e(fmt_int(users_s))],
        ]
        rows += [[f"seconds: {e(p)}", e(fmt(s, 3))] for p, s in (sd.get("seconds_by_phase") or {}).items()]
        for key in (
            "metric",
            "n_trees",
            "search_k",
            "tuned_k",
            "recall",
            "target_recall",
            "met_target",
            "sample_users",
            "built",
            "build_seconds",
            "tune_seconds",
        ):
            if key in annoy:
                rows.append([f"annoy {e(key)}", e(annoy[key])])
        out.append(table(["setting", "value"], rows, "retrieval"))
    else:
        out.append(na("the run did not score (see the steps above)"))
    recall = {
        (m.index, m.k): m.value
        for m in d.metrics
        if m.role == "model" and m.metric == "recall" and m.split == d.split and is_overall(m)
    }
    overlap = {
        m.k: m.value
        for m in d.metrics
        if m.metric.startswith(RETRIEVAL_PREFIX) and m.split == d.split and is_overall(m)
    }
    ks = sorted({k for _, k in recall})
    if recall and {"exact", "annoy"} <= {i for i, _ in recall}:
        series = {
            "model · exact": [recall.get(("exact", k), math.nan) for k in ks],
            "model · annoy": [recall.get(("annoy", k), math.nan) for k in ks],
        }
        svg = charts.grouped_bars(
            "retrieval", "recall@k: exact ranking vs the annoy index", [f"k={k}" for k in ks], series
        )
        ov = "; ".join(f"annoy_recall@{k} = {v:.3f}" for k, v in sorted(overlap.items()))
        out.append(
            figure(
                "retrieval",
                svg,
                "Per k, the model's recall when the catalogue is ranked exactly and through annoy; the gap "
                "is what the approximate index "
                f"costs{(' (' + ov + ': share of the exact top-k annoy returned)') if ov else ''}.",
            )
        )
    elif "metrics" not in d.unavailable:
        out.append(na("the run evaluated one index only, so there is no annoy-vs-exact comparison"))
    if d.annoy_trials and sd.get("annoy"):
        svg = charts.annoy_tuning("annoy-tuning", "annoy tuning", d.annoy_trials, sd["annoy"])
        out.append(
            figure(
                "annoy-tuning",
                svg,
                "Each point is a search_k tried while tuning the index on a sample of users (recall against "
                "the exact top-k); the star is the setting used, the dotted line the target.",
            )
        )
    return "".join(out) + "</section>"


def _beyond(d: RunData) -> str:
    out = ['<section id="beyond"><h2>Beyond accuracy</h2>']
    # the production lists' rows when the evaluation wrote them, else those of the headline split
    split = PRODUCTION_SPLIT if any(m.split == PRODUCTION_SPLIT for m in d.metrics) else d.split
    rows = [
        m
        for m in d.metrics
        if m.metric not in ACCURACY
        and not m.metric.startswith(RETRIEVAL_PREFIX)
        and m.split == split
        and is_overall(m)
    ]
    if rows:
        before = {(m.role, m.index, m.metric, m.k): m.value for m in d.previous_metrics if is_overall(m)}
        names = sorted({(m.metric, m.k) for m in rows})
        pairs = _order(rows)
        value = {(m.role, m.index, m.metric, m.k): m.value for m in rows}
        body = []
        for role, index in pairs:
            cells = [e(role), e(index)]
            for metric, k in names:
                v = value.get((role, index, metric, k))
                cells.append(
                    '<td class="num">–</td>'
                    if v is None
                    else f'<td class="num beyond" data-metric="{e(metric)}" data-k="{k}" data-value="{v!r}">'
                    f"{fmt(v)}{delta(v, before.get((role, index, metric, k)), None)}</td>"
                )
            body.append(cells)
        out.append(table(["model / baseline", "index"] + [f"{m}@{k}" for m, k in names], body, "beyond"))
        panels: dict[str, dict[str, float]] = {}
        for metric, k in names:
            if k not in (d.headline_k, 0) and any(m2 == metric and k2 == d.headline_k for m2, k2 in names):
                continue
            panels[f"{metric}@{k}" if k else metric] = {
                f"{role if role != 'model' else 'model'} · {index}": value[(role, index, metric, k)]
                for role, index in pairs
                if (role, index, metric, k) in value
            }
        svg = charts.small_multiples("beyond", "beyond-accuracy metrics", panels)
        out.append(
            figure(
                "beyond",
                svg,
                "One panel per metric (scales differ), one bar per model/index and baseline; changes in the "
                "table are against the previous published run and are not coloured, since which way is "
                "better depends on the metric.",
            )
        )
    else:
        out.append(
            na(
                "no beyond-accuracy rows (coverage, popularity bias, novelty, diversity, churn) in "
                "evaluation_metrics"
            )
        )
    out.append("<h3>Long tail</h3>")
    lt = d.long_tail
    if lt is None:
        out.append(na(d.unavailable.get("long_tail", "no recommendations")))
    else:
        top10 = float(np.interp(0.10, lt["catalogue"], lt["recs"]))
        top10_train = float(np.interp(0.10, lt["catalogue"], lt["train"]))
        svg = charts.long_tail("long-tail", "share of recommendations by item popularity", lt)
        out.append(
            f'<p class="longtail-summary">{lt["items_recommended"]:,} of {lt["n_items"]:,} catalogue items '
            f"({lt['items_recommended'] / max(lt['n_items'], 1):.1%}) were recommended at least once in "
            f"{lt['slots']:,} slots; the 10% most popular items took {top10:.1%} of the slots "
            f"(and {top10_train:.1%} of training interactions).</p>"
        )
        out.append(
            figure(
                "long-tail",
                svg,
                "Items ordered from most to least popular in training (x); each curve's height at x is the "
                "share of recommendation slots (blue) or training interactions (orange) that went to the "
                "top x% of the catalogue; the nearer blue runs to the dotted diagonal, the more evenly the "
                "catalogue is recommended.",
            )
        )
    return "".join(out) + "</section>"


def _slices(d: RunData) -> str:
    out = ['<section id="slices"><h2>Slices</h2>']
    k = d.headline_k
    rows = [
        m for m in d.metrics if not is_overall(m) and m.metric in HEADLINE and m.split == d.split and m.k == k
    ]
    if not rows:
        return (
            out[0]
            + na("no per-slice rows (cold/active users, head/tail targets) in evaluation_metrics")
            + "</section>"
        )
    slices = sorted({m.slice or "" for m in rows})
    pairs = _order(rows)
    value = {(m.slice, m.role, m.index, m.metric): m.value for m in rows}
    users = {(m.slice, m.role, m.index): m.n_users for m in rows}
    headers = ["slice"] + [
        f"{role} · {index}: {metric}@{k}" for role, index in pairs for metric in ("ndcg", "recall")
    ]
    body = []
    for s in slices:
        cells = [e(s)]
        for role, index in pairs:
            for metric in ("ndcg", "recall"):
                v = value.get((s, role, index, metric))
                n = users.get((s, role, index))
                cells.append(f'<td class="num" title="{e(fmt_int(n))} users">{fmt(v)}</td>')
        body.append(cells)
    out.append(table(headers, body, "slices"))
    series = {
        f"{role} · {index}": [value.get((s, role, index, "ndcg"), math.nan) for s in slices]
        for role, index in pairs
    }
    svg = charts.grouped_bars("slices", f"NDCG@{k} per slice", slices, series)
    out.append(
        figure(
            "slices",
            svg,
            f"NDCG@{k} per slice of users or targets (column {d.slice_column}); a model that wins overall "
            "but loses to a baseline on a slice (cold users, tail targets) shows it here.",
        )
    )
    return "".join(out) + "</section>"


def _pipeline(d: RunData) -> str:
    out = ['<section id="pipeline"><h2>Pipeline</h2><h3>Step durations</h3>']
    runs = [r.run_id for r in d.runs if r.job is not None]
    if d.durations and runs:
        steps = list(dict.fromkeys(r["step"] for r in d.durations))
        pos = {r: i for i, r in enumerate(runs)}
        stacks = {s: [0.0] * len(runs) for s in steps}
        for r in d.durations:
            if r["run_id"] in pos:
                stacks[r["step"]][pos[r["run_id"]]] = float(r["seconds"] or 0)
        failed = [i for i, r in enumerate(d.runs) if r.job is not None and r.status == "failed"]
        svg = charts.stacked_runs(
            "durations", f"seconds per step, last {len(runs)} run(s)", runs, stacks, failed
        )
        out.append(
            figure(
                "durations",
                svg,
                "Each bar is one run, stacked by step (seconds), oldest on the left; a step that suddenly "
                "grows stands out; red labels are failed runs.",
            )
        )
    else:
        out.append(na("no job steps recorded (the run was not made by the nightly job)"))
    out.append("<h3>Ingested batches</h3>")
    if d.batches:
        labels = [f"#{b['batch_seq']} {Path(b['path'] or '').name[:18]}" for b in d.batches]
        svg = charts.batches(
            "batches",
            f"rows per batch, last {len(d.batches)}",
            labels,
            [b["rows_accepted"] or 0 for b in d.batches],
            [b["rows_rejected"] or 0 for b in d.batches],
            [bool(b["this_run"]) for b in d.batches],
        )
        mine = [b for b in d.batches if b["this_run"]]
        out.append(
            f"<p>{len(mine)} batch(es) ingested by this run: {sum(b['rows_accepted'] or 0 for b in mine):,} "
            f"rows accepted, {sum(b['rows_rejected'] or 0 for b in mine):,} rejected.</p>"
        )
        out.append(
            figure(
                "batches",
                svg,
                f"Per ingested file (the last {len(d.batches)}, oldest on the left): rows accepted (green) "
                "and rejected (red) on a log scale; the shaded files were ingested by this run.",
            )
        )
        if d.reject_reasons:
            rows = [
                [
                    e(r["reason"]),
                    f'<td class="num">{r["rows"]:,}</td>',
                    f'<td class="num">{r["batches"]:,}</td>',
                    f'<span class="mono">{e((r["example"] or "")[:160])}</span>',
                    f'<span class="mono">{e(Path(str(r["example_at"] or "")).name)}</span>',
                ]
                for r in d.reject_reasons
            ]
            out.append(
                "<h3>Top reject reasons</h3>"
                + table(["reason", "rows", "files", "first example (raw)", "at"], rows, "rejects")
            )
        else:
            out.append("<p>No rows were rejected in these batches.</p>")
    else:
        out.append(na(d.unavailable.get("batches", "no batches")))
    out.append("<h3>Feature build</h3>")
    if d.build and d.build["models"]:
        models = sorted(d.build["models"].items(), key=lambda kv: kv[0])
        svg = charts.hbars(
            "build",
            f"rows per table, build {d.build['build_id']}",
            [name for name, _ in models],
            [float((m or {}).get("rows") or 0) for _, m in models],
            [
                f"{(m or {}).get('rows', 0):,} rows, {float((m or {}).get('seconds') or 0):.2f} s"
                for _, m in models
            ],
            "rows (log scale)",
        )
        report = d.build["report"] or {}
        out.append(
            f"<p>Build <code>{e(d.build['build_id'])}</code> ({e(d.build['status'])}, finished "
            f"{e(fmt_time(d.build['finished_at']))}); users dropped for short histories: "
            f"{e(fmt_int(report.get('users_dropped_short')))}.</p>"
        )
        out.append(
            figure(
                "build",
                svg,
                "Rows per feature-store table in the build this run used (log scale), with the seconds each "
                "model took; an empty or shrunken table stands out.",
            )
        )
    else:
        out.append(na(d.unavailable.get("build", "no feature build recorded")))
    return "".join(out) + "</section>"


def _embedding(d: RunData) -> str:
    out = ['<section id="embedding"><h2>Embedding map</h2>']
    emb = d.embedding
    if emb is None:
        return out[0] + na(d.unavailable.get("embedding", "no item vectors")) + "</section>"
    ex = emb["explained"]
    svg = charts.scatter(
        "embedding",
        f"{emb['n']:,} item vectors, PCA",
        emb["xy"],
        emb["labels"],
        [f"PC1 ({ex[0]:.0%} of variance)", f"PC2 ({ex[1]:.0%})"],
    )
    colour = (
        f"coloured by {emb['colour_by']}" if emb["colour_by"] else "uncoloured (no item category or tags)"
    )
    out.append(
        figure(
            "embedding",
            svg,
            f"A seeded sample of {emb['n']:,} of the model's {emb['dim']}-d item vectors projected to 2-D "
            f"by PCA, {colour}; items the model treats as similar sit close together, so categories "
            "should form regions.",
        )
    )
    return "".join(out) + "</section>"


SECTION_BUILDERS: tuple[Callable[[RunData], str], ...] = (
    _headline,
    _trend,
    _training,
    _retrieval,
    _beyond,
    _slices,
    _pipeline,
    _embedding,
)


def run_page(d: RunData, links: dict[str, str | None], generated: dt.datetime) -> str:
    """The whole HTML document of one run."""
    body = [_header(d, links, generated), "<main>", _summary(d, links)]
    for build in SECTION_BUILDERS:
        body.append(build(d))
    body.append(
        f"<footer>Generated by <code>rechub-store report</code> from {e(d.source.origin)} "
        f"<code>{e(d.source.path.name)}</code>. Static page: no scripts, nothing loaded from the "
        "network.</footer>"
    )
    body.append("</main>")
    return _document(f"rechub-store · {d.run.run_id} ({d.run.status})", "".join(body))


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src '
        "'unsafe-inline'; "
        'img-src data:">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


# ---------------------------------------------------------------------------- index
def index_page(
    runs: Sequence[Run],
    headline: dict[str, dict[str, float]],
    metric_name: str | None,
    pages: dict[str, str],
    logs: dict[str, str],
    source_name: str,
    generated: dt.datetime,
) -> str:
    """Runs newest first with status, failed step, headline metric and links; a trend chart on top."""
    ordered = list(reversed(runs))
    body = [
        "<header><h1>rechub-store runs</h1>"
        f'<div class="sub">{len(ordered)} run(s) · generated {e(fmt_time(generated))} from '
        f"{e(source_name)}</div>"
        "</header><main>"
    ]
    if metric_name and any(headline.values()):
        chrono = [r.run_id for r in runs]
        names = sorted(
            {n for v in headline.values() for n in v}, key=lambda n: (not n.startswith("model"), n)
        )
        series = {n: [headline.get(r, {}).get(n, math.nan) for r in chrono] for n in names}
        failed = [i for i, r in enumerate(runs) if r.status == "failed"]
        retrains = [
            i
            for i in range(1, len(runs))
            if runs[i].model_run_id
            and runs[i - 1].model_run_id
            and runs[i].model_run_id != runs[i - 1].model_run_id
        ]
        svg = charts.trend(
            "index-trend", f"{metric_name} over runs", chrono, {metric_name: series}, retrains, failed
        )
        body.append(
            figure(
                "index-trend",
                svg,
                f"{metric_name} of the model (per index) and the baselines for each run, oldest on the "
                "left; dashed verticals: a newly trained model; red ×: failed runs.",
            )
        )
    rows = []
    for i, r in enumerate(ordered):
        older = next(
            (o for o in ordered[i + 1 :] if headline.get(o.run_id, {}).get("model · exact") is not None), None
        )
        value = headline.get(r.run_id, {}).get("model · exact")
        prev = headline.get(older.run_id, {}).get("model · exact") if older else None
        link = (
            f'<a class="run" href="{pages[r.run_id]}">{e(r.run_id)}</a>' if r.run_id in pages else e(r.run_id)
        )
        log = f'<a href="{logs[r.run_id]}">log</a>' if r.run_id in logs else ""
        rows.append(
            [
                link,
                badge(r.status),
                e(r.failed_step or ""),
                e(fmt_time(r.started_at)),
                f'<td class="num">{e(fmt_seconds(r.seconds))}</td>',
                f"<code>{e(r.model_run_id or '')}</code>" + (" (retrained)" if r.retrained else ""),
                f'<td class="num">{fmt(value)}{delta(value, prev)}</td>',
                "yes" if r.published else "no",
                log,
            ]
        )
    body.append(
        table(
            [
                "run",
                "status",
                "failed step",
                "started",
                "duration",
                "model run",
                f"model {e(metric_name or 'metric')} (exact)",
                "published",
                "log",
            ],
            rows,
            "runs",
        )
    )
    body.append("<footer>Static page: no scripts, nothing loaded from the network.</footer></main>")
    return _document("rechub-store · runs", "".join(body))
