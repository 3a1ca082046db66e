"""Publish gates: checks a nightly run must pass before anything is published.

A run whose scoring silently broke (a damaged index, a bad model) must not replace good results:
the job checks the run in the warehouse's working copy, and a gate set to `fail` stops it before
`analytics.duckdb` or any server is touched; `warn` logs and records the finding; `off` skips it.

- `rows_per_user`: every scored user got min(k, the catalogue items they have not seen) rows.
- `annoy_recall`: annoy's recall@k against exact, measured this run on a sample of users
  (`score.annoy.sample_users`), is at least `min_annoy_recall`.
- `metrics`: no evaluation metric of the model is more than `max_metric_drop` (relative) below
  the previously published run's, comparing like with like: the same value of every key column
  of `evaluation_metrics` (split, metric, k, index, and any column added later) other than the
  run ids, the value, n_users and the timestamp; the popularity baseline is not gated.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb

from rechub_store.errors import UserError
from rechub_store.publish.analytics import published_run
from rechub_store.warehouse import table_exists

log = logging.getLogger(__name__)

# evaluation_metrics columns that are not part of what a row measures
NON_KEY_COLUMNS = {"run_id", "model_run_id", "value", "n_users", "n_repeat_targets", "created_at"}
BASELINES = ("popularity",)


class GateSettings(Protocol):
    """What the gates read (the job file's `[publish.gates]`, jobs.config.GateSettings)."""

    rows_per_user: str
    annoy_recall: str
    min_annoy_recall: float
    metrics: str
    max_metric_drop: float


@dataclass
class GateResult:
    gate: str
    mode: str  # fail | warn | off
    status: str  # passed | failed | skipped
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GateFailed(UserError):
    """A `fail` gate did not pass: the run fails before anything is published (exit code 1)."""

    def __init__(self, failed: list[GateResult], results: list[GateResult]) -> None:
        text = "; ".join(f"{g.gate}: {g.message}" for g in failed)
        super().__init__(f"publish gate failed, nothing published: {text}", exit_code=1)
        self.details = {"gates": [g.as_dict() for g in results]}


def _rows_per_user(con: duckdb.DuckDBPyConnection, run_id: str, k: int, n_items: int) -> GateResult:
    row = con.execute(
        """
        WITH expected AS (
            SELECT v.value AS user_id,
                   greatest(least($k, $n_items - len(list_distinct(
                       list_filter(h.item_codes, lambda c: c BETWEEN 1 AND $n_items)))), 0) AS want
            FROM features.user_history h JOIN features.vocab_user_id v ON v.code = h.user_code
            WHERE h.n_events > 0
        ),
        got AS (SELECT user_id, count(*) AS n FROM main.recommendations WHERE run_id = $run GROUP BY 1),
        both_sides AS (
            SELECT coalesce(e.user_id, g.user_id) AS user_id, coalesce(g.n, 0) AS n,
                   coalesce(e.want, 0) AS want
            FROM expected e FULL OUTER JOIN got g USING (user_id)
        )
        SELECT count(*), count(*) FILTER (n <> want), count(*) FILTER (n < want),
               list({'user_id': user_id, 'rows': n, 'expected': want} ORDER BY user_id)
                   FILTER (n <> want)[1:3]
        FROM both_sides
        """,
        {"k": k, "n_items": n_items, "run": run_id},
    ).fetchone()
    users, wrong, short, examples = row  # type: ignore[misc]
    details = {"users": users, "users_wrong": wrong, "users_short": short, "k": k, "examples": examples}
    if wrong:
        sample = ", ".join(f"{e['user_id']!r} got {e['rows']} of {e['expected']}" for e in examples)
        message = f"{wrong} of {users} users got the wrong number of rows (e.g. {sample})"
        return GateResult("rows_per_user", "", "failed", message, details)
    return GateResult(
        "rows_per_user", "", "passed", f"all {users} users got min(k={k}, unseen items) rows", details
    )


def _annoy_recall(recall: float | None, minimum: float) -> GateResult:
    if recall is None:
        return GateResult("annoy_recall", "", "skipped", "the run was not scored with annoy")
    details = {"recall": round(recall, 5), "min_annoy_recall": minimum}
    if recall < minimum:
        return GateResult(
            "annoy_recall", "", "failed", f"annoy recall@k vs exact {recall:.4f} < {minimum}", details
        )
    return GateResult("annoy_recall", "", "passed", f"annoy recall@k vs exact {recall:.4f}", details)


def _metric_rows(con: duckdb.DuckDBPyConnection, table: str, run_id: str) -> dict[tuple, float]:
    columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
    keys = [c for c in columns if c not in NON_KEY_COLUMNS]
    placeholders = ", ".join(f'"{c}"' for c in keys)
    rows = con.execute(
        f"SELECT {placeholders}, value FROM {table} WHERE run_id = ? AND model_run_id NOT IN "
        f"({', '.join('?' for _ in BASELINES)}) AND value IS NOT NULL",
        [run_id, *BASELINES],
    ).fetchall()
    return {tuple(zip(keys, r[:-1], strict=True)): float(r[-1]) for r in rows}


def _metrics(con: duckdb.DuckDBPyConnection, analytics: Path, run_id: str, max_drop: float) -> GateResult:
    previous = published_run(analytics)
    if previous is None:
        return GateResult("metrics", "", "skipped", "no previously published run to compare with")
    if not table_exists(con, "main.evaluation_metrics"):
        return GateResult("metrics", "", "skipped", "no evaluation metrics")
    current = _metric_rows(con, "main.evaluation_metrics", run_id)
    if not current:
        return GateResult("metrics", "", "skipped", "this run has no evaluation metrics")
    reader = duckdb.connect(str(analytics), read_only=True)
    try:
        before = _metric_rows(reader, "evaluation_metrics", previous["run_id"])
    finally:
        reader.close()
    compared = [key for key in current if key in before]
    drops = []
    for key in compared:
        old, new = before[key], current[key]
        if old > 0 and (old - new) / old > max_drop:
            drops.append({**dict(key), "previous": round(old, 5), "now": round(new, 5)})
    drops.sort(key=lambda d: d["now"] / d["previous"])
    details = {"previous_run": previous["run_id"], "compared": len(compared), "drops": drops[:5]}
    if not compared:
        return GateResult("metrics", "", "skipped", f"no comparable rows in {previous['run_id']}", details)
    if drops:
        worst = drops[0]
        what = ", ".join(f"{k}={v}" for k, v in worst.items() if k not in ("previous", "now"))
        return GateResult(
            "metrics",
            "",
            "failed",
            f"{len(drops)} of {len(compared)} metrics dropped more than {max_drop:.0%} below "
            f"{previous['run_id']} (worst {what}: {worst['previous']} -> {worst['now']})",
            details,
        )
    return GateResult(
        "metrics",
        "",
        "passed",
        f"{len(compared)} metrics within {max_drop:.0%} of {previous['run_id']}",
        details,
    )


def check_gates(
    con: duckdb.DuckDBPyConnection,
    analytics: Path,
    run_id: str,
    settings: GateSettings,
    *,
    k: int,
    n_items: int,
    annoy_recall: float | None,
) -> list[GateResult]:
    """Run every gate that is not `off`; raise GateFailed if a `fail` gate failed (nothing has been
    published yet); `warn` findings are logged. Returns every result (for meta.job_runs)."""
    checks = {
        "rows_per_user": lambda: _rows_per_user(con, run_id, k, n_items),
        "annoy_recall": lambda: _annoy_recall(annoy_recall, settings.min_annoy_recall),
        "metrics": lambda: _metrics(con, analytics, run_id, settings.max_metric_drop),
    }
    results = []
    for name, check in checks.items():
        mode = getattr(settings, name)
        result = GateResult(name, mode, "skipped", "off") if mode == "off" else check()
        result.mode = mode
        results.append(result)
        level = logging.WARNING if result.status == "failed" else logging.INFO
        log.log(level, "publish gate %s (%s): %s: %s", name, mode, result.status, result.message)
    failed = [r for r in results if r.status == "failed" and r.mode == "fail"]
    if failed:
        raise GateFailed(failed, results)
    return results
