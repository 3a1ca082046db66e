-- One row = the current code of one sparse attribute of one item (codes from features.vocab_attribute;
-- an item without a value for an attribute has no row: read it as 0 = unknown).
with attributes as (
    select item_id, name, value from staging.item_attributes where kind = 'sparse'
),

final as (
    select i.code as item_code, a.name, v.code
    from attributes a
    join features.vocab_item_id i on i.value = a.item_id
    join features.vocab_attribute v on v.entity = 'item' and v.name = a.name and v.value = a.value
)

select * from final
