-- Seconds per step for each run of the list `runs` (the attempt recorded by the run's `whole` row),
-- for the stacked step-duration bars. Skipped steps count with the seconds they took (near 0).
SELECT s.run_id, s.step, s.status, coalesce(s.seconds, 0) AS seconds, s.started_at
FROM rpt_job_runs s
JOIN (
    SELECT run_id, job FROM rpt_job_runs WHERE step = 'whole'
    QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY started_at DESC) = 1
) w USING (run_id, job)
WHERE s.step <> 'whole' AND list_contains($runs, s.run_id)
ORDER BY s.run_id, s.started_at
