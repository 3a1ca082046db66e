-- One colour label per item of `items` for the embedding map: the item's value of the attribute
-- `attr` when one is given, else its most widespread tag (the tag the most items carry, ties by
-- name), so that items group by their broadest category.
WITH wanted AS (
    SELECT DISTINCT unnest($items::VARCHAR[]) AS item_id
),

tag_size AS (
    SELECT tag, count(DISTINCT item_id) AS items FROM rpt_item_tags GROUP BY tag
),

by_tag AS (
    SELECT t.item_id, arg_max(t.tag, (s.items, t.tag)) AS label
    FROM rpt_item_tags t
    JOIN tag_size s USING (tag)
    WHERE t.item_id IN (SELECT item_id FROM wanted)
    GROUP BY t.item_id
),

by_attr AS (
    SELECT item_id, any_value(value) AS label
    FROM rpt_item_attributes
    WHERE name = $attr::VARCHAR AND item_id IN (SELECT item_id FROM wanted)
    GROUP BY item_id
)

SELECT item_id, label FROM by_attr WHERE $attr::VARCHAR IS NOT NULL
UNION ALL
SELECT item_id, label FROM by_tag WHERE $attr::VARCHAR IS NULL
