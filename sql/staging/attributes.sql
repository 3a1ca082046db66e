-- One row = the current value of one attribute of one user or item (entity 'user' / 'item', id =
-- its raw id): of all rows raw.user_attributes / raw.item_attributes hold for (id, name), the one
-- ingested last (highest batch_seq, then line). NULL values are skipped; batches after
-- upto_batch_seq (a backfill's date) are not read. staging.user_attributes and item_attributes are
-- cut from it.
with source as (
    select 'user' as entity, user_id as id, name, value, kind, batch_seq, line from raw.user_attributes
    union all
    select 'item', item_id, name, value, kind, batch_seq, line from raw.item_attributes
),

current_rows as (
    select entity, id, name, value, kind, batch_seq::BIGINT * 1000000000000 + line as row_order
    from source
    where value is not null
      and (getvariable('upto_batch_seq') is null or batch_seq <= getvariable('upto_batch_seq'))
),

final as (
    select entity, id, name, arg_max(value, row_order) as value, arg_max(kind, row_order) as kind
    from current_rows
    group by entity, id, name
)

select * from final
