"""Never publish a broken run: a damaged annoy index is caught by its checksum and rebuilt; a run
whose results are short, whose annoy recall (measured every run) is low, or whose metrics fell
well below the previous published run fails its publish gate before anything is published."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from rel_helpers import NEXT_DATE, run_in_process, write_job

from rechub_store.errors import UserError
from rechub_store.publish.analytics import publish_analytics
from rechub_store.publish.gates import GateFailed, check_gates
from rechub_store.results.tables import RecommendationWriter, write_metrics
from rechub_store.retrieval.annoy_index import AnnoyItems
from rechub_store.warehouse import Warehouse

pytestmark = pytest.mark.slow
RUN = f"nightly-{NEXT_DATE.isoformat()}"


def _published_bytes(folder: Path) -> dict[str, str]:
    """What analysts can read: the analytics file and its history files, by content."""
    files = [folder / "analytics.duckdb", *sorted((folder / "analytics-history").glob("*"))]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def _rows_per_user(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return dict(con.execute("SELECT user_id, count(*) FROM recommendations GROUP BY 1").fetchall())
    finally:
        con.close()


def _job_row(wh: Path, step: str) -> tuple[str, str | None, dict]:
    con = duckdb.connect(str(wh), read_only=True)
    try:
        status, error, details = con.execute(
            "SELECT status, error, details FROM meta.job_runs WHERE run_id = ? AND step = ?", [RUN, step]
        ).fetchone()
    finally:
        con.close()
    return status, error, json.loads(details)


def _annoy_job(folder: Path, gates: str = "") -> Path:
    return write_job(folder / "job-annoy.toml", index="annoy", extra=gates)


def test_a_damaged_annoy_index_is_rebuilt_not_reused(baseline: Path, tally) -> None:
    wh = baseline / "wh" / "rechub.duckdb"
    job = _annoy_job(baseline / "data")
    with tally.case("faults"):
        run_in_process(wh, job, NEXT_DATE)
        (index,) = (baseline / "wh" / "models").glob("*/items.ann")
        size = index.stat().st_size
        with open(index, "r+b") as fh:  # the header stays, the body is damaged; the sidecar is untouched
            fh.seek(size // 3)
            fh.write(b"\x00" * (size // 2))
        report = run_in_process(wh, job, NEXT_DATE)
        log = Path(report.log_path).read_text()
        assert "is damaged" in log and "rebuilding" in log, log[-2000:]
        score = next(s for s in report.steps if s.step == "score")
        assert score.details["annoy"]["built"] and score.details["annoy"]["measured_recall"] >= 0.9
        counts = _rows_per_user(baseline / "wh" / "analytics.duckdb")
        assert set(counts.values()) == {5}, "every user gets k items from the rebuilt index"


def test_short_results_fail_the_gate_and_nothing_is_published(
    baseline: Path, tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """annoy returns too few and wrong neighbours: rows_per_user and annoy_recall both fail; the
    analytics file and its history stay byte-identical and meta.job_runs says which gates failed."""
    wh = baseline / "wh" / "rechub.duckdb"
    before = _published_bytes(baseline / "wh")
    real_topk = AnnoyItems.topk

    def broken(self, user_vecs, k, seen=None, n_threads=None):  # a silently damaged index
        codes, scores = real_topk(self, user_vecs, k, seen, n_threads)
        codes[:, k // 2 :] = 0
        return codes, scores

    monkeypatch.setattr(AnnoyItems, "topk", broken)
    with tally.case("faults"):
        with pytest.raises(UserError, match="failed at step publish: publish gate failed") as err:
            run_in_process(wh, _annoy_job(baseline / "data"), NEXT_DATE)
        assert err.value.exit_code == 1
        assert "rows_per_user" in str(err.value) and "annoy_recall" in str(err.value)
        assert _published_bytes(baseline / "wh") == before
        status, error, details = _job_row(wh, "publish")
        assert status == "failed" and error.startswith("publish gate failed")
        gates = {g["gate"]: g["status"] for g in details["gates"]}
        assert gates == {"rows_per_user": "failed", "annoy_recall": "failed", "metrics": "passed"}
        assert _job_row(wh, "whole")[0] == "failed"


def test_a_warn_gate_publishes_and_records_the_finding(
    baseline: Path, tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = baseline / "wh" / "rechub.duckdb"
    real_topk = AnnoyItems.topk
    monkeypatch.setattr(
        AnnoyItems,
        "topk",
        lambda self, v, k, seen=None, n_threads=None: (lambda c, s: (np.where(np.arange(k) < 4, c, 0), s))(
            *real_topk(self, v, k, seen, n_threads)
        ),
    )
    gates = '\n[publish.gates]\nrows_per_user = "warn"\nannoy_recall = "warn"\n'
    with tally.case("faults"):
        report = run_in_process(wh, _annoy_job(baseline / "data", gates), NEXT_DATE)
        assert report.status == "success"
        publish = next(s for s in report.steps if s.step == "publish")
        assert {g["gate"]: g["status"] for g in publish.details["gates"]}["rows_per_user"] == "failed"
        assert set(_rows_per_user(baseline / "wh" / "analytics.duckdb").values()) == {4}


def _metric(run: str, value: float, **key) -> dict:
    row = {"run_id": run, "model_run_id": "m1", "split": "test", "metric": "ndcg", "k": 10, "value": value}
    return {**row, "n_users": 100, "index": "exact", "seen_filter": "except-target", "slice": "all", **key}


def _two_runs(warehouse: Warehouse) -> duckdb.DuckDBPyConnection:
    """Run r1 published; run r2 scored in the working copy, its metrics written by each test."""
    con = warehouse.connect()
    for name, n in (("user", 4), ("item", 6)):
        con.execute(
            f"CREATE TABLE features.vocab_{name}_id AS "
            f"SELECT '{name[0]}' || i AS value, i::INTEGER AS code FROM range(1, {n}) t(i)"
        )
    con.execute(
        "CREATE TABLE features.user_history AS SELECT i::INTEGER AS user_code, "
        "[i]::INTEGER[] AS item_codes, 1 AS n_events FROM range(1, 4) t(i)"
    )
    for run in ("r1", "r2"):
        writer = RecommendationWriter(con, run, "m1")
        writer.add(np.arange(1, 4), np.array([[2, 3], [1, 3], [1, 2]]), np.ones((3, 2), np.float32))
        writer.commit()
        if run == "r1":
            _put_metrics(con, [_metric("r1", 0.5), _metric("r1", 0.4, metric="recall")])
            publish_analytics(con, warehouse, "r1")
    return con


def _put_metrics(con, rows: list[dict]) -> None:
    """Replace the run's metric rows (by column name, so every key column can be filled)."""
    con.execute("DELETE FROM main.evaluation_metrics WHERE run_id = ?", [rows[0]["run_id"]])
    con.register("_m", pa.Table.from_pylist(rows))
    con.execute("INSERT INTO main.evaluation_metrics BY NAME SELECT * FROM _m")
    con.unregister("_m")


class Gates:
    rows_per_user = "fail"
    annoy_recall = "fail"
    min_annoy_recall = 0.9
    metrics = "fail"
    max_metric_drop = 0.2


def _check(con, warehouse: Warehouse, k: int = 2, annoy_recall: float | None = None):
    return check_gates(
        con, warehouse.analytics_path, "r2", Gates(), k=k, n_items=5, annoy_recall=annoy_recall
    )


def test_metrics_gate_fails_on_a_drop_against_the_published_run(warehouse: Warehouse, tally) -> None:
    con = _two_runs(warehouse)
    with tally.case("faults"):
        write_metrics(con, [_metric("r2", 0.45), _metric("r2", 0.2, metric="recall")])
        with pytest.raises(GateFailed, match=r"1 of 2 metrics dropped more than 20% below r1") as err:
            _check(con, warehouse)
        assert "metric=recall" in str(err.value) and "0.4 -> 0.2" in str(err.value)
        write_metrics(con, [_metric("r2", 0.45), _metric("r2", 0.39, metric="recall")])
        assert [r.status for r in _check(con, warehouse)] == ["passed", "skipped", "passed"]
    con.close()


def test_metrics_gate_joins_on_every_key_column(warehouse: Warehouse) -> None:
    """Every key column of evaluation_metrics (e.g. `seen_filter`) is compared like the others:
    a row is only ever compared with the previous run's row of the same seen_filter."""
    con = _two_runs(warehouse)
    _put_metrics(con, [_metric("r2", 0.1, seen_filter="all"), _metric("r2", 0.45)])
    (metrics,) = [r for r in _check(con, warehouse) if r.gate == "metrics"]
    assert metrics.status == "passed" and metrics.details["compared"] == 1
    _put_metrics(con, [_metric("r2", 0.1)])
    with pytest.raises(GateFailed, match="seen_filter=except-target"):
        _check(con, warehouse)
    con.close()


def test_rows_per_user_gate_counts_what_each_user_could_get(warehouse: Warehouse) -> None:
    con = _two_runs(warehouse)
    write_metrics(con, [_metric("r2", 0.5)])
    results = _check(con, warehouse, annoy_recall=0.95)
    assert [(r.gate, r.status) for r in results] == [
        ("rows_per_user", "passed"),
        ("annoy_recall", "passed"),
        ("metrics", "passed"),
    ]
    with pytest.raises(GateFailed, match=r"annoy recall@k vs exact 0.5000 < 0.9"):
        _check(con, warehouse, annoy_recall=0.5)
    con.execute("DELETE FROM main.recommendations WHERE user_id = 'u2' AND rank = 2")
    with pytest.raises(
        GateFailed, match=r"1 of 3 users got the wrong number of rows \(e.g. 'u2' got 1 of 2\)"
    ):
        _check(con, warehouse)
    # k larger than what a user can get (5 items, 1 seen): 4 rows would be complete, 2 are short
    with pytest.raises(GateFailed, match=r"3 of 3 users"):
        _check(con, warehouse, k=10)
    con.close()
