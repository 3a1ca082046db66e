"""The report's charts: matplotlib figures rendered to inline SVG (static, no JavaScript, no network).

matplotlib is used through `Figure` objects only (no pyplot, so no global state and no GUI
backend). Text stays text (`svg.fonttype = none`: smaller pages, searchable), element ids are
salted per chart so several SVGs can share one HTML document, and every data-carrying artist
gets an id `<chart>-mark-<n>`: the browser test counts those marks per chart. Inputs are small
aggregates (bins, runs, epochs, a sample of items), never one mark per user.

matplotlib reports through `logging` and `warnings` (e.g. building its font cache on first use);
`quiet_matplotlib` sends both to this module's logger, so a `--quiet` nightly prints nothing.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODEL_COLOURS = {"exact": "#1f5fa8", "annoy": "#7fb2e5"}
OTHER_COLOURS = ["#e6842a", "#3a9a4a", "#8e5bb5", "#a0522d", "#d6589f", "#7f7f7f", "#bcbd22", "#17becf"]
STEP_COLOURS = {
    "ingest": "#8c6bb1",
    "build": "#3a9a4a",
    "train": "#e6842a",
    "score": "#1f5fa8",
    "evaluate": "#7fb2e5",
    "publish": "#d6589f",
}
SCATTER_COLOURS = [  # matplotlib's tab10 minus grey (kept for "other")
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
]  # fmt: skip
GOOD, BAD = "#1a7f37", "#cf222e"
RC = {
    "svg.fonttype": "none",
    "text.parse_math": False,  # labels are data (categories, file names): a "$" must stay a "$"
    "font.size": 8.5,
    "font.family": "DejaVu Sans",  # ships with matplotlib; browsers without it fall back to their sans
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
    "axes.grid": True,
    "grid.color": "#e4e4e4",
    "grid.linewidth": 0.6,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
}


class _Forward(logging.Handler):
    """matplotlib's warnings (missing fonts, cache folders) become INFO lines of our log: worth a
    line in the run's log file, never output on the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        log.info("matplotlib: %s", record.getMessage())


@contextlib.contextmanager
def quiet_matplotlib() -> Iterator[None]:
    """Route matplotlib's log records and warnings to our logger (the run's log file), not stderr."""
    mpl_log = logging.getLogger("matplotlib")
    handler = _Forward(logging.WARNING)
    mpl_log.addHandler(handler)
    propagate, mpl_log.propagate = mpl_log.propagate, False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            log.info("warning while drawing: %s", w.message)
    finally:
        mpl_log.removeHandler(handler)
        mpl_log.propagate = propagate


def chart(fn: Callable[..., str]) -> Callable[..., str]:
    """Draw the whole chart (legends and labels included) under the report's matplotlib settings."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        with _rc():
            return fn(*args, **kwargs)

    return wrapper


class Canvas:
    """One figure with its chart id; `mark` tags data artists, `svg()` renders the inline SVG."""

    def __init__(self, chart_id: str, width: float, height: float, nrows: int = 1, ncols: int = 1, **kw: Any):
        from matplotlib.figure import Figure  # lazy on purpose: matplotlib loads only when a chart is drawn

        self.id = chart_id
        self.marks = 0
        self.fig = Figure(figsize=(width, height), layout="constrained")
        self.axes = list(np.atleast_1d(self.fig.subplots(nrows, ncols, squeeze=False, **kw)).ravel())

    def mark(self, *artists: Any) -> None:
        for artist in artists:
            if isinstance(artist, list | tuple) or hasattr(artist, "patches"):
                self.mark(*(artist.patches if hasattr(artist, "patches") else artist))
                continue
            artist.set_gid(f"{self.id}-mark-{self.marks}")
            self.marks += 1

    def finish(self, ax: Any, title: str, legend_outside: bool = False) -> str:
        """The common ending: `title` left on `ax`, with `legend_outside` the legend right of the plot
        and no vertical grid lines (bar charts), then the inline SVG."""
        if legend_outside:
            ax.grid(axis="x", visible=False)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title(title, loc="left")
        return self.svg(title)

    def svg(self, title: str) -> str:
        buf = io.StringIO()
        with _rc({"svg.hashsalt": self.id}):
            self.fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        return _inline(buf.getvalue(), self.id, title)


def _rc(extra: dict[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    import matplotlib  # lazy on purpose (see Canvas)

    return matplotlib.rc_context({**RC, **(extra or {})})


_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def _inline(text: str, chart_id: str, title: str) -> str:
    """matplotlib's SVG document -> an element for inline HTML (no XML prolog or metadata, labelled)."""
    text = _PROLOG.sub("", text, count=1)
    text = _METADATA.sub("", text, count=1)
    title_attr = title.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return text.replace("<svg ", f'<svg role="img" aria-label="{title_attr}" data-chart="{chart_id}" ', 1)


def short_run(run_id: str) -> str:
    return run_id.removeprefix("nightly-")


def _run_axis(ax: Any, labels: Sequence[str]) -> None:
    n = len(labels)
    step = max(1, math.ceil(n / 15))
    ax.set_xticks(range(0, n, step))
    ax.set_xticklabels(
        [short_run(x) for x in labels[::step]], rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center"
    )
    ax.set_xlim(-0.6, n - 0.4)


def series_colours(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per series: the model's two indexes in blues, baselines after."""
    out, i = {}, 0
    for name in names:
        if name.startswith("model"):
            out[name] = MODEL_COLOURS["annoy" if "annoy" in name else "exact"]
        else:
            out[name] = OTHER_COLOURS[i % len(OTHER_COLOURS)]
            i += 1
    return out


# ---------------------------------------------------------------------------- charts
@chart
def grouped_bars(
    chart_id: str,
    title: str,
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    ylabel: str = "",
    width: float = 7.0,
    height: float = 2.8,
) -> str:
    """Bars per group (x) and series (colour); NaN leaves a gap. Values printed above the bars."""
    c = Canvas(chart_id, width, height)
    ax = c.axes[0]
    colours = series_colours(list(series))
    n = max(1, len(series))
    w = 0.8 / n
    x = np.arange(len(groups))
    top = 0.0
    for i, (name, values) in enumerate(series.items()):
        vals = np.array(values, dtype=float)
        bars = ax.bar(x - 0.4 + w * (i + 0.5), np.nan_to_num(vals), w, label=name, color=colours[name])
        c.mark(*[b for b, v in zip(bars.patches, vals, strict=True) if not math.isnan(v)])
        for b, v in zip(bars.patches, vals, strict=True):
            if not math.isnan(v):
                ax.annotate(
                    f"{v:.3g}",
                    (b.get_x() + b.get_width() / 2, v),
                    ha="center",
                    va="bottom",
                    fontsize=6.5,
                    xytext=(0, 1),
                    textcoords="offset points",
                )
                top = max(top, v)
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylim(0, top * 1.18 if top > 0 else 1)
    ax.set_ylabel(ylabel)
    return c.finish(ax, title, legend_outside=True)


@chart
def trend(
    chart_id: str,
    title: str,
    runs: Sequence[str],
    panels: dict[str, dict[str, Sequence[float]]],
    retrains: Sequence[int],
    failed: Sequence[int],
) -> str:
    """One panel per metric: a line per series over runs; dashed verticals at retrains, × at failures."""
    c = Canvas(chart_id, 7.2, 2.4 * len(panels), nrows=len(panels), sharex=True)
    names = list(dict.fromkeys(name for p in panels.values() for name in p))
    colours = series_colours(names)
    x = np.arange(len(runs))
    for ax, (metric, series) in zip(c.axes, panels.items(), strict=True):
        for name, values in series.items():
            vals = np.array(values, dtype=float)
            (line,) = ax.plot(
                x, vals, marker="o", markersize=3.5, linewidth=1.4, label=name, color=colours[name]
            )
            if not np.all(np.isnan(vals)):
                c.mark(line)
        for i, pos in enumerate(retrains):
            ax.axvline(pos, color="#555", linestyle="--", linewidth=0.8, label="retrain" if i == 0 else None)
        if failed:
            ax.plot(
                failed,
                [0] * len(failed),
                linestyle="none",
                marker="x",
                color=BAD,
                markersize=6,
                label="failed run",
                clip_on=False,
            )
        ax.set_ylabel(metric)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _run_axis(c.axes[-1], runs)
    c.axes[0].set_title(title, loc="left")
    return c.svg(title)


@chart
def training(
    chart_id: str,
    title: str,
    epochs: Sequence[int],
    loss: Sequence[float],
    valid: Sequence[float],
    valid_name: str,
    best_epoch: int | None,
    baseline: float | None,
) -> str:
    """Training loss and validation metric per epoch, the best epoch starred."""
    c = Canvas(chart_id, 7.2, 2.5, ncols=2)
    ax1, ax2 = c.axes
    (l1,) = ax1.plot(epochs, loss, marker="o", markersize=3.5, color=OTHER_COLOURS[0])
    c.mark(l1)
    ax1.set_xlabel("epoch")
    ax1.set_title("training loss", loc="left")
    (l2,) = ax2.plot(epochs, valid, marker="o", markersize=3.5, color=MODEL_COLOURS["exact"], label="model")
    c.mark(l2)
    if baseline is not None:
        ax2.axhline(baseline, color=OTHER_COLOURS[0], linestyle=":", linewidth=1.2, label="popularity")
    if best_epoch is not None and best_epoch in epochs:
        value = valid[list(epochs).index(best_epoch)]
        for ax, y in ((ax1, loss[list(epochs).index(best_epoch)]), (ax2, value)):
            ax.axvline(best_epoch, color="#555", linestyle="--", linewidth=0.8)
            star = ax.plot(
                [best_epoch],
                [y],
                marker="*",
                markersize=11,
                color=GOOD,
                linestyle="none",
                label="best epoch" if ax is ax2 else None,
            )
            c.mark(*star)
    ax2.set_xlabel("epoch")
    ax2.set_title(f"validation {valid_name}", loc="left")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="lower right")
    for ax in c.axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return c.svg(title)


@chart
def annoy_tuning(chart_id: str, title: str, trials: Sequence[dict[str, Any]], chosen: dict[str, Any]) -> str:
    """Recall against the exact top-k for each search_k tried while tuning; the chosen one starred."""
    c = Canvas(chart_id, 4.6, 2.5)
    ax = c.axes[0]
    pts = sorted((t["search_k"], t["recall"]) for t in trials if "search_k" in t and "recall" in t)
    (line,) = ax.plot(
        [p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4, color=MODEL_COLOURS["exact"]
    )
    c.mark(line)
    if chosen.get("target_recall") is not None:
        ax.axhline(chosen["target_recall"], color=BAD, linestyle=":", linewidth=1, label="target")
    if chosen.get("search_k") is not None and chosen.get("recall") is not None:
        c.mark(
            *ax.plot(
                [chosen["search_k"]],
                [chosen["recall"]],
                marker="*",
                markersize=12,
                color=GOOD,
                linestyle="none",
                label="chosen",
            )
        )
    ax.set_xlabel("search_k")
    ax.set_ylabel("recall vs exact")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    return c.finish(ax, title)


@chart
def long_tail(chart_id: str, title: str, lt: dict[str, Any]) -> str:
    """Cumulative share of recommendation slots and of training interactions by item popularity rank."""
    c = Canvas(chart_id, 5.6, 3.0)
    ax = c.axes[0]
    x = lt["catalogue"] * 100
    ax.plot([0, 100], [0, 100], color="#999", linestyle=":", linewidth=1, label="equal share per item")
    (a,) = ax.plot(x, lt["train"] * 100, color=OTHER_COLOURS[0], linewidth=1.6, label="training interactions")
    (b,) = ax.plot(x, lt["recs"] * 100, color=MODEL_COLOURS["exact"], linewidth=2, label="recommendations")
    fill = ax.fill_between(x, lt["recs"] * 100, alpha=0.12, color=MODEL_COLOURS["exact"], linewidth=0)
    c.mark(a, b, fill)
    ax.set_xlabel("items by training popularity, most popular first (% of catalogue)")
    ax.set_ylabel("cumulative share (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 101)
    ax.legend(loc="lower right")
    return c.finish(ax, title)


@chart
def small_multiples(chart_id: str, title: str, panels: dict[str, dict[str, float]]) -> str:
    """One small horizontal bar panel per metric (their scales differ), a bar per model/baseline."""
    n = len(panels)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    c = Canvas(chart_id, 7.2, 1.25 + 1.1 * rows, nrows=rows, ncols=cols)
    names = list(dict.fromkeys(name for p in panels.values() for name in p))
    colours = series_colours(names)
    for ax, (metric, values) in zip(c.axes, panels.items(), strict=False):
        labels = list(values)
        y = np.arange(len(labels))
        bars = ax.barh(y, [values[k] for k in labels], color=[colours[k] for k in labels], height=0.7)
        c.mark(bars)
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.invert_yaxis()
        ax.set_title(metric, loc="left", fontsize=8.5)
        ax.grid(axis="y", visible=False)
        for b, v in zip(bars.patches, [values[k] for k in labels], strict=True):
            ax.annotate(
                f"{v:.3g}",
                (b.get_width(), b.get_y() + b.get_height() / 2),
                va="center",
                fontsize=6.5,
                xytext=(2, 0),
                textcoords="offset points",
            )
        ax.set_xlim(0, max([abs(v) for v in values.values()] + [1e-9]) * 1.3)
    for ax in c.axes[n:]:
        ax.set_visible(False)
    c.fig.suptitle(title, x=0.01, ha="left", fontsize=9.5, fontweight="bold")
    return c.svg(title)


@chart
def stacked_runs(
    chart_id: str,
    title: str,
    runs: Sequence[str],
    stacks: dict[str, Sequence[float]],
    failed: Sequence[int],
    ylabel: str = "seconds",
) -> str:
    """Stacked bars per run (one colour per step); failed runs' labels in red."""
    c = Canvas(chart_id, 7.2, 2.8)
    ax = c.axes[0]
    x = np.arange(len(runs))
    bottom = np.zeros(len(runs))
    for i, (name, values) in enumerate(stacks.items()):
        vals = np.array(values, dtype=float)
        bars = ax.bar(
            x,
            vals,
            0.7,
            bottom=bottom,
            label=name,
            color=STEP_COLOURS.get(name, OTHER_COLOURS[i % len(OTHER_COLOURS)]),
        )
        c.mark(*[b for b, v in zip(bars.patches, vals, strict=True) if v > 0])
        bottom += vals
    ax.set_ylabel(ylabel)
    _run_axis(ax, runs)
    ticks = list(ax.get_xticks())
    for tick, label in zip(ticks, ax.get_xticklabels(), strict=False):
        if int(tick) in failed:
            label.set_color(BAD)
    return c.finish(ax, title, legend_outside=True)


@chart
def batches(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    accepted: Sequence[int],
    rejected: Sequence[int],
    this_run: Sequence[bool],
) -> str:
    """Accepted and rejected rows per ingested batch (log scale), this run's batches outlined."""
    c = Canvas(chart_id, 7.2, 2.6)
    ax = c.axes[0]
    x = np.arange(len(labels))
    acc = np.array(accepted, dtype=float)
    rej = np.array(rejected, dtype=float)
    w = 0.4
    b1 = ax.bar(x - w / 2, acc, w, color="#3a9a4a", label="accepted")
    b2 = ax.bar(x + w / 2, rej, w, color=BAD, label="rejected")
    c.mark(*[b for b, v in zip(b1.patches, acc, strict=True) if v > 0])
    c.mark(*[b for b, v in zip(b2.patches, rej, strict=True) if v > 0])
    for i, mine in enumerate(this_run):
        if mine:
            ax.axvspan(
                i - 0.5,
                i + 0.5,
                color="#fff3b0",
                zorder=0,
                label="this run" if i == this_run.index(True) else None,
            )
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("rows")
    step = max(1, math.ceil(len(labels) / 20))
    ax.set_xticks(x[::step])
    ax.set_xticklabels(
        list(labels)[::step],
        rotation=45 if len(labels) > 6 else 0,
        ha="right" if len(labels) > 6 else "center",
    )
    return c.finish(ax, title, legend_outside=True)


@chart
def hbars(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    notes: Sequence[str],
    xlabel: str,
) -> str:
    """Horizontal bars (log scale), a note printed beside each."""
    c = Canvas(chart_id, 7.2, 0.9 + 0.2 * len(labels))
    ax = c.axes[0]
    y = np.arange(len(labels))
    vals = np.maximum(np.array(values, dtype=float), 0)
    bars = ax.barh(y, vals, color=MODEL_COLOURS["exact"], height=0.7)
    c.mark(*[b for b, v in zip(bars.patches, vals, strict=True) if v > 0])
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(vals.max() if len(vals) else 1, 1) * 12)  # room for the notes
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)
    for b, note in zip(bars.patches, notes, strict=True):
        ax.annotate(
            note,
            (max(b.get_width(), 0.5), b.get_y() + b.get_height() / 2),
            va="center",
            fontsize=6.5,
            xytext=(3, 0),
            textcoords="offset points",
        )
    return c.finish(ax, title)


@chart
def scatter(
    chart_id: str, title: str, xy: np.ndarray, labels: Sequence[str], axis_names: Sequence[str]
) -> str:
    """Points coloured by label (one collection per label, the largest first, "other" in grey)."""
    c = Canvas(chart_id, 6.4, 4.4)
    ax = c.axes[0]
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    order = sorted(counts, key=lambda k: (k in ("other", "unknown"), -counts[k], k))
    arr = np.array(labels, dtype=object)
    i = 0
    for lab in order:
        sel = arr == lab
        colour = "#b5b5b5" if lab in ("other", "unknown") else SCATTER_COLOURS[i % len(SCATTER_COLOURS)]
        if lab not in ("other", "unknown"):
            i += 1
        pts = ax.scatter(
            xy[sel, 0], xy[sel, 1], s=7, color=colour, alpha=0.8, linewidths=0, label=f"{lab} ({counts[lab]})"
        )
        c.mark(pts)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=2)
    return c.finish(ax, title)
