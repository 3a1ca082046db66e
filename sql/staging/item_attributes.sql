-- One row = the current value of one attribute of one item: of all rows raw.item_attributes holds
-- for (item_id, name), the one ingested last (highest batch_seq, then line). NULL values are skipped;
-- batches after upto_batch_seq (a backfill's date) are not read.
with source as (
    select item_id, name, value, kind, batch_seq::BIGINT * 1000000000000 + line as row_order
    from raw.item_attributes
    where value is not null
      and (getvariable('upto_batch_seq') is null or batch_seq <= getvariable('upto_batch_seq'))
),

final as (
    select item_id, name, arg_max(value, row_order) as value, arg_max(kind, row_order) as kind
    from source
    group by item_id, name
)

select * from final
