"""The run pages and the index in a real browser (headless Chromium): they render every chart with
marks, load nothing from the network, log no console error, show the numbers evaluation_metrics
holds, and their links lead to files that exist and open."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import duckdb
import pytest
from conftest import ReportWarehouse, Visit, fetch, visit

from rechub_store.report import build_report, page_path

# Counting marks in the browser: a chart's data artists carry ids `<chart>-mark-<n>`; a mark counts
# when it (or the path/use elements it groups) has a non-empty rendered box.
MARKS_JS = """
() => [...document.querySelectorAll('figure.chart')].map(fig => {
  const marks = [...fig.querySelectorAll('[id*="-mark-"]')];
  const drawn = marks.filter(m => {
    const shapes = m.matches('path, use, rect') ? [m] : [...m.querySelectorAll('path, use, rect')];
    return shapes.some(s => { const b = s.getBBox(); return b.width + b.height > 0; });
  });
  return {id: fig.id, marks: marks.length, drawn: drawn.length,
          caption: (fig.querySelector('figcaption') || {}).textContent || ''};
})
"""
SUCCESS_CHARTS = {
    "headline", "trend", "training", "retrieval", "annoy-tuning", "long-tail", "durations", "batches",
    "build", "embedding",
}  # fmt: skip


def charts(v: Visit) -> dict[str, dict[str, Any]]:
    return {c["id"].removeprefix("chart-"): c for c in v.page.evaluate(MARKS_JS)}


def assert_clean(v: Visit, path: Path) -> None:
    assert v.console_errors == [], v.console_errors
    assert v.requests == [path.resolve().as_uri()], f"the page loaded more than itself: {v.requests}"


def assert_marks(found: dict[str, dict[str, Any]]) -> None:
    for name, c in found.items():
        assert c["drawn"] > 0 and c["drawn"] == c["marks"], f"chart {name}: {c}"
        assert c["caption"].strip(), f"chart {name} has no caption"


def test_success_page_renders_every_section(browser: Any, report_wh: ReportWarehouse) -> None:
    run = report_wh.runs[1]  # retrained, ingested a file with rejects, published after run 1
    path = page_path(report_wh.wh, run)
    v = visit(browser, path)
    assert_clean(v, path)
    found = charts(v)
    assert set(found) >= SUCCESS_CHARTS, sorted(found)
    assert_marks(found)
    text = v.page.inner_text("body")
    for heading in ("Headline", "Trend over the kept runs", "Training curves", "Retrieval", "Beyond accuracy",
                    "Long tail", "Slices", "Step durations", "Ingested batches", "Top reject reasons",
                    "Feature build", "Embedding map"):  # fmt: skip
        assert heading in text, heading
    # the evaluation protocol's rows: beyond-accuracy metrics of the production lists, and slices
    assert "Not computed" not in v.page.inner_text("#beyond") and "Not computed" not in v.page.inner_text(
        "#slices"
    )
    beyond = set(v.page.eval_on_selector_all("td.beyond", "cs => cs.map(c => c.dataset.metric)"))
    assert {"coverage", "gini", "novelty", "popularity_percentile", "personalisation"} <= beyond
    # the reject reasons of the file this run ingested
    assert "unparsable time: ts" in text and "empty id: user_id" in text
    # changes against the previous published run (run 1), coloured
    assert v.page.locator("table.headline .delta.up, table.headline .delta.down").count() > 0
    assert report_wh.runs[0] in v.page.inner_text("table.steps, .kpis")
    v.page.close()


def test_headline_numbers_equal_evaluation_metrics(browser: Any, report_wh: ReportWarehouse) -> None:
    run = report_wh.runs[1]
    v = visit(browser, page_path(report_wh.wh, run))
    cells = v.page.eval_on_selector_all(
        "td.headline",
        "cells => cells.map(c => ({...c.dataset, text: c.firstChild.textContent.trim()}))",
    )
    v.page.close()
    expected = fetch(
        report_wh.wh.analytics_path,
        'SELECT model_run_id, "index", metric, k, value FROM evaluation_metrics '
        "WHERE run_id = ? AND split = 'test' AND slice = 'all' AND metric IN ('recall', 'ndcg', 'mrr')",
        [run],
    )
    assert len(expected) >= 30  # model exact + annoy + three baselines, 3 metrics, k = 5 and 10
    shown = {(c["modelRun"], c["index"], c["metric"], int(c["k"])): c for c in cells}
    assert len(shown) == len(expected)
    for model_run_id, index, metric, k, value in expected:
        cell = shown[(model_run_id, index, metric, k)]
        assert float(cell["value"]) == value
        assert cell["text"] == f"{value:.4f}"


def test_failed_run_page_names_the_step_and_links_the_log(browser: Any, report_wh: ReportWarehouse) -> None:
    run = report_wh.runs[2]
    assert "report: " in report_wh.failed_error  # the failure message points at the page
    path = page_path(report_wh.wh, run)
    v = visit(browser, path)
    assert_clean(v, path)
    banner = v.page.locator(".banner.failed-step")
    assert banner.get_attribute("data-failed-step") == "evaluate"
    assert "fault injected at evaluate" in banner.inner_text()
    log_href = banner.locator("a.log").get_attribute("href")
    assert not urlparse(log_href).scheme, "the log link is relative"
    log_file = (path.parent / unquote(log_href)).resolve()
    assert log_file.parent == report_wh.wh.logs_dir.resolve()
    assert "step evaluate failed" in log_file.read_text()
    # the run scored before failing: its pipeline and long tail show; metrics say why they are missing
    found = charts(v)
    assert {"trend", "durations", "long-tail", "embedding"} <= set(found) and "headline" not in found
    assert_marks(found)
    v.page.click("a.log")  # and the browser opens it
    assert "step evaluate failed" in v.page.inner_text("body")
    v.page.close()


def test_index_lists_runs_newest_first_and_every_link_opens(browser: Any, report_wh: ReportWarehouse) -> None:
    index = report_wh.wh.root / "reports" / "index.html"
    v = visit(browser, index)
    assert_clean(v, index)
    rows = v.page.eval_on_selector_all(
        "table.runs tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))"
    )
    assert [r[0] for r in rows] == list(reversed(report_wh.runs))
    assert [r[1] for r in rows] == ["failed", "success", "success"]
    assert rows[0][2] == "evaluate"
    assert_marks(charts(v))
    hrefs = v.page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))")
    pages = [h for h in hrefs if h.endswith(".html")]
    assert len(pages) == 3 and len(hrefs) == 6  # a page and a log per run
    for href in hrefs:
        assert not urlparse(href).scheme, href
        target = (index.parent / unquote(href)).resolve()
        assert target.is_file(), href
    for href in pages:
        target = (index.parent / unquote(href)).resolve()
        run_page = visit(browser, target)
        assert_clean(run_page, target)
        back = run_page.page.get_attribute("header a[href='index.html']", "href")
        assert (target.parent / back).resolve() == index.resolve()
        run_page.page.close()
    v.page.close()


def test_the_headline_keeps_to_one_protocol(browser: Any, report_wh: ReportWarehouse, tmp_path: Path) -> None:
    """Rows of the same run under another seen filter (halved values) never reach the headline; the
    page names the protocol it shows, and every baseline is beside the model."""
    wh = report_wh.copy(tmp_path / "wh")
    run = report_wh.runs[1]
    con = duckdb.connect(str(wh.path))
    try:
        con.execute(
            "INSERT INTO evaluation_metrics BY NAME "
            "SELECT * REPLACE (value / 2 AS value, 'all' AS seen_filter) FROM evaluation_metrics "
            "WHERE run_id = ? AND seen_filter = 'except-target'",
            [run],
        )
    finally:
        con.close()
    result = build_report(wh, run)
    path = Path(result.path)
    v = visit(browser, path)
    assert_clean(v, path)
    assert "seen_filter = except-target" in v.page.inner_text("body")
    roles = set(v.page.eval_on_selector_all("td.headline", "cs => cs.map(c => c.dataset.role)"))
    assert roles == {"model", "popularity", "itemknn", "transition"}
    values = {
        (c["modelRun"], c["index"], c["metric"], int(c["k"])): float(c["value"])
        for c in v.page.eval_on_selector_all("td.headline", "cs => cs.map(c => ({...c.dataset}))")
    }
    truth = dict(
        ((m, i, metric, k), value)
        for m, i, metric, k, value in fetch(
            wh.path,
            'SELECT model_run_id, "index", metric, k, value FROM evaluation_metrics WHERE run_id = ? '
            "AND seen_filter = 'except-target' AND slice = 'all' AND metric IN ('recall', 'ndcg', 'mrr') "
            "AND split = 'test'",
            [run],
        )
    )
    assert values == truth
    v.page.close()


@pytest.mark.parametrize("which", ["page", "index"])
def test_pages_render_without_network_access(browser: Any, report_wh: ReportWarehouse, which: str) -> None:
    """With every non-file request blocked, nothing is missing: no request was even attempted."""
    path = (
        page_path(report_wh.wh, report_wh.runs[1])
        if which == "page"
        else report_wh.wh.root / "reports" / "index.html"
    )
    page = browser.new_page()
    blocked: list[str] = []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else (
        blocked.append(route.request.url), route.abort()))  # fmt: skip
    page.goto(path.resolve().as_uri(), wait_until="load")
    assert blocked == []
    assert page.locator("figure.chart svg").count() >= 1
    page.close()
