-- One row = the current code of one sparse attribute of one user or item (entity, code = its
-- user_code / item_code, value_code from the attribute's vocabulary in features.vocabulary); no row
-- for an attribute without a value: read it as 0 = unknown. features.user_sparse and item_sparse
-- are cut from it.
with attributes as (
    select entity, id, name, value from staging.attributes where kind = 'sparse'
),

final as (
    select a.entity, c.code, a.name, v.code as value_code
    from attributes a
    join features.vocabulary c on c.kind = 'id' and c.entity = a.entity and c.value = a.id
    join features.vocabulary v
        on v.kind = 'attribute' and v.entity = a.entity and v.name = a.name and v.value = a.value
)

select * from final
