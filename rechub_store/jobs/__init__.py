"""Jobs: what cron runs. `job` (the nightly steps), `config` (the job file), `lock`, `records`
(meta.job_runs), `status` and `demo`. Fault hooks are `rechub_store.faults`."""
