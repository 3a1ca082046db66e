-- The long tail of one run. Catalogue items are ranked by training popularity (most popular
-- first, ties by item id) and cut into `bins` equal slices of that rank; per slice: its items,
-- how many of them were recommended at least once, and how many recommendation slots and
-- training interactions went to them. Cumulated over slices these draw the page's curves.
WITH recs AS (
    SELECT item_id, count(*) AS n_recs
    FROM rpt_recs
    WHERE run_id = $run_id
    GROUP BY item_id
),

catalogue AS (
    SELECT i.item_id,
           coalesce(i.n_train, 0) AS n_train,
           coalesce(r.n_recs, 0) AS n_recs,
           row_number() OVER (ORDER BY coalesce(i.n_train, 0) DESC, i.item_id) - 1 AS rank0,
           count(*) OVER () AS n_items
    FROM rpt_items i
    LEFT JOIN recs r USING (item_id)
)

SELECT (rank0 * $bins // n_items)::INTEGER AS bin,
       count(*) AS items,
       count(*) FILTER (WHERE n_recs > 0) AS items_recommended,
       sum(n_recs)::BIGINT AS recs,
       sum(n_train)::BIGINT AS train
FROM catalogue
GROUP BY bin
ORDER BY bin
