-- A seeded sample of `n` item vectors of one model run (item_embeddings.parquet: code, vector),
-- with the raw item id. The sample is an order by a hash of (code, seed): the same items every
-- time, whatever the thread count. Code 0 is padding, not an item.
SELECT e.code, i.item_id, e.vector
FROM read_parquet($path) e
LEFT JOIN rpt_items i ON i.code = e.code
WHERE e.code > 0
ORDER BY hash(e.code, $seed)
LIMIT $n
