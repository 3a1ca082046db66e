"""kill -9 of the nightly job at every step: what analysts see stays the previous run, the next run
recovers (stale lock, half-written files) and completes, and nothing is duplicated or lost."""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import pytest
from rel_helpers import NEXT_DATE, make_events, run_process, snapshot_duckdb, snapshot_server, write_job

from rechub_store.publish.server import publish_to_url
from rechub_store.warehouse import Warehouse

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# (env var, value, the warehouse working copy is still untouched at that point)
KILL_POINTS = [
    ("RECHUB_FAULT", "ingest:kill", True),
    ("RECHUB_FAULT", "build:kill", True),
    ("RECHUB_FAULT", "train:kill", True),
    ("RECHUB_FAULT", "score:kill", True),
    ("RECHUB_FAULT", "evaluate:kill", False),
    ("RECHUB_FAULT", "publish:kill", False),
    ("RECHUB_FAULT", "publish-replace:kill", False),  # new analytics file complete, not yet renamed
    ("RECHUB_PUBLISH_FAULT", "loaded:kill", False),  # server COPY done, server transaction not committed
]


def _data_rows(folder: Path) -> int:
    total = 0
    for path in folder.glob("events-*.csv"):
        with open(path, newline="", encoding="utf-8") as fh:
            total += sum(1 for _ in csv.reader(fh)) - 1
    return total


def _working_copy(wh: Path) -> list[tuple]:
    con = duckdb.connect(str(wh), read_only=True)
    try:
        return sorted(con.execute("SELECT * FROM main.recommendations").fetchall(), key=repr)
    finally:
        con.close()


def test_kill_at_every_step_keeps_published_results_and_the_rerun_completes(baseline, pg_url, tally):
    wh = baseline / "wh" / "rechub.duckdb"
    analytics = baseline / "wh" / "analytics.duckdb"
    data = baseline / "data"
    publish_to_url(Warehouse(wh, threads=1), pg_url, retries=0)  # the previous run, also on the server
    job = write_job(data / "job-pg.toml", targets=["${REL_PG_URL}"])
    env = {"REL_PG_URL": pg_url, "RECHUB_PUBLISH_RETRIES": "0"}

    make_events(data / "events-2.csv", n_users=70, n_items=45, seed=2, t0=1_750_000_000, per_user=(1, 4))
    before_analytics = snapshot_duckdb(analytics)
    before_server = snapshot_server(pg_url)
    before_working = _working_copy(wh)
    base_run = before_analytics["recommendations"][0][4]

    for var, value, working_untouched in KILL_POINTS:
        with tally.case("faults"):
            proc = run_process(wh, job, NEXT_DATE, env={**env, var: value})
            assert proc.returncode == -9, (value, proc.returncode, proc.stderr[-2000:])
            assert snapshot_server(pg_url) == before_server, value
            if var == "RECHUB_FAULT":
                assert snapshot_duckdb(analytics) == before_analytics, value
            if working_untouched:
                assert _working_copy(wh) == before_working, value

    # The next run recovers the stale lock and whatever the kills left half-done, and completes.
    proc = run_process(wh, job, NEXT_DATE, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_process(wh, job, NEXT_DATE, env=env)  # the same date again: replaces, never duplicates
    assert proc.returncode == 0, proc.stderr[-3000:]

    after = snapshot_duckdb(analytics)
    server = snapshot_server(pg_url)
    run_id = f"nightly-{NEXT_DATE.isoformat()}"
    assert {r[4] for r in after["recommendations"]} == {run_id}
    # the same content: the second run found the server up to date (its generated_at is the first's)
    assert sorted(r[:6] for r in after["recommendations"]) == sorted(r[:6] for r in server["recommendations"])
    for rows in (after["recommendations_history"], server["recommendations_history"]):
        keys = [(r[4], r[0], r[2]) for r in rows]
        assert len(keys) == len(set(keys)), "a run stored twice in history"
        assert {r[4] for r in rows} == {base_run, run_id}
    # run, model run, split, metric, k, index, slice
    metric_keys = [(r[0], r[1], r[2], r[3], r[4], r[7], r[10]) for r in after["evaluation_metrics"]]
    assert len(metric_keys) == len(set(metric_keys))
    assert not list((baseline / "wh").glob("*.tmp-*")), "half-written analytics file left behind"
    assert not (baseline / "wh" / "nightly.lock").exists()

    con = duckdb.connect(str(wh), read_only=True)
    try:
        raw = con.execute("SELECT count(*) FROM raw.interactions").fetchall()[0][0]
        rejected = con.execute("SELECT count(*) FROM raw.rejects").fetchall()[0][0]
        running = con.execute("SELECT count(*) FROM meta.job_runs WHERE status = 'running'").fetchall()[0][0]
    finally:
        con.close()
    assert running == 0
    expected_raw = _data_rows(data)
    base_hist = [r for r in before_analytics["recommendations_history"] if r[4] == base_run]
    kept_hist = [r for r in after["recommendations_history"] if r[4] == base_run]
    lost = (
        max(0, expected_raw - raw - rejected)
        + max(0, len(base_hist) - len(kept_hist))
        + abs(len(after["recommendations"]) - len(server["recommendations"]))
    )
    tally.counts["rows_lost"] += lost
    assert raw + rejected == expected_raw, "events ingested twice or lost across killed runs"
    assert kept_hist == base_hist
    assert lost == 0
