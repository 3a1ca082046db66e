-- One row = the current code of one sparse attribute of one user (codes from features.vocab_attribute;
-- a user without a value for an attribute has no row: read it as 0 = unknown).
with attributes as (
    select user_id, name, value from staging.user_attributes where kind = 'sparse'
),

final as (
    select u.code as user_code, a.name, v.code
    from attributes a
    join features.vocab_user_id u on u.value = a.user_id
    join features.vocab_attribute v on v.entity = 'user' and v.name = a.name and v.value = a.value
)

select * from final
