-- One row per run, oldest first: what the run page's header, the trend, the step-duration chart
-- and the index need. A nightly run is its `whole` row in job_runs (the newest attempt when a
-- job reran a date), with the first step that failed and whether its publish succeeded. Runs
-- that left metrics but no job record (`rechub-store evaluate --run-id ...` by hand) are listed
-- too, timed by their metrics.
WITH whole AS (
    SELECT run_id, job, status, started_at, finished_at, seconds, rows, error, details
    FROM rpt_job_runs
    WHERE step = 'whole'
    QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY started_at DESC) = 1
),

steps AS (
    SELECT s.run_id,
           arg_min(s.step, s.started_at) FILTER (WHERE s.status = 'failed') AS failed_step,
           bool_or(s.step = 'publish' AND s.status = 'success') AS published,
           bool_or(s.step = 'train' AND s.status = 'success') AS retrained,
           any_value(s.details ->> 'model_run_id') FILTER (WHERE s.step = 'score') AS scored_model
    FROM rpt_job_runs s
    JOIN whole w ON w.run_id = s.run_id AND w.job = s.job
    WHERE s.step <> 'whole'
    GROUP BY s.run_id
),

by_hand AS (
    SELECT run_id, min(created_at) AS started_at, max(created_at) AS finished_at,
           any_value(model_run_id) FILTER (WHERE model_run_id IN (SELECT model_run_id FROM rpt_model_runs))
               AS model_run_id
    FROM rpt_metrics
    WHERE run_id NOT IN (SELECT run_id FROM whole)
    GROUP BY run_id
)

SELECT w.run_id, w.job, w.status, w.started_at, w.finished_at, w.seconds, w.rows, w.error,
       coalesce(w.details ->> 'model_run_id', s.scored_model) AS model_run_id,
       w.details ->> 'log' AS log_path,
       s.failed_step,
       coalesce(s.published, false) AS published,
       coalesce(s.retrained, false) AS retrained
FROM whole w
LEFT JOIN steps s USING (run_id)
UNION ALL
SELECT run_id, NULL, 'by hand', started_at, finished_at, NULL, NULL, NULL, model_run_id, NULL, NULL,
       false, false
FROM by_hand
ORDER BY started_at, run_id
