-- self: (value VARCHAR, code INTEGER)
-- One row = one item tag (e.g. a genre) and its integer code (1..; 0 is padding). Stable across
-- builds like features.vocab_item_id: old codes kept, new tags numbered after the maximum in tag order.
with previous as (
    select value, code from features.vocab_tag
),

observed as (
    select distinct tag as value from raw.item_tags
    where tag is not null
      and (getvariable('upto_batch_seq') is null or batch_seq <= getvariable('upto_batch_seq'))
),

new_values as (
    select value from observed anti join previous using (value)
),

numbered as (
    select value,
        ((select coalesce(max(code), 0) from previous) + row_number() over (order by value))::INTEGER as code
    from new_values
),

final as (
    select value, code from previous
    union all
    select value, code from numbered
)

select * from final
