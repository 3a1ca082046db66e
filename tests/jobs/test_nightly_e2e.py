"""The nightly job end to end on tiny generated data: results, reruns, kills, overlap, open readers.

One tiny warehouse (generated, built, trained, demo-nightly'd) is made per module through the
`demo` command; every test works on its own copy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.config import BASELINE_NAMES
from rechub_store.errors import UserError
from rechub_store.jobs.config import JobConfig
from rechub_store.jobs.job import run_nightly
from rechub_store.publish.analytics import published_run
from rechub_store.ranking.metrics import METRICS
from rechub_store.retrieval.rescoring import EMBEDDINGS
from rechub_store.warehouse import Warehouse

K = 10
KS = (5, 10)
D1, D2 = dt.date(2030, 1, 1), dt.date(2030, 1, 2)
ANALYST = Path(__file__).with_name("analyst.py")
CLI = [sys.executable, "-c", "from rechub_store.cli import main; main()"]

JOB = """
[job]
name = "nightly"
[[ingest.sources]]
path = "incoming/*.csv"
user_col = "user_id"
item_col = "item_id"
time_col = "ts"
[train]
policy = "never"
[score]
k = {k}
index = "annoy"
[score.annoy]
sample_users = 200
[evaluate]
ks = [5, 10]
splits = ["test", "valid"]
max_users = 250
[publish]
keep_runs = 5
report = false  # the HTML page has its own tests (tests/report); here it would be most of each night
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo warehouse made by the CLI (tiny sizes): generate, ingest, build, train, nightly."""
    root = tmp_path_factory.mktemp("base")
    result = CliRunner().invoke(
        app,
        [
            "--warehouse",
            str(root / "rechub.duckdb"),
            "demo",
            "--users",
            "300",
            "--items",
            "120",
            "--events",
            "6000",
            "--epochs",
            "1",
            "--k",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "popularity" in result.output and "sample recommendations" in result.output
    return root


@pytest.fixture
def wh(base: Path, tmp_path: Path) -> Warehouse:
    root = tmp_path / "wh"
    shutil.copytree(base, root)
    (root / "incoming").mkdir()
    (root / "job.toml").write_text(JOB.format(k=K))
    return Warehouse(root / "rechub.duckdb", threads=2)


def job_of(wh: Warehouse) -> JobConfig:
    return JobConfig.load(wh.root / "job.toml")


def without_evaluation(job: str) -> str:
    """The job with its evaluate step off, for tests that check something else."""
    return job.replace("[evaluate]", "[evaluate]\nenabled = false")


def fetch(path: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def add_events(
    wh: Warehouse, name: str, n_users: int = 25, per_user: int = 4, cold: bool = False
) -> set[str]:
    """New events (later than everything) for some users on the items now recommended to them first;
    with `cold`, also a brand-new user on a brand-new item and a known one (unknown to the model)."""
    rows = fetch(
        wh.analytics_path,
        "SELECT user_id, item_id FROM recommendations WHERE rank <= ? AND user_id IN "
        "(SELECT DISTINCT user_id FROM recommendations ORDER BY user_id LIMIT ?)",
        [per_user, n_users],
    )
    if cold:
        rows = [*rows, ("new user, ü", "new item 'x'"), ("new user, ü", rows[0][1])]
    (last,) = fetch(wh.path, "SELECT max(ts) FROM raw.interactions")[0]
    ts = [(last + dt.timedelta(days=1, seconds=i)).isoformat() + "Z" for i in range(len(rows))]
    table = pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "ts": ts})
    pacsv.write_csv(table, wh.root / "incoming" / name)
    return {r[0] for r in rows}


def check_run(wh: Warehouse, run_id: str) -> None:
    """The published run: k rows per user, ranks 1..k, raw ids, nothing seen, every metric row."""
    a = wh.analytics_path
    assert published_run(a)["run_id"] == run_id
    per_user = fetch(a, "SELECT user_id, count(*), list(rank ORDER BY rank) FROM recommendations GROUP BY 1")
    (n_users,) = fetch(wh.path, "SELECT count(*) FROM features.user_history WHERE n_events > 0")[0]
    assert len(per_user) == n_users
    assert all(n == K and ranks == list(range(1, K + 1)) for _, n, ranks in per_user)
    assert fetch(a, "SELECT DISTINCT run_id FROM recommendations") == [(run_id,)]
    con = duckdb.connect(str(wh.path), read_only=True)
    try:
        con.execute(f"ATTACH '{a}' AS pub (READ_ONLY)")
        # raw ids: every user and item is a raw id of the ingested data
        assert con.execute(
            "SELECT count(*) FROM pub.recommendations r WHERE r.user_id NOT IN "
            "(SELECT user_id FROM raw.interactions) OR r.item_id NOT IN "
            "(SELECT item_id FROM raw.interactions)"
        ).fetchone() == (0,)
        # nothing the user has interacted with (up to now) is recommended
        assert con.execute(
            "SELECT count(*) FROM pub.recommendations r JOIN raw.interactions e USING (user_id, item_id)"
        ).fetchone() == (0,)
        # scores non-increasing with rank
        assert con.execute(
            "SELECT count(*) FROM (SELECT score - lead(score) OVER (PARTITION BY user_id ORDER BY rank) "
            "AS d FROM pub.recommendations) WHERE d < -1e-6"
        ).fetchone() == (0,)
        got = set(
            con.execute(
                "SELECT CASE WHEN list_contains(?, model_run_id) THEN model_run_id ELSE 'model' END, "
                'split, metric, k, "index", slice, seen_filter FROM pub.evaluation_metrics WHERE run_id = ?',
                [list(BASELINE_NAMES), run_id],
            ).fetchall()
        )
    finally:
        con.close()
    n_eval = fetch(
        a,
        "SELECT DISTINCT n_users FROM evaluation_metrics WHERE run_id = ? AND slice = 'all' "
        "AND split <> 'production'",
        [run_id],
    )
    assert n_eval == [(250,)], "a seeded sample of evaluate.max_users users"
    for split in ("test", "valid"):
        for k in KS:
            for metric in METRICS:
                for index in ("annoy", "exact"):
                    assert ("model", split, metric, k, index, "all", "except-target") in got
                for baseline in BASELINE_NAMES:
                    assert (baseline, split, metric, k, "exact", "all", "except-target") in got
                assert ("model", split, metric, k, "exact", "repeat", "except-target") in got
            assert ("model", split, "annoy_recall", k, "annoy", "all", "except-target") in got
    # beyond accuracy: the production lists of every source (the model by both indexes)
    for k in KS:
        for metric in ("coverage", "gini", "popularity_percentile", "novelty", "personalisation"):
            for source, index in [("model", "annoy"), ("model", "exact")] + [
                (b, "exact") for b in BASELINE_NAMES
            ]:
                assert (source, "production", metric, k, index, "all", "all") in got


def test_nightly_results_are_complete_and_correct(wh: Warehouse) -> None:
    report = run_nightly(wh, job_of(wh), D1)
    assert report.status == "success" and report.run_id == "nightly-2030-01-01"
    assert [s.step for s in report.steps] == ["ingest", "build", "train", "score", "evaluate", "publish"]
    check_run(wh, "nightly-2030-01-01")
    # `[publish] report = false`: no page for this run (the demo's own run has one)
    assert report.report_path is None and not list(wh.root.rglob("nightly-2030-01-01.html"))
    assert list(wh.root.rglob("reports/*.html")), "the demo's nightly wrote its page"
    steps = dict(fetch(wh.path, "SELECT step, status FROM meta.job_runs WHERE run_id = ?", [report.run_id]))
    assert steps == {
        "whole": "success",
        "ingest": "success",
        "build": "skipped",  # the demo's nightly built these exact inputs already
        "train": "skipped",
        "score": "success",
        "evaluate": "success",
        "publish": "success",
    }
    (details,) = fetch(
        wh.path, "SELECT details FROM meta.job_runs WHERE run_id = ? AND step = 'score'", [report.run_id]
    )[0]
    annoy = json.loads(details)["annoy"]
    assert annoy["recall"] >= annoy["target_recall"] and annoy["search_k"] > 0
    assert (Path(report.log_path)).read_text().count("step ") >= 6
    metrics = dict(
        fetch(
            wh.analytics_path,
            "SELECT metric, value FROM evaluation_metrics WHERE run_id = ? AND k = 10 "
            "AND split = 'test' AND \"index\" = 'annoy'",
            [report.run_id],
        )
    )
    assert metrics["annoy_recall"] > 0.9 and metrics["hit"] == metrics["recall"]


def test_new_events_change_results_history_kept_and_rerun_replaces(wh: Warehouse) -> None:
    run_nightly(wh, job_of(wh), D1)
    before = dict(
        fetch(
            wh.analytics_path, "SELECT user_id, list(item_id ORDER BY rank) FROM recommendations GROUP BY 1"
        )
    )
    touched = add_events(wh, "day2.csv", cold=True)
    report = run_nightly(wh, job_of(wh), D2)
    ingest, build = report.steps[0], report.steps[1]
    assert build.status == "success", "new events: the features are rebuilt"
    assert ingest.rows == (len(touched) - 1) * 4 + 2 and not ingest.details["files"][0]["duplicate_batch"]
    check_run(wh, "nightly-2030-01-02")
    after = dict(
        fetch(
            wh.analytics_path, "SELECT user_id, list(item_id ORDER BY rank) FROM recommendations GROUP BY 1"
        )
    )
    touched.discard("new user, ü")  # cold user (and item) unknown to the model: scored all the same
    assert len(after["new user, ü"]) == K and "new item 'x'" not in after["new user, ü"]
    for user in touched:  # what they just interacted with is gone from their list
        assert not set(after[user]) & set(before[user][:4])
    history = dict(
        fetch(wh.analytics_path, "SELECT run_id, count(*) FROM recommendations_history GROUP BY 1")
    )
    n_rows = sum(len(v) for v in after.values())
    assert history["nightly-2030-01-02"] == n_rows and "nightly-2030-01-01" in history

    again = run_nightly(wh, job_of(wh), D2)  # the same date again: replaces, never duplicates
    assert again.steps[0].rows == 0 and again.steps[0].details["files"][0]["duplicate_batch"]
    history2 = dict(
        fetch(wh.analytics_path, "SELECT run_id, count(*) FROM recommendations_history GROUP BY 1")
    )
    assert history2 == history
    metric_dupes = fetch(
        wh.analytics_path,
        "SELECT count(*) FROM (SELECT run_id, model_run_id, split, slice, metric, k, "
        '"index" FROM evaluation_metrics GROUP BY ALL HAVING count(*) > 1)',
    )
    assert metric_dupes == [(0,)]
    job_rows = fetch(
        wh.path,
        "SELECT step, count(*) FROM meta.job_runs WHERE run_id = 'nightly-2030-01-02' "
        "GROUP BY 1 HAVING count(*) > 1",
    )
    assert job_rows == []


def start_paused(wh: Warehouse, run_date: dt.date, point: str) -> subprocess.Popen:
    """A nightly in its own process, paused at a fault point (returns once it is there)."""
    env = {**os.environ, "RECHUB_FAULT": f"{point}:sleep=120"}
    proc = subprocess.Popen(
        [
            *CLI,
            "--warehouse",
            str(wh.path),
            "nightly",
            "--job",
            str(wh.root / "job.toml"),
            "--run-date",
            run_date.isoformat(),
            "--quiet",
        ],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if f"fault: pausing at {point}" in line:
            return proc
        assert time.monotonic() < deadline
    raise AssertionError(f"nightly exited ({proc.wait()}) before reaching {point}")


def test_killed_in_publish_leaves_previous_results_and_next_run_recovers(wh: Warehouse) -> None:
    run_nightly(wh, job_of(wh), D1)
    before = fetch(wh.analytics_path, "SELECT * FROM recommendations ORDER BY user_id, rank")
    add_events(wh, "day2.csv")
    proc = start_paused(wh, D2, "publish-replace")  # new analytics file written, not yet renamed
    assert list(wh.root.glob("analytics.duckdb.tmp-*"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert published_run(wh.analytics_path)["run_id"] == "nightly-2030-01-01"
    assert fetch(wh.analytics_path, "SELECT * FROM recommendations ORDER BY user_id, rank") == before
    assert (wh.root / "nightly.lock").exists(), "the killed run's lock is left behind"

    report = run_nightly(wh, job_of(wh), D2)  # recovers the stale lock and finishes the date
    assert report.status == "success"
    steps = {s.step: s for s in report.steps}
    assert steps["build"].details["mode"] == "incremental"  # the kill left the previous build's watermark
    assert "stale lock" in Path(report.log_path).read_text()
    check_run(wh, "nightly-2030-01-02")
    assert not (wh.root / "nightly.lock").exists()
    assert fetch(wh.path, "SELECT count(*) FROM meta.job_runs WHERE status = 'running'") == [(0,)]


def test_second_concurrent_nightly_exits_already_running(wh: Warehouse) -> None:
    first = start_paused(wh, D1, "score")
    try:
        second = subprocess.run(
            [*CLI, "--warehouse", str(wh.path), "nightly", "--run-date", D2.isoformat()],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 3
        assert "already running" in second.stderr and "Traceback" not in second.stderr
        status = CliRunner().invoke(app, ["--warehouse", str(wh.path), "status", "--json"])
        assert status.exit_code == 0, status.output
        state = json.loads(status.output)
        assert state["lock"]["run_id"] == "nightly-2030-01-01" and not state["lock"]["stale"]
        assert state["source"] == str(wh.analytics_path), (
            "the busy warehouse falls back to the published copy"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_sigterm_fails_the_step_cleanly(wh: Warehouse) -> None:
    proc = start_paused(wh, D1, "score")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    assert "failed at step score: Terminated: terminated by signal 15" in proc.stderr.read()
    assert not (wh.root / "nightly.lock").exists(), "the lock is released"
    rows = dict(fetch(wh.path, "SELECT step, status FROM meta.job_runs WHERE run_id = 'nightly-2030-01-01'"))
    assert rows["score"] == "failed" and rows["whole"] == "failed"


@pytest.mark.parametrize("mode", ["duckdb", "sqlalchemy"])
def test_reader_held_open_does_not_block_the_nightly(wh: Warehouse, mode: str) -> None:
    (wh.root / "job.toml").write_text(without_evaluation(JOB.format(k=K)))
    old_run = published_run(wh.analytics_path)["run_id"]
    analyst = subprocess.Popen(
        [sys.executable, str(ANALYST), str(wh.analytics_path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(analyst.stdout.readline())
        assert first["runs"] == [old_run]
        report = run_nightly(wh, job_of(wh), D1)
        assert report.status == "success"
        analyst.stdin.write("\n")
        analyst.stdin.flush()
        assert json.loads(analyst.stdout.readline()) == first, "the open session keeps its snapshot"
    finally:
        analyst.stdin.close()
        analyst.wait(timeout=30)
    assert published_run(wh.analytics_path)["run_id"] == "nightly-2030-01-01"


def test_failed_step_exits_nonzero_and_is_recorded(wh: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECHUB_FAULT", "evaluate:fail")
    old = published_run(wh.analytics_path)["run_id"]
    with pytest.raises(UserError, match="failed at step evaluate") as err:
        run_nightly(wh, job_of(wh), D1)
    assert err.value.exit_code == 1
    rows = dict(fetch(wh.path, "SELECT step, status FROM meta.job_runs WHERE run_id = 'nightly-2030-01-01'"))
    assert rows["evaluate"] == "failed" and rows["whole"] == "failed" and "publish" not in rows
    assert published_run(wh.analytics_path)["run_id"] == old


def test_cli_score_evaluate_sql(wh: Warehouse) -> None:
    runner = CliRunner()
    base = ["--warehouse", str(wh.path)]
    res = runner.invoke(
        app, [*base, "evaluate", "--k", "5,10", "--index", "exact", "--split", "valid", "--json"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["rows"]
    assert {r["split"] for r in rows} == {"valid", "production"} and {r["k"] for r in rows} == {5, 10}
    res = runner.invoke(app, [*base, "score", "--k", "3", "--index", "exact", "--run-id", "adhoc", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rows"] == 3 * json.loads(res.output)["users"]
    # auto: annoy's recall measured, both indexes timed on this run's sampled users when annoy
    # meets its target (exact alone otherwise), the choice and its reason recorded
    res = runner.invoke(app, [*base, "score", "--k", "3", "--index", "auto", "--run-id", "adhoc", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    auto = report["auto"]
    assert report["index"] == auto["index"] in ("exact", "annoy") and auto["sample_users"] > 0
    assert auto["exact_users_per_second"] > 0 and 0 < auto["annoy_recall"] <= 1
    if auto["annoy_recall"] < auto["target_recall"]:
        assert auto["index"] == "exact" and auto["annoy_users_per_second"] is None
    else:
        faster = "annoy" if auto["annoy_users_per_second"] > auto["exact_users_per_second"] else "exact"
        assert auto["index"] == faster
    res = runner.invoke(app, [*base, "sql", "SELECT count(*) AS n FROM recommendations", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)[0]["n"] > 0
    res = runner.invoke(app, [*base, "sql", "DROP TABLE recommendations"])
    assert res.exit_code == 2 and "read-only" in res.output
    res = runner.invoke(app, [*base, "evaluate", "--index", "faiss"])
    assert res.exit_code == 2 and "--index" in res.output


# The analyst queries of the README, read from the README and run as written, so the docs
# cannot drift from the code: the ```sql block after "Example analyst queries", one query per
# `-- comment` header.
README_QUERY_NAMES = {
    "a user's top-k with item titles": "top_k_with_titles",
    "catalogue coverage of the current run": "coverage",
    "coverage over the kept runs": "coverage_by_run",
    "metrics trend over runs, one protocol only ('legacy' rows predate its recording)": "metrics_trend",
    "the model against the baselines, published run": "model_vs_baselines",
    "where the model wins or loses: NDCG@10 per slice, model and baselines side by side": "slices",
    "beyond accuracy of the published run's lists": "beyond_accuracy",
    "churn of the lists users get, run over run": "churn",
}


def _readme_queries() -> dict[str, str]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("Example analyst queries", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    queries: dict[str, str] = {}
    for chunk in block.strip().split("\n\n"):
        header, _, body = chunk.partition("\n")
        queries[README_QUERY_NAMES[header.removeprefix("-- ").strip()]] = body.strip().rstrip(";")
    return queries


README_QUERIES = _readme_queries()


def test_readme_analyst_queries(wh: Warehouse) -> None:
    run_nightly(wh, job_of(wh), D1)
    add_events(wh, "day2.csv")
    run_nightly(wh, job_of(wh), D2)
    (user,) = fetch(wh.analytics_path, "SELECT min(user_id) FROM recommendations")[0]
    runner = CliRunner()

    def sql(name: str) -> list[dict]:
        query = README_QUERIES[name].replace("'42'", "'" + user.replace("'", "''") + "'")
        res = runner.invoke(app, ["--warehouse", str(wh.path), "sql", query, "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.output)

    top = sql("top_k_with_titles")
    assert [r["rank"] for r in top] == list(range(1, K + 1)) and all(r["title"] for r in top)
    (cov,) = sql("coverage")
    assert 0 < cov["coverage"] <= 1 and cov["catalogue"] == 120
    assert [r["run_id"] for r in sql("coverage_by_run")][-2:] == ["nightly-2030-01-01", "nightly-2030-01-02"]
    trend = sql("metrics_trend")
    assert {"nightly-2030-01-01", "nightly-2030-01-02"} <= {r["run_id"] for r in trend}
    pivot = {r["model_run_id"]: r for r in sql("model_vs_baselines")}
    assert set(BASELINE_NAMES) <= set(pivot) and len(pivot) == 4
    assert all(0 <= r["ndcg"] <= 1 for r in pivot.values())
    slices = {r["slice"]: r for r in sql("slices")}
    assert {"all", "active", "head", "tail", "new"} <= set(slices) and slices["all"]["users"] == 250
    assert all(r["model"] is not None and r["itemknn"] is not None for r in slices.values())
    beyond = {(r["model_run_id"], r["index"]): r for r in sql("beyond_accuracy")}
    assert len(beyond) == 5  # the model by annoy and exact, three baselines
    for r in beyond.values():
        assert 0 < r["coverage"] <= 1 and 0 <= r["gini"] <= 1 and r["novelty_bits"] > 0
        assert 0 <= r["churn"] <= 1, "the second run is compared with the first"
    churn = [r for r in sql("churn") if r["run_id"] == "nightly-2030-01-02"]  # (the first: vs the demo's)
    assert len(churn) == 5 and all(r["n_users"] == 300 for r in churn)


def feature_tables(path: Path) -> dict[str, list[tuple]]:
    """Every staging and feature table, sorted (features.changed_users, which says what a build
    recomputed, left out)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = con.execute(
            "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
            "WHERE schema_name IN ('staging', 'features') AND table_name <> 'changed_users' ORDER BY 1"
        ).fetchall()
        return {n: con.execute(f"SELECT * FROM {n} ORDER BY ALL").fetchall() for (n,) in names}
    finally:
        con.close()


RECS = "SELECT user_id, item_id, rank, score, run_id, model_run_id FROM recommendations ORDER BY ALL"
# exact values: the beyond-accuracy SQL's means add exact decimals and integers, in any order alike
METRIC_ROWS = (
    "SELECT run_id, model_run_id, split, metric, k, value, n_users, index, seen_filter, slice, "
    "n_repeat_targets FROM evaluation_metrics ORDER BY ALL"
)


def test_incremental_night_equals_full_refresh_and_backfills(wh: Warehouse, tmp_path: Path) -> None:
    """A night with new events for a few users: the incremental build and rescoring give the
    feature store and the published recommendations of a full refresh; a backfill of the previous
    date reproduces its run. (A kill and rerun of an incremental night:
    test_killed_in_publish_leaves_previous_results_and_next_run_recovers, whose second night is one.)"""
    run_nightly(wh, job_of(wh), D1)
    day1 = fetch(wh.analytics_path, RECS)
    add_events(wh, "day2.csv", cold=True)
    full = Warehouse(tmp_path / "full" / "rechub.duckdb", threads=2)
    shutil.copytree(wh.root, full.root)

    incremental = run_nightly(wh, job_of(wh), D2)
    refresh = run_nightly(full, job_of(full), D2, full_refresh=True)
    steps = {s.step: s for s in incremental.steps}
    assert incremental.status == refresh.status == "success"
    assert steps["build"].details["mode"] == "incremental"
    assert {s.step: s for s in refresh.steps}["build"].details["mode"] == "full"
    users = fetch(wh.path, "SELECT count(DISTINCT user_id) FROM recommendations")[0][0]
    assert 0 < steps["score"].details["rescored"] < users / 2, steps["score"].details["rescoring"]
    assert feature_tables(wh.path) == feature_tables(full.path)
    assert fetch(wh.analytics_path, RECS) == fetch(full.analytics_path, RECS)
    # evaluation reused annoy's answers for unchanged users (the full refresh asked annoy for all),
    # with the same metrics to the last digit
    answers = steps["evaluate"].details["annoy_answers"]
    assert {"test", "valid", "production"} <= set(answers)
    assert all(note.startswith("reused ") for note in answers.values()), answers
    refreshed = {s.step: s for s in refresh.steps}["evaluate"].details["annoy_answers"]
    assert all(note.startswith("searched all") for note in refreshed.values()), refreshed
    assert fetch(wh.analytics_path, METRIC_ROWS) == fetch(full.analytics_path, METRIC_ROWS)

    # the day-2 file was ingested on 2030-01-02: a backfill of 2030-01-01 reads the batches before it
    con = wh.connect()
    con.execute(
        "UPDATE raw.batches SET ingested_at = ? WHERE path LIKE '%day2.csv'", [dt.datetime(2030, 1, 2, 3)]
    )
    con.close()
    backfill = run_nightly(wh, job_of(wh), D1, backfill=True)
    steps = {s.step: s for s in backfill.steps}
    assert steps["ingest"].status == steps["train"].status == "skipped"
    assert steps["build"].details["mode"] == "full"  # the previous build read a later batch
    assert fetch(wh.analytics_path, RECS) == day1


def test_incremental_exact_scoring_equals_a_full_rescore_and_checks_itself(
    wh: Warehouse, tmp_path: Path
) -> None:
    """With the exact index too, an incremental night encodes and rescores only the users whose
    inputs changed, keeps only vectors and lists that a full rescore would write bit for bit, and
    says how many kept users it checked again. A re-check that finds a difference (a tampered list
    digest or stored vector, each on a copy) rescores everyone: those copies' recommendations are
    a full rescore's, and the incremental night's equal them."""
    job = JOB.format(k=K).replace('index = "annoy"', 'index = "exact"')
    (wh.root / "job.toml").write_text(without_evaluation(job))
    run_nightly(wh, job_of(wh), D1)
    add_events(wh, "day2.csv", cold=True)
    copies = {}
    for name, file, column in (("digest", "score_state.parquet", "digest"), ("vector", EMBEDDINGS, "vector")):
        copies[name] = Warehouse(tmp_path / name / "rechub.duckdb", threads=2)
        shutil.copytree(wh.root, copies[name].root)
        (path,) = copies[name].root.rglob(file)
        table = pq.read_table(path)
        values = table.column(column)
        if column == "vector":  # every stored vector a little off
            dim = values.type.list_size
            flat = pc.add(values.combine_chunks().flatten(), pa.scalar(1e-3, pa.float32()))
            values = pa.FixedSizeListArray.from_arrays(flat, dim)
        else:
            values = pc.add(values, pa.scalar(1, pa.uint64()))
        pq.write_table(table.set_column(table.schema.get_field_index(column), column, values), path)

    incremental = run_nightly(wh, job_of(wh), D2)
    assert incremental.status == "success"
    users = fetch(wh.path, "SELECT count(DISTINCT user_id) FROM recommendations")[0][0]
    score = {s.step: s for s in incremental.steps}["score"].details
    assert 0 < score["rescored"] < users / 2, score["rescoring"]
    assert "kept users encoded and their lists computed again: equal" in score["rescoring"]
    for copy in copies.values():
        tampered = run_nightly(copy, job_of(copy), D2)
        assert tampered.status == "success"
        score = {s.step: s for s in tampered.steps}["score"].details
        assert score["rescored"] == users and "differ from run" in score["rescoring"], score["rescoring"]
        assert fetch(wh.analytics_path, RECS) == fetch(copy.analytics_path, RECS)
