-- The most frequent reject reasons over the batches `batch_ids`, with how many rows and files
-- each hit and one example line (the first rejected row, raw text) to show what went wrong.
SELECT reason,
       count(*) AS rows,
       count(DISTINCT batch_id) AS batches,
       arg_min(raw, (batch_id, line)) AS example,
       arg_min(path || ':' || line, (batch_id, line)) AS example_at
FROM rpt_rejects
WHERE list_contains($batch_ids, batch_id)
GROUP BY reason
ORDER BY rows DESC, reason
LIMIT $limit
