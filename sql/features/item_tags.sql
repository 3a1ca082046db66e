-- One row = one item's tags (e.g. genres) as an unordered list: distinct tag codes, sorted.
-- Items without tags have no row (read as an empty list / all padding). Batches after
-- upto_batch_seq (a backfill's date) are not read.
with tags as (
    select i.code as item_code, t.code as tag_code
    from raw.item_tags r
    join features.vocab_item_id i on i.value = r.item_id
    join features.vocab_tag t on t.value = r.tag
    where getvariable('upto_batch_seq') is null or r.batch_seq <= getvariable('upto_batch_seq')
),

final as (
    select item_code, list(distinct tag_code order by tag_code) as tag_codes
    from tags
    group by item_code
)

select * from final
