-- The latest `limit` ingested batches up to the end of the run (`until`), oldest first: rows
-- read, accepted and rejected per file. `this_run` marks the batches ingested while the run ran
-- (between `since` and `until`).
SELECT batch_seq, kind, path, rows_read, rows_accepted, rows_rejected, ingested_at,
       ingested_at BETWEEN $since AND $until AS this_run
FROM (
    SELECT * FROM rpt_batches
    WHERE ingested_at <= $until
    ORDER BY batch_seq DESC
    LIMIT $limit
)
ORDER BY batch_seq
