"""Run reports without a browser: the nightly and demo write them, a report never fails a run,
`--quiet` stays quiet, the CLI's options and errors, the analytics fallback, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import D3, RUN2, ReportWarehouse, fetch, write_job
from typer.testing import CliRunner

import rechub_store.jobs.job as job_module
from rechub_store.cli import app
from rechub_store.jobs.job import run_nightly
from rechub_store.report import build_report, page_path
from rechub_store.warehouse import Warehouse

CLI = [sys.executable, "-c", "from rechub_store.cli import main; main()"]


def test_demo_ends_by_printing_the_report_path(report_wh: ReportWarehouse) -> None:
    last = report_wh.demo_output.strip().splitlines()[-1]
    assert last.startswith("report: ")
    assert Path(last.removeprefix("report: ")).name == f"{report_wh.runs[0]}.html"


def test_every_nightly_run_has_a_page_and_the_index(report_wh: ReportWarehouse) -> None:
    folder = report_wh.wh.root / "reports"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(f"{r}.html" for r in report_wh.runs), "index.html"]
    ), "no temporary files are left behind"
    details = dict(
        fetch(
            report_wh.wh.path,
            "SELECT run_id, details FROM meta.job_runs WHERE step = 'whole'",
        )
    )
    for run in report_wh.runs:
        assert json.loads(details[run])["report"] == str(page_path(report_wh.wh, run))


def test_a_failing_report_never_fails_the_run(
    report_wh: ReportWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = report_wh.copy(tmp_path / "wh")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(job_module, "build_report", broken)  # the nightly step calls it
    result = run_nightly(wh, write_job(wh.root, "never"), D3)  # rerun of the failed date, now fine
    assert result.status == "success" and result.report_path is None
    sql = "SELECT status, details FROM meta.job_runs WHERE run_id = ? AND step = 'whole'"
    ((status, details),) = fetch(wh.path, sql, [result.run_id])
    assert status == "success"
    assert json.loads(details)["report_error"] == "RuntimeError: disk on fire"
    assert "report for nightly-2031-03-03 not written" in Path(result.log_path).read_text()
    assert fetch(wh.analytics_path, "SELECT run_id FROM published") == [(result.run_id,)]


def test_quiet_nightly_prints_nothing_and_writes_the_report(
    report_wh: ReportWarehouse, tmp_path: Path
) -> None:
    wh = report_wh.copy(tmp_path / "wh")
    old = page_path(wh, "nightly-2031-03-04")
    assert not old.exists()
    proc = subprocess.run(
        [*CLI, "--warehouse", str(wh.path), "nightly", "--job", str(wh.root / "job-never.toml"),
         "--run-date", "2031-03-04", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    assert old.exists()
    index = (wh.root / "reports" / "index.html").read_text()
    assert "nightly-2031-03-04.html" in index


def test_report_command(report_wh: ReportWarehouse, tmp_path: Path) -> None:
    wh = report_wh.copy(tmp_path / "wh")
    runner = CliRunner()
    out = runner.invoke(app, ["--warehouse", str(wh.path), "report", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got["run_id"] == report_wh.runs[-1] and got["status"] == "failed"  # default: the newest run
    assert got["path"] == str(page_path(wh, report_wh.runs[-1]))
    assert got["index"] == str(wh.root / "reports" / "index.html")

    elsewhere = tmp_path / "out" / "page.html"
    out = runner.invoke(app, ["--warehouse", str(wh.path), "report", "--run", RUN2, "--out", str(elsewhere)])
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines() == [f"report for {RUN2} (success): {elsewhere}"]
    html = elsewhere.read_text()
    assert 'href="index.html"' not in html  # no index beside a page written elsewhere
    log_href = html.split('href="', 2)[1].split('"')[0] if "log file" in html else None
    assert log_href and (elsewhere.parent / log_href).resolve().is_file()

    folder = tmp_path / "folder"
    folder.mkdir()
    out = runner.invoke(app, ["--warehouse", str(wh.path), "report", "--run", RUN2, "--out", str(folder)])
    assert out.exit_code == 0 and (folder / f"{RUN2}.html").is_file()

    out = runner.invoke(app, ["--warehouse", str(wh.path), "report", "--run", "nightly-1999-01-01"])
    assert out.exit_code == 2
    assert out.output.strip().splitlines() == [
        f"error: --run: no run 'nightly-1999-01-01' in {wh.path} (latest: {', '.join(report_wh.runs)})"
    ]
    empty = Warehouse(tmp_path / "empty" / "rechub.duckdb")
    out = runner.invoke(app, ["--warehouse", str(empty.path), "report"])
    assert out.exit_code == 2 and out.output.startswith("error: no warehouse at")


def test_report_while_a_job_holds_the_warehouse_reads_the_analytics_file(
    report_wh: ReportWarehouse, tmp_path: Path
) -> None:
    wh = report_wh.copy(tmp_path / "wh")
    hold = f"import duckdb, time; c = duckdb.connect({str(wh.path)!r}); print('open', flush=True); "
    hold += "time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        t0 = time.monotonic()
        result = build_report(wh, RUN2, tmp_path / "busy.html")
        assert time.monotonic() - t0 < 120
    finally:
        holder.kill()
        holder.wait()
    assert result.source == str(wh.analytics_path)
    html = Path(result.path).read_text()
    assert "Built from the published analytics.duckdb" in html
    assert "ingest batches are not in analytics.duckdb" in html
    assert 'class="num headline"' in html  # metrics come from the published copy


def test_chart_labels_are_data_not_markup() -> None:
    """Category values, ids and file names reach the charts as text: no mathtext, escaped for SVG."""
    from rechub_store.report import charts

    svg = charts.grouped_bars("t", "price <$10 & $20>", ["$5-$10"], {"model · exact": [0.5], "a&b": [0.25]})
    assert svg.startswith("<svg ") and 'data-chart="t"' in svg
    assert "$5-$10" in svg and "&lt;$10 &amp; $20&gt;" in svg and "a&amp;b" in svg
    assert svg.count('id="t-mark-') == 2
